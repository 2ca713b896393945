"""Small request/response helpers every route module shares."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response


def media_type(request: Request) -> str:
    """The request's Content-Type without parameters, lower-cased ('' when absent)."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def json_response(doc: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON response serialized by orjson (numpy arrays allowed)."""
    return Response(
        orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY),
        headers=headers,
        media_type="application/json",
    )
