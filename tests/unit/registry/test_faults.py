"""Pure parts of the registry's fault translation: password masking, storage errors."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from modelhost.errors import InsufficientStorage
from modelhost.registry.faults import mask_url, storage_error


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+psycopg://u:tiger@db:5432/x", "postgresql+psycopg://u:***@db:5432/x"),
        ("postgresql://:tiger@db/x", "postgresql://:***@db/x"),
        ("postgresql://u:ti:ger@db/x", "postgresql://u:***@db/x"),
        ("postgresql://u@db/x?password=tiger&sslmode=require",
         "postgresql://u@db/x?password=***&sslmode=require"),
        ("postgresql://u@db/x", "postgresql://u@db/x"),
        ("sqlite:////home/u/.modelhost/registry.db", "sqlite:////home/u/.modelhost/registry.db"),
        ("not a url with user:tiger@host", "not a url with user:***@host"),
        ("not a url", "not a url"),
        ("oracle://scott:tiger@db/orcl", "oracle://scott:***@db/orcl"),
    ],
)  # fmt: skip
def test_mask_url_hides_every_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (errno.ENOSPC, "disk full: cannot write /srv/store"),
        (errno.EDQUOT, "disk full: cannot write /srv/store"),
        (errno.EROFS, "cannot write /srv/store"),
        (errno.EACCES, "cannot write /srv/store"),
    ],
)
def test_storage_errors_name_the_path_and_keep_nothing(code: int, says: str) -> None:
    error = storage_error(OSError(code, os.strerror(code)), "write", Path("/srv/store"))
    assert isinstance(error, InsufficientStorage)
    assert error.message.startswith(says)
    assert os.strerror(code) in error.message
    assert "nothing was kept" in error.message
