"""Bearer credentials and the management token file (tables; real files, real ASGI calls)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelhost.api.auth import TOKEN_FILE, BearerAuth, bearer_credential, load_or_create_token
from modelhost.errors import ConfigError, InvalidInput

CREDENTIALS = [
    ([b"Bearer abc"], b"abc"),
    ([b"bearer abc"], b"abc"),
    ([b"BEARER  abc"], b"abc"),
    ([b"bEaReR    abc"], b"abc"),
    ([], None),
    ([b"Bearer "], None),
    ([b"Bearer"], None),
    ([b"Bearer    "], None),
    ([b"Basic YWxhZGRpbjpvcGVuc2VzYW1l"], None),
    ([b"Bearerabc"], None),
    ([b"Bearer\tabc"], None),
    ([b"Token abc"], None),
    ([b"abc"], None),
    ([b""], None),
]


@pytest.mark.parametrize(("values", "expected"), CREDENTIALS)
def test_bearer_credential(values, expected):
    assert bearer_credential(values) == expected


@pytest.mark.parametrize(
    "values", [[b"Bearer a", b"Bearer a"], [b"Bearer a", b"Bearer b"], [b"Basic x", b"Bearer a"]]
)
def test_more_than_one_authorization_header_is_invalid(values):
    with pytest.raises(InvalidInput, match="2 Authorization headers"):
        bearer_credential(values)


@pytest.mark.parametrize("token", ["", " ", "\t\n"])
def test_bearer_auth_refuses_an_empty_token(token):
    with pytest.raises(ValueError, match="empty"):
        BearerAuth(app=lambda *_: None, token=token)  # type: ignore[arg-type]


async def _call(auth: BearerAuth, headers: list[tuple[bytes, bytes]]) -> int:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "path": "/models", "headers": headers}
    await auth(scope, receive, send)  # type: ignore[arg-type]
    return sent[0]["status"]


async def _ok(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([(b"authorization", b"Bearer s3cret")], 200),
        ([(b"authorization", b"bearer s3cret")], 200),
        ([(b"authorization", b"BEARER  s3cret")], 200),
        ([(b"authorization", b"Bearer s3cre")], 401),
        ([(b"authorization", b"Bearer s3crett")], 401),
        ([(b"authorization", b"Bearer ")], 401),
        ([(b"authorization", b"Basic czNjcmV0")], 401),
        ([], 401),
        ([(b"authorization", b"Bearer s3cret"), (b"authorization", b"Bearer s3cret")], 400),
        ([(b"authorization", b"Bearer x"), (b"authorization", b"Bearer s3cret")], 400),
    ],
)
async def test_bearer_auth(headers, status):
    assert await _call(BearerAuth(_ok, token="s3cret"), headers) == status


# --- the token file ------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    return home


def test_a_new_token_file_is_private_and_reused(home):
    token = load_or_create_token(home)
    path = home / TOKEN_FILE
    assert len(token) >= 40
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_token(home) == token


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    path.write_text(text)
    path.chmod(mode)


def _write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def _link(path: Path, target: str | Path, text: str) -> None:
    _write(path.parent / target, text)
    path.symlink_to(target)


UNSAFE = {
    "empty": lambda p: _write(p, ""),
    "whitespace": lambda p: _write(p, "  \n\t\n"),
    "binary": lambda p: _write_bytes(p, b"\xff\xfe\x00tok"),
    "control characters": lambda p: _write(p, "abc\x07def"),
    "huge": lambda p: _write(p, "a" * 10_000),
    "mode 0644": lambda p: _write(p, "planted-token", 0o644),
    "mode 0640": lambda p: _write(p, "planted-token", 0o640),
    "mode 0602": lambda p: _write(p, "planted-token", 0o602),
    "mode 0660": lambda p: _write(p, "planted-token", 0o660),
    "a directory": lambda p: p.mkdir(mode=0o700),
    "a fifo": lambda p: os.mkfifo(p, 0o600),
    "a symlink": lambda p: _link(p, "elsewhere", "planted-token"),
    "a symlink to a private file": lambda p: _link(p, p.parent / "private", "planted-token"),
    "a dangling symlink": lambda p: p.symlink_to(p.parent / "missing"),
}


@pytest.mark.parametrize("make", UNSAFE.values(), ids=UNSAFE.keys())
def test_an_unsafe_or_empty_token_file_is_refused(home, make):
    path = home / TOKEN_FILE
    make(path)
    with pytest.raises(ConfigError) as caught:
        load_or_create_token(home)
    assert str(path) in caught.value.message
    assert "\n" not in caught.value.message


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_token_file_of_another_user_is_refused(home):
    path = home / TOKEN_FILE
    _write(path, "planted-token")
    os.chown(path, 12345, 12345)
    with pytest.raises(ConfigError, match="belongs to uid 12345"):
        load_or_create_token(home)
