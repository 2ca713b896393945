"""Every Prometheus metric modelhost exposes, declared once, on a registry of its own.

Names follow Prometheus conventions: base units (seconds), counters end in ``_total``,
labels are bounded (model, version, protocol, code). The engine records through
:class:`ModelMetrics` (children resolved once per model version, so the hot path does no
label lookups); frontends record per-request outcomes with :meth:`Metrics.observe_request`.

One process or several. With ``modelhost serve --workers N`` each worker holds its own
:class:`Metrics`, and any worker may answer ``GET /metrics``, so the answer must be the whole
server. prometheus_client's multiprocess mode does that through files::

    supervisor: prepare_multiprocess_dir(d); PROMETHEUS_MULTIPROC_DIR=d for every child
       worker 1 ──writes──> d/counter_<pid1>.db, d/gauge_livesum_<pid1>.db, ...
       worker 2 ──writes──> d/counter_<pid2>.db, ...
       any worker's GET /metrics = MultiProcessCollector(d): every file, merged
    on a worker's exit: mark_process_dead(d, pid) drops its live gauges, keeps its counts

Counters and histograms add up over every process that ever wrote, dead ones included, so
counts survive a worker restart. Each gauge names how its per-process values merge
(``multiprocess_mode``); a gauge left at the default ``all`` would leak a ``pid`` label.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values

from modelhost.errors import ConfigError

PREFIX = "modelhost"
_LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_PADDING_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The names prometheus_client gives its files, ``<kind>_<pid>.db`` (a gauge's kind names its
# mode). Only these are cleared, so a directory named by mistake loses no other *.db file (the
# modelhost home keeps its SQLite registry in one).
_METRIC_FILE = re.compile(
    r"(counter|histogram|summary|gauge_(live)?(all|min|max|sum|mostrecent))_\d+\.db"
)


def multiprocess_dir() -> Path | None:
    """The directory this process shares its metrics through, or None in a single process.

    Why this reads the environment (elsewhere only ``config.py`` may): prometheus_client
    chooses, once, when it is imported, whether its values live in memory or in files under
    ``PROMETHEUS_MULTIPROC_DIR`` (``prometheus_client.values.ValueClass``). A ``Settings``
    field would come too late, so the variable must be in a worker's environment when it
    starts, and this function reads the very variable the library read.
    """
    path = os.environ.get(MULTIPROC_ENV)
    return Path(path) if path else None


def prepare_multiprocess_dir(path: Path) -> None:
    """Make ``path`` ready to hold the metric files of one server run; call once, first.

    The supervisor calls this before it starts any worker. It creates ``path`` with mode 0700,
    or takes an existing directory of ours and makes it 0700 (a file planted in it would be
    exposed as a metric), then removes the metric files an earlier run left, so a new run
    does not start from old counts. Only file names prometheus_client writes are removed.
    Only ``path`` itself is checked for a link; its parents may be links.

    Args:
        path: the directory every worker gets as ``PROMETHEUS_MULTIPROC_DIR``.

    Raises:
        ConfigError: ``path`` is a symlink or not a directory, belongs to another user, or
            cannot be created or cleared.

    Example:
        >>> prepare_multiprocess_dir(Path("/run/modelhost/metrics"))  # doctest: +SKIP
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{MULTIPROC_ENV}: cannot create {path}: {exc.strerror}") from exc
    # Checked, tightened and cleared through one descriptor opened without following a link,
    # so the path cannot be swapped for a link between the check and the deletions.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(
            f"{MULTIPROC_ENV}: cannot open {path} as a directory ({exc.strerror}); "
            "name a directory itself, not a symlink or a file"
        ) from exc
    try:
        owner = os.fstat(fd).st_uid
        if owner != os.geteuid():
            raise ConfigError(
                f"{MULTIPROC_ENV}: {path} belongs to uid {owner}, not to you; "
                "name a directory of your own"
            )
        os.fchmod(fd, 0o700)
        for name in os.listdir(fd):
            if _METRIC_FILE.fullmatch(name):
                os.unlink(name, dir_fd=fd)
    except OSError as exc:
        raise ConfigError(f"{MULTIPROC_ENV}: cannot clear {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def mark_process_dead(path: Path, pid: int) -> None:
    """Tell the shared metrics in ``path`` that worker ``pid`` has exited.

    The supervisor calls this on every worker exit, after reaping it and before starting a
    replacement (which may get the same pid). The worker's live gauges (pending, in flight,
    ready) stop counting; its counters and histograms stay in the sums, so totals survive
    the restart. Never call it for a live worker: it would keep writing to deleted files.

    Args:
        path: the directory given to :func:`prepare_multiprocess_dir`.
        pid: the exited worker's process id.
    """
    # prometheus_client 0.26 leaves these two unannotated.
    multiprocess.mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]


def _check_value_class(path: Path | None) -> None:
    """Refuse a process whose prometheus_client chose its values under another environment."""
    in_files = bool(values.ValueClass._multiprocess)
    if path is not None and not in_files:
        raise ConfigError(
            f"{MULTIPROC_ENV}={path} was set after prometheus_client was imported, so this "
            "process keeps its metrics in memory where no other worker sees them; set it in "
            "the worker's environment before the process starts"
        )
    if path is None and in_files:
        raise ConfigError(
            f"prometheus_client runs in multiprocess mode but {MULTIPROC_ENV} is empty or "
            f"unset (the deprecated prometheus_multiproc_dir?); set {MULTIPROC_ENV}"
        )


def _merged_registry(path: Path) -> CollectorRegistry:
    """A registry that merges the metric files of every worker, live and dead."""
    if not path.is_dir():
        raise ConfigError(
            f"{MULTIPROC_ENV}={path} is not a directory; the supervisor creates it with "
            "prepare_multiprocess_dir before starting workers"
        )
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
    return registry


@dataclass(frozen=True, slots=True)
class ModelMetrics:
    """The label children of one model version, resolved at load."""

    queue_duration: Histogram
    compute_duration: Histogram
    batch_size: Histogram
    inference_count: Counter
    exec_count: Counter
    pending: Gauge
    in_flight: Gauge
    ready: Gauge
    # Padded batching only (manifest batching.pad): the share of padding per batch.
    padding_ratio: Histogram | None = None


@dataclass(frozen=True, slots=True)
class CodecMetrics:
    """The codec pool's (``api/offload.py``): work moved off the event loop, and its state."""

    decoded: Counter
    encoded: Counter
    busy: Gauge
    waiting: Gauge


class Metrics:
    """All metric families of one server; :attr:`registry` is what ``/metrics`` exposes.

    In a single process that is the families' own :class:`CollectorRegistry`, as always. In
    multiprocess mode (:func:`multiprocess_dir` is set) the families still register on a
    registry of their own, which is not exposed (it would add this worker's share once more),
    and :attr:`registry` merges every worker's files instead.

    Raises:
        ConfigError: the multiprocess directory is missing, or ``PROMETHEUS_MULTIPROC_DIR``
            disagrees with the mode prometheus_client chose when it was imported.
    """

    def __init__(self, version: str) -> None:
        path = multiprocess_dir()
        _check_value_class(path)
        r = CollectorRegistry(auto_describe=True)
        self.registry = r if path is None else _merged_registry(path)
        labels = ("model", "version")
        self._requests = Counter(
            f"{PREFIX}_inference_requests", "Inference requests answered, by status code.",
            (*labels, "protocol", "code"), registry=r,
        )  # fmt: skip
        self._request_duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from request decoded to response encoded, in seconds.",
            (*labels, "protocol"), buckets=_LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self._queue = Histogram(
            f"{PREFIX}_queue_duration_seconds", "Time a request waited for a batch, in seconds.",
            labels, buckets=_LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self._compute = Histogram(
            f"{PREFIX}_compute_duration_seconds", "Time one batch took to compute, in seconds.",
            labels, buckets=_LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self._batch = Histogram(
            f"{PREFIX}_batch_size", "Items per executed batch.",
            labels, buckets=_BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self._count = Counter(
            f"{PREFIX}_inference_count", "Items inferred (a batch of n counts n).", labels,
            registry=r,
        )  # fmt: skip
        self._exec = Counter(
            f"{PREFIX}_inference_exec_count", "Batches executed.", labels, registry=r
        )
        self._padding = Histogram(
            f"{PREFIX}_batch_padding_ratio",
            "Share of a batch's padded inputs (token ids, masks) that the batcher added as "
            "padding to fit requests of different lengths into one batch; models with "
            "batching.pad only.",
            labels, buckets=_PADDING_BUCKETS, registry=r,
        )  # fmt: skip
        # Queues and requests in progress belong to live workers: the server's are the sum
        # over them, and a dead worker's are gone with it (livesum).
        self._pending = Gauge(
            f"{PREFIX}_pending_requests", "Requests queued, waiting for a batch.", labels,
            multiprocess_mode="livesum", registry=r,
        )  # fmt: skip
        self._in_flight = Gauge(
            f"{PREFIX}_in_flight_requests", "Requests accepted and not yet answered.", labels,
            multiprocess_mode="livesum", registry=r,
        )  # fmt: skip
        # Any live worker may get a request, so a version is ready only when it is ready in
        # every live worker that has begun loading it (livemin: 0 while one still loads or
        # has unloaded it). A worker that never named the version does not pull it down.
        self._ready = Gauge(
            f"{PREFIX}_model_ready", "1 while the model version takes requests.", labels,
            multiprocess_mode="livemin", registry=r,
        )  # fmt: skip
        # Every worker of one run sets 1 for the same build: max gives one sample without a
        # pid label, and still describes the build after the worker that set it has exited.
        Gauge(
            f"{PREFIX}_build_info", "modelhost build information.", ("version",),
            multiprocess_mode="max", registry=r,
        ).labels(version).set(1)  # fmt: skip
        offloaded = Counter(
            f"{PREFIX}_codec_offloaded", "Payloads decoded or encoded in a codec thread, by phase.",
            ("phase",), registry=r,
        )  # fmt: skip
        busy = Gauge(
            f"{PREFIX}_codec_busy", "Codec threads decoding or encoding now.",
            multiprocess_mode="livesum", registry=r,
        )  # fmt: skip
        waiting = Gauge(
            f"{PREFIX}_codec_waiting", "Payloads waiting for a codec thread.",
            multiprocess_mode="livesum", registry=r,
        )  # fmt: skip
        self.codec = CodecMetrics(
            offloaded.labels("decode"), offloaded.labels("encode"), busy, waiting
        )

    def for_model(self, name: str, version: str, padded: bool = False) -> ModelMetrics:
        """Resolve the label children of one model version (``padded``: its batches are
        padded, see ``Batching.pad``)."""
        return ModelMetrics(
            queue_duration=self._queue.labels(name, version),
            compute_duration=self._compute.labels(name, version),
            batch_size=self._batch.labels(name, version),
            inference_count=self._count.labels(name, version),
            exec_count=self._exec.labels(name, version),
            pending=self._pending.labels(name, version),
            in_flight=self._in_flight.labels(name, version),
            ready=self._ready.labels(name, version),
            padding_ratio=self._padding.labels(name, version) if padded else None,
        )

    def observe_request(
        self, model: str, version: str, protocol: str, code: int, duration_s: float
    ) -> None:
        """Count one answered request and its duration."""
        self._requests.labels(model, version, protocol, str(code)).inc()
        self._request_duration.labels(model, version, protocol).observe(duration_s)
