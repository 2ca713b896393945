"""A real full disk for tests: a tiny tmpfs, mounted for the block and unmounted after."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_disk(directory: Path, size: str = "2m") -> Iterator[Path]:
    """A file system of ``size`` (tmpfs, mode 0700) at ``directory``.

    Skips the test when mounting is not permitted (not root, no CAP_SYS_ADMIN); always
    unmounts, even when the block fails.
    """
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to make a full disk: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "--lazy", str(directory)], check=True)


def fill(disk: Path) -> Path:
    """Write ``disk`` full; returns the filler file (delete it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while free := shutil.disk_usage(disk).free:
            os.write(fd, b"\0" * min(free, 1024 * 1024))
    finally:
        os.close(fd)
    return filler
