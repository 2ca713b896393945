"""The native REST routes (KServe v1 / Vertex shape): ``POST /v1/models/{name}:predict``.

The body is ``{"instances": [...]}`` (JSON) or one raw image (``image/png``,
``image/jpeg``); classification models answer with labels and scores.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelhost.api.inference import infer, observed
from modelhost.api.responses import json_response, media_type
from modelhost.api.state import ServerState
from modelhost.codecs.classification import classify
from modelhost.codecs.images import IMAGE_CONTENT_TYPES, decode_image
from modelhost.codecs.instances import decode_instances
from modelhost.codecs.limits import DecodeLimits
from modelhost.errors import InvalidInput, UnsupportedMediaType
from modelhost.serving import ModelInfo
from modelhost.types import InferResult

PROTOCOL = "native"


def predictions(info: ModelInfo, result: InferResult) -> list[Any]:
    """Classification models: labels + scores; others: each output's rows."""
    manifest = info.manifest
    first = result.outputs[info.outputs[0].name]
    if manifest.postprocessing is not None:
        return classify(first, manifest.labels, manifest.postprocessing)
    if len(info.outputs) == 1:
        return list(first)
    rows = first.shape[0]
    return [{spec.name: result.outputs[spec.name][i] for spec in info.outputs} for i in range(rows)]


class NativeAPI:
    """Routes of the native protocol over one server state."""

    def __init__(self, state: ServerState, limits: DecodeLimits) -> None:
        self._state = state
        self._limits = limits

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/models/{name}", self.describe, methods=["GET"]),
            Route("/v1/models/{name}:predict", self.predict, methods=["POST"]),
            Route("/v1/models/{name}/versions/{version}:predict", self.predict, methods=["POST"]),
        ]

    async def list_models(self, _: Request) -> Response:
        names = sorted({m.name for m in self._state.data.models()})
        return json_response({"models": names})

    async def describe(self, request: Request) -> Response:
        data = self._state.data
        info = data.model(request.path_params["name"])
        return json_response(
            {
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
            kind = media_type(request)
            body = await request.body()
            if kind in IMAGE_CONTENT_TYPES:
                prep = info.manifest.preprocessing
                if prep is None:
                    raise InvalidInput(f"model {info.name} takes no images; send JSON instances")
                image = decode_image(body, prep, "body", self._limits.pixel_budget())
                inputs = {info.inputs[0].name: image[None]}
            elif kind == "application/json":
                inputs = decode_instances(
                    body, info.inputs, info.manifest.preprocessing, self._limits
                )
            else:
                raise UnsupportedMediaType(
                    f"Content-Type {kind or '(none)'!r} is not accepted; send application/json "
                    "instances or image/png or image/jpeg bytes"
                )
            result = await infer(self._state, request, route, inputs)
            return json_response(
                {"predictions": predictions(info, result)},
                headers={"X-Model-Version": result.model_version},
            )
