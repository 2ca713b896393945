"""The management API (its own port, 127.0.0.1:8081 by default; bearer token on every call).

GET    /models?limit=&offset=                 list, paginated
GET    /models/{name}                         versions, default, instances, queue, status
POST   /models                                {"ref": "NAME[:VERSION]"} from the registry,
                                              or an archive body (application/octet-stream)
PUT    /models/{name}/default                 {"version": "2"}
DELETE /models/{name}/versions/{version}      unload after finishing accepted requests
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelhost.api.auth import BearerAuth
from modelhost.api.middleware import BodyLimit
from modelhost.api.problems import on_http_exception, on_modelhost_error, on_unexpected
from modelhost.api.responses import json_response, media_type
from modelhost.api.state import ServerState
from modelhost.errors import InvalidInput, ModelhostError, UnsupportedMediaType
from modelhost.serving import ArchiveSource

# Resolves "NAME[:VERSION]" in the registry to an archive source (None: no registry).
Resolver = Callable[[str], ArchiveSource]
_MAX_PAGE = 1000


class ManagementAPI:
    """Routes over the running engine; ``resolve`` looks registry refs up."""

    def __init__(self, state: ServerState, resolve: Resolver | None) -> None:
        self._state = state
        self._resolve = resolve

    def routes(self) -> list[Route]:
        return [
            Route("/models", self.list_models, methods=["GET"]),
            Route("/models", self.register, methods=["POST"]),
            Route("/models/{name}", self.describe, methods=["GET"]),
            Route("/models/{name}/default", self.set_default, methods=["PUT"]),
            Route("/models/{name}/versions/{version}", self.unregister, methods=["DELETE"]),
        ]

    async def list_models(self, request: Request) -> Response:
        limit = _int_param(request, "limit", 100, 1, _MAX_PAGE)
        offset = _int_param(request, "offset", 0, 0, 2**31)
        names = sorted({m.name for m in self._state.engine.models()})
        page = names[offset : offset + limit]
        following = offset + limit if offset + limit < len(names) else None
        return json_response({"models": page, "total": len(names), "next_offset": following})

    async def describe(self, request: Request) -> Response:
        return json_response(self._describe(request.path_params["name"]))

    def _describe(self, name: str) -> dict[str, Any]:
        engine = self._state.engine
        versions = []
        for version in engine.versions(name):
            info = engine.model(name, version)
            versions.append({
                "version": version, "runtime": info.manifest.runtime, "device": info.device,
                "instances": info.instances, "queue_depth": engine.queue_depth(name, version),
                "in_flight": engine.in_flight(name, version), "status": "ready",
                "max_batch_size": info.policy.max_batch_size,
            })  # fmt: skip
        return {"name": name, "default_version": engine.default_version(name), "versions": versions}

    async def register(self, request: Request) -> Response:
        kind = media_type(request)
        if kind == "application/json":
            doc = _json_object(await request.body())
            ref = doc.get("ref")
            if not isinstance(ref, str) or not ref:
                raise InvalidInput('ref must be "NAME" or "NAME:VERSION" of a registered model')
            if self._resolve is None:
                raise InvalidInput("this server has no registry; upload an archive instead")
            source = await asyncio.to_thread(self._resolve, ref)
            info = await self._state.engine.load(source)
        elif kind == "application/octet-stream":
            with tempfile.TemporaryDirectory(prefix="modelhost-upload-") as tmp:
                path = Path(tmp) / "upload.mh"
                path.write_bytes(await request.body())
                info = await self._state.engine.load(ArchiveSource(path))
        else:
            raise UnsupportedMediaType(
                f'Content-Type {kind or "(none)"!r}: send application/json {{"ref": ...}} '
                "or an archive as application/octet-stream"
            )
        return json_response(self._describe(info.name) | {"loaded": info.version})

    async def set_default(self, request: Request) -> Response:
        name = request.path_params["name"]
        version = _json_object(await request.body()).get("version")
        if not isinstance(version, str):
            raise InvalidInput('version must be a string, e.g. {"version": "2"}')
        self._state.engine.set_default(name, version)
        return json_response(self._describe(name))

    async def unregister(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params["version"]
        await self._state.engine.unload(name, version)
        return json_response({"unloaded": f"{name}:{version}"})


def build_management_app(state: ServerState, token: str, resolve: Resolver | None) -> Starlette:
    """The management app: token check outermost, then the body limit, then the routes."""
    return Starlette(
        routes=ManagementAPI(state, resolve).routes(),
        middleware=[
            Middleware(BearerAuth, token=token),
            Middleware(BodyLimit, max_body_bytes=state.settings.max_archive_upload_bytes),
        ],
        exception_handlers={
            ModelhostError: on_modelhost_error,
            HTTPException: on_http_exception,
            Exception: on_unexpected,
        },
    )


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidInput("body must be a JSON object")
    return doc


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidInput(f"query parameter {name} must be an integer in [{low}, {high}]")
    return int(raw)
