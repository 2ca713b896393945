"""``GET /metrics``: Prometheus text, or OpenMetrics when the Accept header asks."""

from __future__ import annotations

from prometheus_client.exposition import choose_encoder
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelhost.monitor.metrics import Metrics


class MetricsAPI:
    """Serves :attr:`Metrics.registry`: this process's metrics, or every worker's merged."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def routes(self) -> list[Route]:
        return [Route("/metrics", self.metrics, methods=["GET"])]

    async def metrics(self, request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        # With several workers a scrape reads and merges every worker's metric files: file
        # I/O and CPU that grow with the worker count, so off the event loop.
        body = await run_in_threadpool(encoder, self._metrics.registry)
        return Response(body, headers={"Content-Type": content_type})
