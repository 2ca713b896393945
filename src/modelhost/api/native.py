"""The native REST routes (KServe v1 / Vertex shape): ``POST /v1/models/{name}:predict``.

``GET /v1/models`` and ``GET /v1/models/{name}`` are also the paths OpenAI clients list and
retrieve models with: their answers carry both shapes (OpenAI's ``object``/``data``/``id``
beside KServe v1's ``models`` / ``name``, ``versions``).

The envelope only: the body (``{"instances": [...]}`` JSON or one raw ``image/png`` /
``image/jpeg``) is decoded and the answer made by the model's task codec, so this route
answers what the model's task says: labels and scores for a classifier, vectors for an
embedding model, output rows otherwise, as ``{"predictions": [...]}``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelhost.api.inference import TaskCodecs, infer, observed
from modelhost.api.offload import CodecPool, outputs_bytes
from modelhost.api.responses import json_response, media_type
from modelhost.api.state import ServerState
from modelhost.codecs.task import Outputs, TaskCodec
from modelhost.serving import ModelInfo

PROTOCOL = "native"


def openai_model(info: ModelInfo) -> dict[str, Any]:
    """OpenAI's model object for a model (its default version ``info``)."""
    created = int(info.manifest.created_at.timestamp())
    return {"id": info.name, "object": "model", "created": created, "owned_by": "modelhost"}


def encode_predictions(codec: TaskCodec, outputs: Outputs) -> bytes:
    """The JSON body ``{"predictions": [...]}``: the task's answer per instance."""
    return orjson.dumps({"predictions": codec.answer(outputs)}, option=orjson.OPT_SERIALIZE_NUMPY)


class NativeAPI:
    """Routes of the native protocol over one server state."""

    def __init__(self, state: ServerState, codecs: TaskCodecs, pool: CodecPool) -> None:
        self._state = state
        self._codecs = codecs
        self._pool = pool

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/models/{name}", self.describe, methods=["GET"]),
            Route("/v1/models/{name}:predict", self.predict, methods=["POST"]),
            Route("/v1/models/{name}/versions/{version}:predict", self.predict, methods=["POST"]),
        ]

    async def list_models(self, _: Request) -> Response:
        data = self._state.data
        # One synchronous read of the engine's tables: nothing unloads in between.
        defaults = [data.model(name) for name in sorted({m.name for m in data.models()})]
        return json_response(
            {
                "object": "list",
                "data": [openai_model(info) for info in defaults],
                "models": [info.name for info in defaults],
            }
        )

    async def describe(self, request: Request) -> Response:
        data = self._state.data
        info = data.model(request.path_params["name"])
        return json_response(
            {
                **openai_model(info),
                "name": info.name,
                "ready": self._state.ready,
                "default_version": info.version,
                "versions": data.versions(info.name),
            }
        )

    async def predict(self, request: Request) -> Response:
        with observed(self._state, PROTOCOL) as obs:
            params = request.path_params
            route = self._state.data.resolve(params["name"], params.get("version"))
            info = route.info
            obs.model, obs.version = info.name, info.version
            codec = await self._codecs.of(info)
            kind = media_type(request)
            body = await request.body()
            inputs = await self._pool.finish(codec.decode(body, kind))
            result = await infer(self._state, request, route, inputs)
            outputs = result.outputs
            payload = await self._pool.encode(
                outputs_bytes(outputs), partial(encode_predictions, codec, outputs)
            )
            return Response(
                payload,
                headers={"X-Model-Version": result.model_version},
                media_type="application/json",
            )
