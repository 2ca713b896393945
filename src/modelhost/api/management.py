"""The management API (its own port, 127.0.0.1:8081 by default; bearer token on every call).

GET    /models?limit=&offset=                 list, paginated
GET    /models/{name}                         versions, default, instances, queue, status
POST   /models                                {"ref": "NAME[:VERSION]"} from the registry,
                                              or an archive body (application/octet-stream),
                                              registered as the next version of its name
PUT    /models/{name}/default                 {"version": "2"}
PUT    /models/{name}/split                   {"weights": {"1": 90, "2": 10}} ({} = off)
PUT    /models/{name}/versions/{v}/instances  {"instances": 2}
DELETE /models/{name}/versions/{version}      unload after finishing accepted requests

All or nothing: a change is applied, then persisted with its audit entry in one registry
transaction; when that fails, the change is undone and the answer (503, 507) says it was
not applied. A refused change is audited as failed (when the registry can be written).

The routes work over :class:`~modelhost.serving.ManagedModels`: the engine of this process,
or (``modelhost serve --workers N``) every worker at once, where a change is acknowledged
only once all workers applied it. With workers, ``GET /models/{name}`` adds ``workers``:
what each worker process reports (pid, default, split, versions).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

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
from modelhost.config import Settings
from modelhost.errors import (
    InsufficientStorage,
    InvalidInput,
    ModelhostError,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from modelhost.serving import ArchiveSource, ManagedModels, ModelView, VersionState, VersionView

_MAX_PAGE = 1000
T = TypeVar("T")
log = logging.getLogger("modelhost.management")


class RegistryPort(Protocol):
    """What the management API needs of a registry (blocking calls, run in threads).

    ``resolve``: ``NAME[:VERSION]`` -> the stored archive with its recorded digest.
    ``register``: push an uploaded archive as the next version of its name; ``forget``
    removes it again when it cannot be served (a refused upload stays in no registry).
    ``commit``: persist the served state and the audit entry of a change, together.
    ``record``: an audit entry alone (a refused change).
    ``started``: record what a starting server serves.
    """

    def resolve(self, ref: str) -> ArchiveSource: ...

    def register(self, archive: Path, actor: str) -> ArchiveSource: ...

    def forget(self, source: ArchiveSource, actor: str) -> None: ...

    def commit(
        self, served: list[VersionState], actor: str, action: str, target: str, detail: str = ""
    ) -> None: ...

    def record(self, actor: str, action: str, target: str, outcome: str, detail: str) -> None: ...

    def started(self, served: list[VersionState]) -> None: ...


@dataclass(frozen=True, slots=True)
class _Loaded:
    """What a load changed, for its answer and for undoing it."""

    response: Response
    name: str
    version: str
    fresh: bool  # False: this name:version was served already (same bytes)
    previous_default: str | None
    source: ArchiveSource
    uploaded: bool
    detail: str  # the audit entry's: what code it runs, if any


def _version_doc(v: VersionView) -> dict[str, Any]:
    return {
        "version": v.version, "runtime": v.runtime, "device": v.device,
        "instances": v.instances, "queue_depth": v.queue_depth, "in_flight": v.in_flight,
        "status": "ready", "scheduler": v.scheduler, "max_batch_size": v.max_batch_size,
        "sha256": v.sha256,
    }  # fmt: skip


def model_doc(view: ModelView) -> dict[str, Any]:
    """The JSON answer describing a model (and, with workers, each worker's report)."""
    doc: dict[str, Any] = {
        "name": view.name,
        "default_version": view.default_version,
        "split": view.split,
        "versions": [_version_doc(v) for v in view.versions],
    }
    if view.workers:
        doc["workers"] = [
            {"pid": w.pid} | {k: v for k, v in model_doc(w.model).items() if k != "name"}
            for w in view.workers
        ]
    return doc


class ManagementAPI:
    """Routes over the served models; ``registry`` (None: none) resolves, persists, audits."""

    def __init__(
        self,
        models: ManagedModels,
        registry: RegistryPort | None,
        actor: str,
        upload_dir: Path,
        max_upload_bytes: int,
    ) -> None:
        self._models = models
        self._registry = registry
        self._actor = actor
        self._upload_dir = upload_dir
        self._max_upload_bytes = max_upload_bytes

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
        names = self._models.names()
        page = names[offset : offset + limit]
        following = offset + limit if offset + limit < len(names) else None
        return json_response({"models": page, "total": len(names), "next_offset": following})

    async def describe(self, request: Request) -> Response:
        return json_response(await self._describe(request.path_params["name"]))

    async def _describe(self, name: str) -> dict[str, Any]:
        return model_doc(await self._models.describe(name))

    async def _change(
        self,
        action: str,
        target: str,
        apply: Callable[[], Awaitable[T]],
        undo: Callable[[T], Awaitable[None]],
        detail: Callable[[T], str] = lambda _: "",
    ) -> T:
        """Apply a change, then persist it with its audit entry (``detail`` of the result);
        undo it if that fails."""
        try:
            result = await apply()
        except ModelhostError as exc:
            await self._record_failure(action, target, exc.message)
            raise
        if self._registry is None:
            return result
        try:
            served = self._models.snapshot()
            await asyncio.to_thread(
                self._registry.commit, served, self._actor, action, target, detail(result)
            )
        except ModelhostError as exc:
            await undo(result)
            exc.message = f"{exc.message}; the change was not applied"
            exc.args = (exc.message,)
            await self._record_failure(action, target, exc.message)
            raise
        return result

    async def _record_failure(self, action: str, target: str, detail: str) -> None:
        if self._registry is None:
            return
        try:
            await asyncio.to_thread(
                self._registry.record, self._actor, action, target, "failed", detail
            )
        except ModelhostError as exc:  # the registry is down: the refusal is the answer
            log.warning("could not audit the refused %s of %s: %s", action, target, exc.message)

    async def register(self, request: Request) -> Response:
        models = self._models

        async def apply() -> _Loaded:
            uploaded = media_type(request) == "application/octet-stream"
            source = await self._source(request)
            try:
                done = await models.load(source)
            except ModelhostError:
                await self._forget(source, uploaded)
                raise
            finally:
                if source.origin == "upload":
                    source.path.unlink(missing_ok=True)
            response = json_response(await self._describe(done.name) | {"loaded": done.version})
            note = (
                f"{done.name}:{done.version} runs its author's code in the server (trusted "
                f"with --trust-code; sha256 {done.sha256})"
                if done.runs_code
                else ""
            )
            return _Loaded(response, done.name, done.version, done.fresh, done.previous_default,
                           source, uploaded, note)  # fmt: skip

        async def undo(loaded: _Loaded) -> None:
            if not loaded.fresh:
                return  # it was served already: nothing changed
            await models.unload(loaded.name, loaded.version)
            if loaded.previous_default is not None:
                await models.set_default(loaded.name, loaded.previous_default)
            await self._forget(loaded.source, loaded.uploaded)

        loaded = await self._change("load", "models", apply, undo, lambda done: done.detail)
        return loaded.response

    async def _forget(self, source: ArchiveSource, uploaded: bool) -> None:
        """Take a registered upload out of the registry again (it is not served). When the
        registry cannot be written now, the version stays registered, unserved: logged."""
        if not uploaded or self._registry is None:
            return
        try:
            await asyncio.to_thread(self._registry.forget, source, self._actor)
        except ModelhostError as exc:
            log.warning("the refused upload %s stays registered: %s", source.ref, exc.message)

    async def _source(self, request: Request) -> ArchiveSource:
        kind = media_type(request)
        if kind == "application/json":
            doc = _json_object(await request.body())
            ref = doc.get("ref")
            if not isinstance(ref, str) or not ref:
                raise InvalidInput('ref must be "NAME" or "NAME:VERSION" of a registered model')
            if self._registry is None:
                raise InvalidInput("this server has no registry; upload an archive instead")
            return await asyncio.to_thread(self._registry.resolve, ref)
        if kind == "application/octet-stream":
            return await self._upload(request)
        raise UnsupportedMediaType(
            f'Content-Type {kind or "(none)"!r}: send application/json {{"ref": ...}} '
            "or an archive as application/octet-stream"
        )

    async def _upload(self, request: Request) -> ArchiveSource:
        """Stream the body to a file (never whole in memory), register it, return it."""
        limit = self._max_upload_bytes
        self._upload_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self._upload_dir, suffix=".mh")
        path = Path(name)
        keep = False
        try:
            with os.fdopen(fd, "wb") as out:
                size = 0
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(
                            f"the archive is over {limit} bytes (max_archive_upload_bytes)"
                        )
                    await asyncio.to_thread(out.write, chunk)
            if self._registry is None:
                keep = True  # the caller loads it, then removes it
                return ArchiveSource(path, origin="upload")
            return await asyncio.to_thread(self._registry.register, path, self._actor)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage(
                    f"no space left for the upload in {self._upload_dir}; nothing was kept"
                ) from exc
            raise
        finally:
            if not keep:
                path.unlink(missing_ok=True)

    async def set_default(self, request: Request) -> Response:
        name = request.path_params["name"]
        models = self._models

        async def apply() -> tuple[Response, str]:
            version = _json_object(await request.body()).get("version")
            if not isinstance(version, str):
                raise InvalidInput('version must be a string, e.g. {"version": "2"}')
            previous = await models.set_default(name, version)
            return json_response(await self._describe(name)), previous

        async def undo(done: tuple[Response, str]) -> None:
            await models.set_default(name, done[1])

        return (await self._change("set_default", name, apply, undo))[0]

    async def set_split(self, request: Request) -> Response:
        name = request.path_params["name"]
        models = self._models

        async def apply() -> tuple[Response, dict[str, float]]:
            weights = _json_object(await request.body()).get("weights")
            if not isinstance(weights, dict) or not all(
                isinstance(w, int | float) and not isinstance(w, bool) for w in weights.values()
            ):
                raise InvalidInput('weights must map versions to numbers: {"1": 90, "2": 10}')
            asked = {str(v): float(w) for v, w in weights.items()}
            previous = await models.set_split(name, asked)
            return json_response(await self._describe(name)), previous

        async def undo(done: tuple[Response, dict[str, float]]) -> None:
            await models.set_split(name, done[1])

        return (await self._change("set_split", name, apply, undo))[0]

    async def scale(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params["version"]
        models = self._models

        async def apply() -> tuple[Response, int]:
            count = _json_object(await request.body()).get("instances")
            if not isinstance(count, int) or isinstance(count, bool):
                raise InvalidInput('instances must be an integer, e.g. {"instances": 2}')
            previous = await models.scale(name, version, count)
            return json_response(await self._describe(name)), previous

        async def undo(done: tuple[Response, int]) -> None:
            await models.scale(name, version, done[1])

        return (await self._change("scale", f"{name}:{version}", apply, undo))[0]

    async def unregister(self, request: Request) -> Response:
        name, version = request.path_params["name"], request.path_params["version"]
        models = self._models

        async def apply() -> None:
            await models.detach(name, version)  # reversible until persisted

        async def undo(_: None) -> None:
            await models.reattach(name, version)

        await self._change("unload", f"{name}:{version}", apply, undo)
        await models.drain(name, version)
        return json_response({"unloaded": f"{name}:{version}"})


def build_management_app(
    models: ManagedModels, settings: Settings, token: str, registry: RegistryPort | None = None
) -> Starlette:
    """The management app: token check outermost, then the body limit, then the routes.

    Uploads are streamed to ``home/uploads`` (never held in memory), up to
    ``max_archive_upload_bytes``.
    """
    limit = settings.max_archive_upload_bytes
    api = ManagementAPI(models, registry, token_id(token), settings.home / "uploads", limit)
    return Starlette(
        routes=api.routes(),
        middleware=[
            Middleware(BearerAuth, token=token),
            Middleware(BodyLimit, max_body_bytes=limit),
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
