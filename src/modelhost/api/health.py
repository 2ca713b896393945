"""Liveness and readiness (OIP paths; Kubernetes probes point here)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelhost.api.state import ServerState

_LIVE = b'{"live": true}'
_READY = b'{"ready": true}'
_NOT_READY = b'{"ready": false}'


class HealthAPI:
    """Live: the process answers. Ready: every model loaded and not shutting down."""

    def __init__(self, state: ServerState) -> None:
        self._state = state

    def routes(self) -> list[Route]:
        return [
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.ready, methods=["GET"]),
        ]

    async def live(self, _: Request) -> Response:
        return Response(_LIVE, media_type="application/json")

    async def ready(self, _: Request) -> Response:
        if self._state.ready:
            return Response(_READY, media_type="application/json")
        return Response(_NOT_READY, 503, media_type="application/json")
