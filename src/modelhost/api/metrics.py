"""``GET /metrics``: Prometheus text, or OpenMetrics when the Accept header asks."""

from __future__ import annotations

from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelhost.monitor.metrics import Metrics


class MetricsAPI:
    """Serves one :class:`Metrics` registry."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def routes(self) -> list[Route]:
        return [Route("/metrics", self.metrics, methods=["GET"])]

    async def metrics(self, request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(self._metrics.registry), headers={"Content-Type": content_type})
