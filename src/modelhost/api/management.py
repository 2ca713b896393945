"""The management API (its own port, 127.0.0.1:8081 by default; bearer token on every call).

GET    /models?limit=&offset=                 list, paginated
GET    /models/{name}                         versions, default, instances, queue, status
POST   /models                                {"ref": "NAME[:VERSION]"} from the registry,
                                              or an archive body (application/octet-stream)
PUT    /models/{name}/default                 {"version": "2"}
PUT    /models/{name}/split                   {"weights": {"1": 90, "2": 10}} ({} = off)
PUT    /models/{name}/versions/{v}/instances  {"instances": 2}
DELETE /models/{name}/versions/{version}      unload after finishing accepted requests

Every change is reported to ``audit(actor, action, target, outcome, detail)`` (the
registry's audit log when the server has one), the actor being the token's id.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelhost.api.auth import BearerAuth, token_id
from modelhost.api.middleware import BodyLimit
from modelhost.api.problems import on_http_exception, on_modelhost_error, on_unexpected
from modelhost.api.responses import json_response, media_type
from modelhost.api.state import ServerState
from modelhost.errors import InvalidInput, ModelhostError, UnsupportedMediaType
from modelhost.serving import ArchiveSource, VersionState

# Resolves "NAME[:VERSION]" in the registry to an archive source (None: no registry).
Resolver = Callable[[str], ArchiveSource]
Auditor = Callable[[str, str, str, str, str], None]
# Called with the engine's snapshot after every change (the registry persists it).
Persister = Callable[[list[VersionState]], None]
_MAX_PAGE = 1000
T = TypeVar("T")


class ManagementAPI:
    """Routes over the running engine; ``resolve`` looks registry refs up."""

    def __init__(
        self,
        state: ServerState,
        resolve: Resolver | None,
        audit: Auditor | None,
        actor: str,
        persist: Persister | None = None,
    ) -> None:
        self._persist = persist
        self._state = state
        self._resolve = resolve
        self._audit = audit
        self._actor = actor

    def routes(self) -> list[Route]:
        return [
            Route("/models", self.list_models, methods=["GET"]),
            Route("/models", self.register, methods=["POST"]),
            Route("/models/{name}", self.describe, methods=["GET"]),
            Route("/models/{name}/default", self.set_default, methods=["PUT"]),
            Route("/models/{name}/split", self.set_split, methods=["PUT"]),
            Route("/models/{name}/versions/{version}/instances", self.scale, methods=["PUT"]),
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
                "instances": engine.instance_count(name, version),
                "queue_depth": engine.queue_depth(name, version),
                "in_flight": engine.in_flight(name, version), "status": "ready",
                "max_batch_size": info.policy.max_batch_size,
            })  # fmt: skip
        return {
            "name": name, "default_version": engine.default_version(name),
            "split": engine.split(name), "versions": versions,
        }  # fmt: skip

    async def _audited(self, action: str, target: str, run: Callable[[], Awaitable[T]]) -> T:
        try:
            result = await run()
        except ModelhostError as exc:
            await self._record(action, target, "failed", exc.message)
            raise
        await self._record(action, target, "ok", "")
        if self._persist is not None:
            await asyncio.to_thread(self._persist, self._state.engine.snapshot())
        return result

    async def _record(self, action: str, target: str, outcome: str, detail: str) -> None:
        if self._audit is not None:
            await asyncio.to_thread(self._audit, self._actor, action, target, outcome, detail)

    async def register(self, request: Request) -> Response:
        return await self._audited("load", "models", lambda: self._register(request))

    async def _register(self, request: Request) -> Response:
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
                info = await self._state.engine.load(ArchiveSource(path, origin="upload"))
        else:
            raise UnsupportedMediaType(
                f'Content-Type {kind or "(none)"!r}: send application/json {{"ref": ...}} '
                "or an archive as application/octet-stream"
            )
        return json_response(self._describe(info.name) | {"loaded": info.version})

    async def set_default(self, request: Request) -> Response:
        name = request.path_params["name"]

        async def run() -> Response:
            version = _json_object(await request.body()).get("version")
            if not isinstance(version, str):
                raise InvalidInput('version must be a string, e.g. {"version": "2"}')
            self._state.engine.set_default(name, version)
            return json_response(self._describe(name))

        return await self._audited("set_default", name, run)

    async def set_split(self, request: Request) -> Response:
        name = request.path_params["name"]

        async def run() -> Response:
            weights = _json_object(await request.body()).get("weights")
            if not isinstance(weights, dict) or not all(
                isinstance(w, int | float) and not isinstance(w, bool) for w in weights.values()
            ):
                raise InvalidInput('weights must map versions to numbers: {"1": 90, "2": 10}')
            self._state.engine.set_split(name, {str(v): float(w) for v, w in weights.items()})
            return json_response(self._describe(name))

        return await self._audited("set_split", name, run)

    async def scale(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params["version"]

        async def run() -> Response:
            count = _json_object(await request.body()).get("instances")
            if not isinstance(count, int) or isinstance(count, bool):
                raise InvalidInput('instances must be an integer, e.g. {"instances": 2}')
            await self._state.engine.scale(name, version, count)
            return json_response(self._describe(name))

        return await self._audited("scale", f"{name}:{version}", run)

    async def unregister(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params["version"]

        async def run() -> Response:
            await self._state.engine.unload(name, version)
            return json_response({"unloaded": f"{name}:{version}"})

        return await self._audited("unload", f"{name}:{version}", run)


def build_management_app(
    state: ServerState,
    token: str,
    resolve: Resolver | None,
    audit: Auditor | None = None,
    persist: Persister | None = None,
) -> Starlette:
    """The management app: token check outermost, then the body limit, then the routes."""
    return Starlette(
        routes=ManagementAPI(state, resolve, audit, token_id(token), persist).routes(),
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
