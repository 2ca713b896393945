"""build_app: compose the HTTP server (routes, middleware, error mapping, lifespan)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.responses import Response

from modelhost import __version__
from modelhost.api.auth import BearerAuth
from modelhost.api.health import HealthAPI
from modelhost.api.inference import ClientDisconnected, TaskCodecs
from modelhost.api.kserve_v2 import KServeV2API
from modelhost.api.metrics import MetricsAPI
from modelhost.api.middleware import BodyLimit
from modelhost.api.native import NativeAPI
from modelhost.api.offload import CodecPool
from modelhost.api.openai import OpenAIAPI
from modelhost.api.openapi import OpenAPIDocumentAPI
from modelhost.api.problems import on_http_exception, on_modelhost_error, on_unexpected
from modelhost.api.state import ServerState
from modelhost.codecs.limits import DecodeLimits
from modelhost.config import Settings
from modelhost.errors import ModelhostError


async def _client_gone(*_: object) -> Response:
    # Nobody reads this answer; the status only shows in logs.
    return Response(status_code=499)


# Kubernetes probes carry no token: health stays open when the inference token is set.
HEALTH_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})


def _middleware(state: ServerState) -> list[Middleware]:
    limit = Middleware(
        BodyLimit,
        max_body_bytes=state.settings.max_body_bytes,
        max_inflight_body_bytes=state.settings.max_inflight_body_bytes,
    )
    token = state.settings.inference_token
    if token is None:
        return [limit]
    return [Middleware(BearerAuth, token=token, open_paths=HEALTH_PATHS), limit]


def decode_limits(settings: Settings) -> DecodeLimits:
    """What one inference request may make the server decode (checked by the codecs)."""
    return DecodeLimits(
        max_items=settings.max_request_items,
        max_elements=settings.max_request_elements,
        max_image_pixels=settings.max_image_pixels,
        max_request_pixels=settings.max_request_pixels,
    )


def closing_pool(pool: CodecPool) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """The app's lifespan: on shutdown (after the server has answered its requests) the
    codec pool finishes what it took, refuses the rest and joins its threads."""

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await pool.aclose()

    return lifespan


def build_app(state: ServerState) -> Starlette:
    """Build the inference app over ``state`` (whose engine the caller opens and closes).

    Until ``state.engine_`` is set, inference answers 503 and readiness is false. The app's
    lifespan closes its codec pool when the app stops; it runs only where the ASGI server
    runs lifespans.
    """
    codecs = TaskCodecs(decode_limits(state.settings))
    pool = CodecPool.from_settings(state.settings, state.metrics.codec)
    routes = [
        *HealthAPI(state).routes(),
        *KServeV2API(state, __version__, codecs, pool).routes(),
        *NativeAPI(state, codecs, pool).routes(),
        *OpenAIAPI(state, codecs, pool).routes(),
        *MetricsAPI(state.metrics).routes(),
        *OpenAPIDocumentAPI(__version__).routes(),
    ]
    return Starlette(
        routes=routes,
        middleware=_middleware(state),
        exception_handlers={
            ModelhostError: on_modelhost_error,
            HTTPException: on_http_exception,
            ClientDisconnected: _client_gone,
            Exception: on_unexpected,
        },
        lifespan=closing_pool(pool),
    )
