"""Several real worker processes, one view: any worker's /metrics shows the whole server.

Each worker is a fresh interpreter started with ``PROMETHEUS_MULTIPROC_DIR`` set, as the
supervisor starts them. It records some traffic, says ``started`` on stdout, then answers one
line per command read from stdin (``scrape <accept>``, ``ready <value>``, ``exit``), so the
test waits on the workers' words, never on a clock.
"""

import json
import os
import queue
import subprocess
import sys
import threading

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from modelhost.monitor.metrics import MULTIPROC_ENV, mark_process_dead, prepare_multiprocess_dir

WAIT_S = 30.0
LABELS = {"model": "m", "version": "1"}

WORKER = """
import asyncio, json, sys
from starlette.requests import Request
from modelhost.api.metrics import MetricsAPI
from modelhost.monitor.metrics import Metrics

requests = int(sys.argv[1])
metrics = Metrics("test")
model = metrics.for_model("m", "1")
for _ in range(requests):
    metrics.observe_request("m", "1", "native", 200, 0.01)
model.inference_count.inc(requests)
model.pending.set(requests)
model.in_flight.inc()
model.ready.set(1)
api = MetricsAPI(metrics)


def scrape(accept):
    scope = {"type": "http", "method": "GET", "path": "/metrics",
             "headers": [(b"accept", accept.encode())]}
    response = asyncio.run(api.metrics(Request(scope)))
    return {"content_type": response.headers["content-type"], "body": response.body.decode()}


print("started", flush=True)
for line in sys.stdin:
    command, _, arg = line.strip().partition(" ")
    if command == "scrape":
        print(json.dumps(scrape(arg)), flush=True)
    elif command == "ready":
        model.ready.set(float(arg))
        print("done", flush=True)
    elif command == "exit":
        break
"""


class Worker:
    """One worker process; a reader thread hands its stdout lines over a queue."""

    def __init__(self, directory, requests, log):
        env = {**os.environ, MULTIPROC_ENV: str(directory)}
        self.log = log
        with log.open("w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", WORKER, str(requests)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=env,
            )
        self.pid = self.proc.pid
        self._lines = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        assert self._line() == "started"

    def _read(self):
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _line(self):
        try:
            line = self._lines.get(timeout=WAIT_S)
        except queue.Empty:
            pytest.fail(f"worker {self.pid} said nothing for {WAIT_S} s")
        if line is None:
            pytest.fail(f"worker {self.pid} exited early:\n{self.log.read_text()}")
        return line

    def ask(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._line()

    def scrape(self, accept="text/plain"):
        reply = json.loads(self.ask(f"scrape {accept}"))
        return reply["content_type"], reply["body"]

    def samples(self):
        """The text exposition as ``{(name, sorted labels): value}``."""
        _, body = self.scrape()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body)
            for s in family.samples
        }

    def close(self):
        """Kill the process if it still runs; release its pipes and the reader thread."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(WAIT_S)
        self.proc.stdin.close()
        self.proc.stdout.close()

    def exit(self):
        self.proc.stdin.write("exit\n")
        self.proc.stdin.close()
        assert self.proc.wait(timeout=WAIT_S) == 0, self.log.read_text()


def value(samples, name, **labels):
    """The one sample called ``name`` whose labels include ``labels``."""
    want = {**LABELS, **labels}.items()
    found = [v for (n, ls), v in samples.items() if n == name and want <= dict(ls).items()]
    assert len(found) == 1, (name, labels, found)
    return found[0]


@pytest.fixture
def spawn(tmp_path):
    directory = tmp_path / "metrics"
    prepare_multiprocess_dir(directory)
    workers = []

    def start(requests):
        workers.append(Worker(directory, requests, tmp_path / f"worker-{len(workers)}.log"))
        return workers[-1]

    start.directory = directory
    yield start
    for w in workers:
        w.close()


def totals(samples):
    return {
        "requests": value(samples, "modelhost_inference_requests_total", code="200"),
        "durations": value(samples, "modelhost_request_duration_seconds_count"),
        "items": value(samples, "modelhost_inference_count_total"),
        "pending": value(samples, "modelhost_pending_requests"),
        "in_flight": value(samples, "modelhost_in_flight_requests"),
        "ready": value(samples, "modelhost_model_ready"),
    }


def test_any_worker_shows_the_whole_server_and_counts_survive_a_restart(spawn):
    a, b = spawn(2), spawn(3)

    seen_by_a = a.samples()
    assert seen_by_a == b.samples()
    assert totals(seen_by_a) == {
        "requests": 5, "durations": 5, "items": 5, "pending": 5, "in_flight": 2, "ready": 1,
    }  # fmt: skip
    assert seen_by_a[("modelhost_build_info", (("version", "test"),))] == 1
    # Every gauge merges by a mode of its own: none leaks a per-process pid label.
    assert not [key for key in seen_by_a if "pid" in dict(key[1])]

    # The version is ready only while every live worker has it ready (livemin).
    assert b.ask("ready 0") == "done"
    assert totals(a.samples())["ready"] == 0

    b.exit()
    # Until the supervisor marks it dead, an exited worker's live gauges still count.
    assert totals(a.samples())["pending"] == 5
    mark_process_dead(spawn.directory, b.pid)
    assert totals(a.samples()) == {
        "requests": 5, "durations": 5, "items": 5, "pending": 2, "in_flight": 1, "ready": 1,
    }  # fmt: skip

    c = spawn(4)  # the replacement
    seen_by_c = c.samples()
    assert seen_by_c == a.samples()
    assert totals(seen_by_c) == {
        "requests": 9, "durations": 9, "items": 9, "pending": 6, "in_flight": 2, "ready": 1,
    }  # fmt: skip


def test_openmetrics_is_negotiated_over_the_merged_view(spawn):
    a, _ = spawn(2), spawn(3)
    content_type, body = a.scrape("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")
    items = {
        s.name: s.value
        for family in openmetrics_families(body)
        for s in family.samples
        if s.labels == LABELS
    }
    assert items["modelhost_inference_count_total"] == 5
    assert items["modelhost_pending_requests"] == 5
    content_type, _ = a.scrape("text/plain")
    assert content_type.startswith("text/plain; version=0.0.4")
