"""OpenAI-compatible routes: ``POST /v1/embeddings``; the envelope only.

    {"model": "minilm", "input": "text" | ["text", ...],
     "encoding_format": "float" | "base64", "dimensions": 384}
      ─► {"object": "list", "model": ..., "usage": {"prompt_tokens", "total_tokens"},
          "data": [{"object": "embedding", "index": i, "embedding": [...] | "<base64>"}]}

``model`` names a loaded embedding model, or one version of it as ``name:version``. The
strings are tokenized by the model's text codec, as on every other route; ``usage`` counts
their tokens (padding excluded). ``dimensions`` may name the model's width or a size its
archive allows vectors to be cut to (Matryoshka, ``postprocessing.shorten_to``). Token-id
inputs (arrays of integers, what LangChain sends unless ``check_embedding_ctx_length`` is
off) are refused: ids of another tokenizer mean nothing to this model.

Errors answer in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with
the status the same error has on the other routes (``GET /v1/models``, which OpenAI
clients list models with, lives in ``native.py``: the two protocols share its path).
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelhost.api.inference import TaskCodecs, infer, observed
from modelhost.api.offload import CodecPool, outputs_bytes
from modelhost.api.responses import media_type
from modelhost.api.state import ServerState
from modelhost.codecs.task import TaskCodec
from modelhost.codecs.text import token_count
from modelhost.errors import InvalidInput, ModelhostError, ModelNotFound, Overloaded
from modelhost.serving import ModelInfo
from modelhost.types import InferResult

PROTOCOL = "openai"
_ENCODINGS = ("float", "base64")
# OpenAI's error ``type`` by HTTP status.
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
          413: "invalid_request_error", 415: "invalid_request_error", 429: "rate_limit_error",
          503: "service_unavailable", 504: "timeout"}  # fmt: skip


class OpenAIError(InvalidInput):
    """A request field OpenAI's API would refuse; ``param`` names it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def error_response(exc: ModelhostError) -> Response:
    """``exc`` in OpenAI's error shape, with its status (and Retry-After when overloaded)."""
    missing = isinstance(exc, ModelNotFound)
    body = {
        "error": {
            "message": exc.message,
            "type": _TYPES.get(exc.status, "server_error"),
            "param": "model" if missing else getattr(exc, "param", None),
            "code": "model_not_found" if missing else exc.code,
        }
    }
    headers = {"Retry-After": str(int(exc.retry_after_s))} if isinstance(exc, Overloaded) else {}
    return Response(orjson.dumps(body), exc.status, headers, media_type="application/json")


def openai_errors(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """Answer the route's modelhost errors in OpenAI's shape."""

    async def route(request: Request) -> Response:
        try:
            return await handler(request)
        except ModelhostError as exc:
            return error_response(exc)

    return route


class EmbeddingsRequest:
    """The checked fields of a ``POST /v1/embeddings`` body."""

    __slots__ = ("dimensions", "encoding", "model", "texts")

    def __init__(self, doc: Any) -> None:
        if not isinstance(doc, dict):
            raise OpenAIError("the body must be a JSON object", "body")
        model = doc.get("model")
        if not isinstance(model, str) or not model:
            raise OpenAIError("model must name a loaded embedding model", "model")
        self.model = model
        self.texts = _texts(doc.get("input"))
        encoding = doc.get("encoding_format", "float")
        if encoding is None:
            encoding = "float"
        if encoding not in _ENCODINGS:
            raise OpenAIError(
                f"encoding_format must be one of {', '.join(_ENCODINGS)}", "encoding_format"
            )
        self.encoding: str = encoding
        dimensions = doc.get("dimensions")
        if dimensions is not None and (
            not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
        ):
            raise OpenAIError("dimensions must be a positive integer", "dimensions")
        self.dimensions: int | None = dimensions


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value) or all(
            isinstance(v, list) for v in value
        ):
            raise OpenAIError(
                "input as token ids is not supported: send strings (this model has its own "
                "tokenizer; LangChain: set check_embedding_ctx_length=False)",
                "input",
            )
        return value
    raise OpenAIError("input must be a string or a non-empty list of strings", "input")


def _model(ref: str) -> tuple[str, str | None]:
    name, _, version = ref.partition(":")
    if not name:
        raise OpenAIError(f"model {ref!r} names no model", "model")
    return name, version or None


def encode_embeddings(
    codec: TaskCodec, ask: EmbeddingsRequest, result: InferResult, tokens: int, model: str
) -> bytes:
    """The response body: one ``embedding`` object per input, in order."""
    vectors = codec.vectors(result.outputs, ask.dimensions)
    if ask.encoding == "base64":
        rows: list[Any] = [
            base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode("ascii")
            for v in vectors
        ]
    else:
        rows = list(vectors.astype(np.float32, copy=False))
    data = [{"object": "embedding", "index": i, "embedding": r} for i, r in enumerate(rows)]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    doc = {"object": "list", "data": data, "model": model, "usage": usage}
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


class OpenAIAPI:
    """OpenAI-compatible routes over one server state."""

    def __init__(self, state: ServerState, codecs: TaskCodecs, pool: CodecPool) -> None:
        self._state = state
        self._codecs = codecs
        self._pool = pool

    def routes(self) -> list[Route]:
        return [Route("/v1/embeddings", openai_errors(self.embeddings), methods=["POST"])]

    async def embeddings(self, request: Request) -> Response:
        with observed(self._state, PROTOCOL) as obs:
            kind = media_type(request)
            if kind not in ("application/json", ""):
                raise OpenAIError(f"Content-Type {kind!r} is not accepted; send JSON", "body")
            body = await request.body()
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise OpenAIError(f"the body is not valid JSON: {exc}", "body") from exc
            ask = EmbeddingsRequest(doc)
            name, version = _model(ask.model)
            try:
                route = self._state.data.resolve(name, version)
            except ModelNotFound as exc:
                raise ModelNotFound(f"the model {ask.model!r} does not exist: {exc}") from exc
            info = route.info
            obs.model, obs.version = info.name, info.version
            codec = await self._codecs.of(info)
            _check_embedding_model(info, codec, ask)
            try:
                inputs = await self._pool.finish(codec.decode_texts(ask.texts, "input"))
            except InvalidInput as exc:
                raise OpenAIError(exc.message, "input") from exc
            tokens = token_count(inputs)
            result = await infer(self._state, request, route, inputs)
            payload = await self._pool.encode(
                outputs_bytes(result.outputs),
                partial(encode_embeddings, codec, ask, result, tokens, ask.model),
            )
            return Response(
                payload,
                headers={"X-Model-Version": result.model_version},
                media_type="application/json",
            )


def _check_embedding_model(info: ModelInfo, codec: TaskCodec, ask: EmbeddingsRequest) -> None:
    if codec.answer_kind != "embedding" or codec.text is None:
        what = "text " if codec.text is not None else ""
        raise OpenAIError(
            f"{info.name} is a {what}{info.manifest.task} model; /v1/embeddings serves text "
            "embedding models",
            "model",
        )
    if ask.dimensions is not None:
        width = info.outputs[0].shape[-1]
        if ask.dimensions != width and ask.dimensions not in codec.shorten_to:
            sizes = ", ".join(map(str, (width, *codec.shorten_to)))
            raise OpenAIError(
                f"dimensions {ask.dimensions}: {info.name} makes {width}-dimensional vectors "
                f"and can give {sizes} only",
                "dimensions",
            )
