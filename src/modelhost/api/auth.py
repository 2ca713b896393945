"""Bearer tokens for the management API: created once, stored 0600, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from modelhost.api.problems import error_body
from modelhost.errors import Unauthorized

TOKEN_FILE = "management.token"


def load_or_create_token(home: Path) -> str:
    """The management token in ``home``; created (random, 256 bits, mode 0600) on first use."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def token_id(token: str) -> str:
    """A short, non-secret name for a token, for the audit log (``tok:<sha256 prefix>``)."""
    return "tok:" + hashlib.sha256(token.encode()).hexdigest()[:12]


class BearerAuth:
    """Pure ASGI: every HTTP request needs ``Authorization: Bearer <token>``, else 401."""

    def __init__(self, app: ASGIApp, token: str, open_paths: frozenset[str] = frozenset()) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()
        self._open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self._open_paths:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                body = error_body(
                    "missing or wrong bearer token (Authorization: Bearer <token>)",
                    Unauthorized.code,
                )
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                ]})  # fmt: skip
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
