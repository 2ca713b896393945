"""Run the ``modelhost`` command as a user would, in a child process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def mh(
    *args: str, cwd: Path | None = None, timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m modelhost ARGS`` with a wide terminal; never raises on a non-zero exit."""
    return subprocess.run(
        [sys.executable, "-m", "modelhost", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False,
        env={"COLUMNS": "200", "PATH": ""},
    )  # fmt: skip
