"""Bearer tokens: the management token file (created once, 0600, checked like ssh checks its
keys) and the ASGI check every protected request passes (constant-time comparison)."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from modelhost.api.problems import error_body
from modelhost.errors import ConfigError, InvalidInput, ModelhostError, Unauthorized

TOKEN_FILE = "management.token"
_MAX_TOKEN_FILE_BYTES = 4096


def load_or_create_token(home: Path) -> str:
    """The management token in ``home``; created (random, 256 bits, mode 0600) on first use.

    ``home`` must exist (see :func:`modelhost.home.prepare_home`). An existing token file is
    used only when it is a regular file (not a link) owned by this user, with no access for
    group or others, holding a non-empty token: anything else may be someone else's value.

    Raises:
        ConfigError: the token file is unsafe, empty or unreadable; the message names the
            file and the fix.
    """
    path = home / TOKEN_FILE
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return _read_token(path)
    except OSError as exc:
        raise ConfigError(f"cannot create the token file {path}: {exc.strerror}") from exc
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def _read_token(path: Path) -> str:
    fix = f"run: chmod 600 {path}, or delete it to get a new token"
    try:
        # O_NOFOLLOW: a link planted in place of the file is refused, never followed.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if os.path.islink(path):
            raise ConfigError(
                f"the token file {path} is a symbolic link; delete it to get a new token"
            ) from exc
        raise ConfigError(f"cannot read the token file {path}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(
                f"the token file {path} is not a regular file; delete it to get a new token"
            )
        if info.st_uid != os.geteuid():
            raise ConfigError(
                f"the token file {path} belongs to uid {info.st_uid}, not to you, so its "
                "token may be someone else's; delete it to get a new token"
            )
        mode = stat.S_IMODE(info.st_mode)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"the token file {path} can be read or written by others (mode {mode:04o}); " + fix
            )
        raw = os.read(fd, _MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        token = None
    if not token or len(raw) > _MAX_TOKEN_FILE_BYTES or not token.isprintable():
        raise ConfigError(
            f"the token file {path} holds no usable token (empty, whitespace, not ASCII "
            "text or over 4 KiB); write a token into it or delete it to get a new one"
        )
    return token


def token_id(token: str) -> str:
    """A short, non-secret name for a token, for the audit log (``tok:<sha256 prefix>``)."""
    return "tok:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def bearer_credential(values: list[bytes]) -> bytes | None:
    """The credential of the ``Authorization`` header values of one request, or None.

    The scheme matches case-insensitively (RFC 9110 §11.1: ``bearer``, ``BEARER``), followed
    by one or more spaces; an empty credential is None.

    Raises:
        InvalidInput: more than one ``Authorization`` header.

    >>> bearer_credential([b"bearer  abc"])
    b'abc'
    """
    if len(values) > 1:
        raise InvalidInput(
            f"{len(values)} Authorization headers; send exactly one: Authorization: Bearer <token>"
        )
    if not values:
        return None
    scheme, _, credential = values[0].partition(b" ")
    credential = credential.lstrip(b" ")
    if scheme.lower() != b"bearer" or not credential:
        return None
    return credential


class BearerAuth:
    """Pure ASGI: every HTTP request needs ``Authorization: Bearer <token>``.

    - no, another scheme's or a wrong credential: 401 with ``WWW-Authenticate: Bearer``;
    - more than one ``Authorization`` header: 400. The request is malformed (RFC 9110 §5.3:
      a field that is not a list may appear once), and answering 401 would suggest that
      one of the two might have worked.

    The comparison takes the same time whatever the credential (both sides are hashed
    first, so not even the length leaks). Paths in ``open_paths`` need no token.

    Raises:
        ValueError: ``token`` is empty or whitespace (it would let ``Bearer `` in).
    """

    def __init__(self, app: ASGIApp, token: str, open_paths: frozenset[str] = frozenset()) -> None:
        if not token.strip():
            raise ValueError("a bearer token must not be empty or whitespace")
        self.app = app
        self._expected = hashlib.sha256(token.encode()).digest()
        self._open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self._open_paths:
            values = [v for k, v in scope["headers"] if k == b"authorization"]
            try:
                given = bearer_credential(values)
            except InvalidInput as exc:
                await _answer(send, exc)
                return
            digest = hashlib.sha256(given or b"").digest()
            if not (hmac.compare_digest(digest, self._expected) and given):
                await _answer(
                    send,
                    Unauthorized("missing or wrong bearer token (Authorization: Bearer <token>)"),
                )
                return
        await self.app(scope, receive, send)


async def _answer(send: Send, error: ModelhostError) -> None:
    body = error_body(error.message, error.code)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if isinstance(error, Unauthorized):
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
