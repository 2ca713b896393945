"""Start ``modelhost serve`` as a real process on a free loopback port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from support.cli import fail_on_traceback

START_TIMEOUT_S = 60.0


@dataclass
class ServerProcess:
    """A running server: its URL, process and everything it printed so far."""

    url: str
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)
    management_url: str = ""
    token_file: Path | None = None

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM the server and return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of ``/metrics`` (0.0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.url}/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0

    def wait_for_line(self, fragment: str, timeout_s: float = 120.0) -> str:
        """Wait until the server prints a line holding ``fragment``; return it (fail after
        ``timeout_s``, a bound for a loaded machine, not a timing assertion)."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            lines = list(self.output)
            for line in lines[seen:]:
                if fragment in line:
                    return line
            seen = len(lines)
            if time.monotonic() > deadline or self.process.poll() is not None:
                pytest.fail(f"the server never printed {fragment!r}:\n{''.join(self.output)}")
            time.sleep(0.01)  # poll interval of the wait on the output

    def wait_for_metric(
        self, name: str, value: float, timeout_s: float = 60.0, **labels: str
    ) -> float:
        """Poll ``/metrics`` until the sample ``name`` equals ``value``; fail after
        ``timeout_s`` (a generous bound for a loaded machine, not a timing assertion)."""
        deadline = time.monotonic() + timeout_s
        seen = self.metric(name, **labels)
        while seen != value:
            if time.monotonic() > deadline:
                pytest.fail(f"{name}{labels} stayed {seen}, never {value}, in {timeout_s} s")
            time.sleep(0.01)  # poll interval of the wait on the metric
            seen = self.metric(name, **labels)
        return seen


@contextmanager
def running_server(
    *archives: Path,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    ready: bool = True,
) -> Iterator[ServerProcess]:
    """Run ``modelhost serve ARCHIVES --port 0 ARGS`` until the block ends (then SIGTERM).

    The block starts once the server is ready ("serving on"), or with ``ready=False`` as
    soon as its port is open ("listening on", models still loading). One worker process
    unless ``--workers`` or MODELHOST_WORKERS says otherwise. When the block ends normally,
    the test fails if the server printed a traceback (unless it ran with ``--debug``).
    """
    if "--management-port" not in args:
        args = (*args, "--management-port", "-1")
    if "--workers" not in args and "MODELHOST_WORKERS" not in {**os.environ, **(env or {})}:
        args = (*args, "--workers", "1")
    until = "serving on " if ready else "listening on "
    cmd = [sys.executable, "-m", "modelhost", "serve", *map(str, archives), "--port", "0", *args]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    server = ServerProcess(url="", process=proc)
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    for line in proc.stdout:
        server.output.append(line)
        if line.startswith("management API on "):
            server.management_url = line.split()[3]
            server.token_file = Path(line.split("bearer token in ")[1].rstrip(")\n"))
        if line.startswith(until):
            server.url = line.split()[2]
            break
        if time.monotonic() > deadline:
            break
    if not server.url:
        proc.kill()
        raise RuntimeError("server did not start:\n" + "".join(server.output))
    pump = threading.Thread(target=lambda: server.output.extend(proc.stdout or ()), daemon=True)
    pump.start()
    try:
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        pump.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
    fail_on_traceback(cmd, "".join(server.output))  # after a block that ended normally
