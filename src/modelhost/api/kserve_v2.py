"""Open Inference Protocol v2 (KServe v2) REST routes: the envelope only.

Tensors decode through the model's task codec; outputs are the model's raw tensors unless a
requested output asks for ``"parameters": {"classification": k}`` (Triton's classification
extension): then its top k per row, as ``"value:index[:label]"`` strings. JSON or binary
is decided as Triton decides it, from ``Inference-Header-Content-Length``; the Content-Type
is not read.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelhost.api.inference import TaskCodecs, infer, observed
from modelhost.api.offload import CodecPool, outputs_bytes
from modelhost.api.responses import json_response
from modelhost.api.state import ServerState
from modelhost.codecs.kserve_v2 import NUMPY_TO_V2, V2Request, encode_response
from modelhost.codecs.task import TaskCodec
from modelhost.errors import InvalidInput
from modelhost.serving import ModelInfo
from modelhost.types import InferResult, TensorSpec

PROTOCOL = "kserve_v2"
SERVER_NAME = "modelhost"
EXTENSIONS = ["binary_tensor_data", "classification"]
_HEADER_LENGTH = "inference-header-content-length"
_MAX_HEADER_DIGITS = 19  # any larger count is past every body limit


def tensor_metadata(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
    """``[{name, datatype, shape}]`` for metadata responses."""
    return [
        {"name": s.name, "datatype": NUMPY_TO_V2[s.dtype], "shape": list(s.shape)} for s in specs
    ]


def encode_result(
    codec: TaskCodec, result: InferResult, request: V2Request
) -> tuple[bytes, int | None]:
    """The response body (and its JSON part's length when binary outputs follow) for the
    outputs ``request`` asked for, classified where it asked for ``classification``."""
    return encode_response(
        result.model_name,
        result.model_version,
        request.id,
        codec.tensors(result.outputs, request.classification),
        request.outputs,
        request.binary_outputs,
    )


class KServeV2API:
    """Routes of the v2 protocol over one server state."""

    def __init__(
        self, state: ServerState, version: str, codecs: TaskCodecs, pool: CodecPool
    ) -> None:
        self._state = state
        self._version = version
        self._codecs = codecs
        self._pool = pool

    def routes(self) -> list[Route]:
        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        return [
            Route("/v2", self.server_metadata, methods=["GET"]),
            Route("/v2/", self.server_metadata, methods=["GET"]),
            Route(model, self.model_metadata, methods=["GET"]),
            Route(versioned, self.model_metadata, methods=["GET"]),
            Route(f"{model}/ready", self.model_ready, methods=["GET"]),
            Route(f"{versioned}/ready", self.model_ready, methods=["GET"]),
            Route(f"{model}/infer", self.infer, methods=["POST"]),
            Route(f"{versioned}/infer", self.infer, methods=["POST"]),
        ]

    def _model(self, request: Request) -> ModelInfo:
        params = request.path_params
        return self._state.data.model(params["name"], params.get("version"))

    async def server_metadata(self, _: Request) -> Response:
        return json_response(
            {"name": SERVER_NAME, "version": self._version, "extensions": EXTENSIONS}
        )

    async def model_metadata(self, request: Request) -> Response:
        info = self._model(request)
        codec = await self._codecs.of(info)
        return json_response(
            {
                "name": info.name,
                "versions": self._state.data.versions(info.name),
                "platform": info.platform,
                "inputs": tensor_metadata(codec.wire_inputs),
                "outputs": tensor_metadata(info.outputs),
            }
        )

    async def model_ready(self, request: Request) -> Response:
        info = self._model(request)
        ready = self._state.ready
        return json_response({"name": info.name, "ready": ready}) if ready else Response(
            b'{"error": "model is not ready", "code": "model_not_ready"}', 503,
            media_type="application/json",
        )  # fmt: skip

    async def infer(self, request: Request) -> Response:
        with observed(self._state, PROTOCOL) as obs:
            params = request.path_params
            route = self._state.data.resolve(params["name"], params.get("version"))
            info = route.info
            obs.model, obs.version = info.name, info.version
            # As Triton decides: Inference-Header-Content-Length says where the JSON ends and
            # binary tensors begin; without it the body is JSON. Content-Type is not read
            # (aiohttp labels every bytes body application/octet-stream, curl -d sends
            # application/x-www-form-urlencoded).
            header_length = _parse_header_length(_one_header(request, _HEADER_LENGTH))
            codec = await self._codecs.of(info)
            body = await request.body()
            decoded = await self._pool.finish(codec.decode_tensors(body, header_length))
            result = await infer(self._state, request, route, decoded.inputs, decoded.id)
            payload, json_length = await self._pool.encode(
                outputs_bytes(result.outputs), partial(encode_result, codec, result, decoded)
            )
            if json_length is None:
                return Response(payload, media_type="application/json")
            return Response(
                payload,
                headers={"Inference-Header-Content-Length": str(json_length)},
                media_type="application/octet-stream",
            )


def _one_header(request: Request, name: str) -> str | None:
    values = request.headers.getlist(name)
    if len(values) > 1:
        raise InvalidInput(f"{name} appears {len(values)} times; send it once")
    return values[0] if values else None


def _parse_header_length(value: str | None) -> int | None:
    """The byte count of ``Inference-Header-Content-Length``: 1 to 19 ASCII digits.

    ``str.isdigit`` is not enough: it accepts '²' and '٣', which ``int`` refuses or reads.
    """
    if value is None:
        return None
    digits = value.strip(" \t")
    if not (0 < len(digits) <= _MAX_HEADER_DIGITS and digits.isascii() and digits.isdigit()):
        raise InvalidInput(
            f"Inference-Header-Content-Length {value[:40]!r} is not a byte count "
            f"(1 to {_MAX_HEADER_DIGITS} digits 0-9)"
        )
    return int(digits)
