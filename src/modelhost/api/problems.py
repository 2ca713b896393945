"""Errors -> HTTP responses, in one place: ``{"error": message, "code": code}``.

The body shape is the Open Inference Protocol's (``error``) plus a stable ``code`` the
client SDK maps back to the same exception class.
"""

from __future__ import annotations

import logging

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from modelhost.errors import ModelhostError, Overloaded

log = logging.getLogger("modelhost.api")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def error_body(message: str, code: str) -> bytes:
    """The JSON error body every route answers with."""
    return orjson.dumps({"error": message, "code": code})


def error_response(exc: ModelhostError) -> Response:
    """The HTTP response for a modelhost error (adds Retry-After when overloaded)."""
    headers = {}
    if isinstance(exc, Overloaded):
        headers["Retry-After"] = str(int(exc.retry_after_s))
    return Response(
        error_body(exc.message, exc.code), exc.status, headers, media_type="application/json"
    )


async def on_modelhost_error(_: Request, exc: Exception) -> Response:
    """Starlette exception handler for the modelhost error tree."""
    assert isinstance(exc, ModelhostError)  # registered for this class only
    return error_response(exc)


async def on_http_exception(_: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 in the same JSON shape."""
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return Response(
        error_body(str(exc.detail), code),
        exc.status_code,
        exc.headers,
        media_type="application/json",
    )


async def on_unexpected(_: Request, exc: Exception) -> Response:
    """Anything else is a bug: log it whole, answer a 500 that leaks no internals."""
    log.error("unhandled error", exc_info=exc)
    return Response(
        error_body("internal server error; see the server log", "internal"),
        500,
        media_type="application/json",
    )
