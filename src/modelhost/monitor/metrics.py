"""Every Prometheus metric modelhost exposes, declared once, on a registry of its own.

Names follow Prometheus conventions: base units (seconds), counters end in ``_total``,
labels are bounded (model, version, protocol, code). The engine records through
:class:`ModelMetrics` (children resolved once per model version, so the hot path does no
label lookups); frontends record per-request outcomes with :meth:`Metrics.observe_request`.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "modelhost"
_LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


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


class Metrics:
    """All metric families of one server, on their own :class:`CollectorRegistry`."""

    def __init__(self, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
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
        self._pending = Gauge(
            f"{PREFIX}_pending_requests", "Requests queued, waiting for a batch.", labels,
            registry=r,
        )  # fmt: skip
        self._in_flight = Gauge(
            f"{PREFIX}_in_flight_requests", "Requests accepted and not yet answered.", labels,
            registry=r,
        )  # fmt: skip
        self._ready = Gauge(
            f"{PREFIX}_model_ready", "1 while the model version takes requests.", labels,
            registry=r,
        )  # fmt: skip
        Gauge(
            f"{PREFIX}_build_info", "modelhost build information.", ("version",), registry=r
        ).labels(version).set(1)

    def for_model(self, name: str, version: str) -> ModelMetrics:
        """Resolve the label children of one model version."""
        return ModelMetrics(
            queue_duration=self._queue.labels(name, version),
            compute_duration=self._compute.labels(name, version),
            batch_size=self._batch.labels(name, version),
            inference_count=self._count.labels(name, version),
            exec_count=self._exec.labels(name, version),
            pending=self._pending.labels(name, version),
            in_flight=self._in_flight.labels(name, version),
            ready=self._ready.labels(name, version),
        )

    def observe_request(
        self, model: str, version: str, protocol: str, code: int, duration_s: float
    ) -> None:
        """Count one answered request and its duration."""
        self._requests.labels(model, version, protocol, str(code)).inc()
        self._request_duration.labels(model, version, protocol).observe(duration_s)
