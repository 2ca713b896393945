"""Run the ``modelhost`` command as a user would, in a child process.

Every run is checked for a Python traceback in its output: a user never sees one unless the
command ran with ``--debug``, so a traceback fails the test that caused it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

TRACEBACK = "Traceback (most recent call last)"


def mh(
    *args: str, cwd: Path | None = None, timeout_s: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m modelhost ARGS`` with a wide terminal; never raises on a non-zero exit.

    ``env`` adds variables (e.g. MODELHOST_DB_URL) to the otherwise empty environment.
    Fails the test when the output holds a traceback and ``--debug`` was not given.
    """
    result = subprocess.run(
        [sys.executable, "-m", "modelhost", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False,
        env={"COLUMNS": "200", "PATH": "", **(env or {})},
    )  # fmt: skip
    fail_on_traceback(("modelhost", *args), result.stdout + result.stderr)
    return result


def fail_on_traceback(command: Sequence[str], output: str) -> None:
    """Fail the running test when ``output`` of ``command`` shows a traceback (no --debug)."""
    if TRACEBACK in output and "--debug" not in command:
        pytest.fail(
            f"{' '.join(command)} printed a traceback (users see one line, never a "
            f"traceback, unless --debug):\n{output}",
            pytrace=False,
        )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused command prints: exit status 1, ``error: ...`` alone on stderr."""
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]
