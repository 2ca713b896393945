"""Secrets at start and at the door: unsafe or empty tokens and homes stop ``modelhost serve``
with one ``error:`` line; bearer credentials match as RFC 9110 says, and only whole."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from support.cli import mh
from support.server import ServerProcess, running_server

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 120


def _private_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    return home


def _write(path: Path, text: str, mode: int = 0o600) -> None:
    path.write_text(text)
    path.chmod(mode)


def _other_owner(path: Path) -> None:
    _write(path, "planted-token")
    os.chown(path, 12345, 12345)


def _link(path: Path) -> None:
    _write(path.parent / "elsewhere", "planted-token")
    path.symlink_to("elsewhere")


TOKEN_FILES: dict[str, Callable[[Path], None]] = {
    "empty": lambda p: _write(p, ""),
    "whitespace": lambda p: _write(p, " \n\t \n"),
    "mode 0644": lambda p: _write(p, "planted-token", 0o644),
    "mode 0660": lambda p: _write(p, "planted-token", 0o660),
    "a symlink": _link,
    "a directory": lambda p: p.mkdir(mode=0o700),
    "another user's": _other_owner,
}


def assert_one_error_line(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("make", TOKEN_FILES.values(), ids=TOKEN_FILES.keys())
def test_serve_refuses_an_unsafe_or_empty_token_file(tmp_path, onnx_archive, make):
    if make is _other_owner and os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    home = _private_home(tmp_path)
    token_file = home / "management.token"
    make(token_file)
    args = ("--port", "0", "--management-port", "0", "--home", str(home))
    result = mh("serve", str(onnx_archive), *args, timeout_s=START_TIMEOUT_S)
    assert_one_error_line(result, str(token_file))


@pytest.mark.parametrize("token", ["", "  ", "\t"], ids=["empty", "spaces", "tab"])
def test_serve_refuses_an_empty_inference_token(tmp_path, onnx_archive, token):
    home = _private_home(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "modelhost", "serve", str(onnx_archive), "--port", "0",
         "--management-port", "-1", "--home", str(home)],
        capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False,
        env={"COLUMNS": "200", "PATH": "", "MODELHOST_INFERENCE_TOKEN": token},
    )  # fmt: skip
    assert_one_error_line(result, "inference_token")


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702], ids=oct)
def test_serve_refuses_a_home_others_can_write(tmp_path, onnx_archive, mode):
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(mode)
    args = ("--port", "0", "--management-port", "0", "--home", str(home))
    result = mh("serve", str(onnx_archive), *args, timeout_s=START_TIMEOUT_S)
    assert_one_error_line(result, str(home), "chmod 700")
    assert not (home / "management.token").exists()


def test_serve_repairs_a_home_others_can_read_with_a_warning(tmp_path, onnx_archive):
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o755)
    args = ("--home", str(home), "--management-port", "0")
    with running_server(onnx_archive, args=args) as srv:
        assert srv.token_file is not None
        assert srv.token_file.stat().st_mode & 0o777 == 0o600
    assert home.stat().st_mode & 0o777 == 0o700
    output = "".join(srv.output)
    assert "warning" in output.lower()
    assert "readable by others" in output
    assert "Traceback" not in output


# --- bearer credentials over HTTP ---------------------------------------------------------

TOKEN = "s3cret-Token_value"


@pytest.fixture(scope="module")
def guarded(onnx_archive, tmp_path_factory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("guarded-home")
    args = ("--home", str(home), "--management-port", "0")
    env = {"MODELHOST_INFERENCE_TOKEN": TOKEN}
    with running_server(onnx_archive, args=args, env=env) as srv:
        yield srv
    assert "Traceback" not in "".join(srv.output)


ACCEPTED = [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN}", f"bEaReR   {TOKEN}"]
REFUSED_401 = [
    "Bearer ",
    "Bearer",
    "bearer    ",
    f"Basic {TOKEN}",
    f"Token {TOKEN}",
    TOKEN,
    f"Bearer {TOKEN[:-1]}",
    f"Bearer {TOKEN}x",
    f"Bearer {TOKEN.upper()}",
    f"Bearer\t{TOKEN}",
]


def _both_apis(srv: ServerProcess) -> list[str]:
    assert srv.token_file is not None
    return [f"{srv.url}/v2/models/digits", f"{srv.management_url}/models"]


@pytest.mark.parametrize("value", ACCEPTED)
def test_the_bearer_scheme_matches_case_insensitively(guarded, value):
    response = httpx.get(f"{guarded.url}/v2/models/digits", headers={"Authorization": value})
    assert response.status_code == 200, response.text
    management_token = guarded.token_file.read_text().strip()
    response = httpx.get(
        f"{guarded.management_url}/models",
        headers={"Authorization": value.replace(TOKEN, management_token)},
    )
    assert response.status_code == 200, response.text


def raw_get(url: str, authorization: list[str]) -> tuple[int, dict[str, str], dict[str, str]]:
    """GET ``url`` over a raw socket with these Authorization lines, sent byte for byte
    (httpx refuses some of them, e.g. a trailing space); (status, headers, JSON body)."""
    parts = urlsplit(url)
    lines = [f"GET {parts.path} HTTP/1.1", "Host: test", "Connection: close"]
    lines += [f"Authorization: {value}" for value in authorization]
    with socket.create_connection((parts.hostname, parts.port), timeout=20) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, orjson.loads(body)


@pytest.mark.parametrize("value", REFUSED_401)
def test_a_wrong_or_empty_credential_is_401(guarded, value):
    for url in _both_apis(guarded):
        status, headers, body = raw_get(url, [value])
        assert status == 401, (url, body)
        assert body["code"] == "unauthorized"
        assert headers["www-authenticate"] == "Bearer"


def test_no_credential_is_401_and_health_stays_open(guarded):
    for url in _both_apis(guarded):
        assert httpx.get(url).status_code == 401
    assert httpx.get(f"{guarded.url}/v2/health/ready").status_code == 200


@pytest.mark.parametrize(
    "values",
    [
        [f"Bearer {TOKEN}", f"Bearer {TOKEN}"],
        [f"Bearer {TOKEN}", "Bearer wrong"],
        ["Basic x", f"Bearer {TOKEN}"],
    ],
    ids=["same twice", "right and wrong", "two schemes"],
)
def test_two_authorization_headers_are_400(guarded, values):
    for url in _both_apis(guarded):
        status, _, body = raw_get(url, values)
        assert status == 400, (url, body)
        assert "Authorization" in body["error"]
