"""The management API over HTTP: every route with and without the token; safe defaults."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx
import pytest

from support.cli import mh
from support.server import running_server

pytestmark = pytest.mark.slow

PNG = {"Content-Type": "image/png"}


@pytest.fixture(scope="module")
def managed(tmp_path_factory, digits_archive, onnx_archive):
    home = tmp_path_factory.mktemp("home")
    for archive in (digits_archive, onnx_archive):  # registry versions 1 (torch), 2 (onnx)
        assert mh("push", str(archive), "--home", str(home)).returncode == 0
    args = ("--home", str(home), "--management-port", "0", "--trust-code")
    with running_server(Path("digits:1"), args=args) as srv:
        token = srv.token_file.read_text().strip()
        yield srv, {"Authorization": f"Bearer {token}"}, home


ROUTES = [
    ("GET", "/models", None),
    ("GET", "/models/digits", None),
    ("POST", "/models", b'{"ref": "digits"}'),
    ("PUT", "/models/digits/default", b'{"version": "1"}'),
    ("DELETE", "/models/digits/versions/1", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Basic abc", "Bearer x", "bearer"])
def test_every_route_refuses_a_missing_or_wrong_token(managed, method, path, body, auth):
    srv, _, _ = managed
    headers = {"Content-Type": "application/json"} | ({"Authorization": auth} if auth else {})
    r = httpx.request(method, srv.management_url + path, content=body, headers=headers)
    assert r.status_code == 401
    assert r.json()["code"] == "unauthorized"
    assert "bearer token" in r.json()["error"]
    assert r.headers["www-authenticate"] == "Bearer"


def test_token_file_is_private_and_the_api_is_loopback_only(managed):
    srv, _, home = managed
    mode = stat.S_IMODE(os.stat(srv.token_file).st_mode)
    assert mode == 0o600
    assert srv.token_file.parent == home
    assert srv.management_url.startswith("http://127.0.0.1:")
    assert srv.management_url != srv.url


def test_list_describe_register_default_unregister(managed, example_images):
    srv, auth, _ = managed
    api = srv.management_url
    assert httpx.get(f"{api}/models", headers=auth).json() == {
        "models": ["digits"], "total": 1, "next_offset": None,
    }  # fmt: skip
    described = httpx.get(f"{api}/models/digits", headers=auth).json()
    assert described.get("default_version") == "1", described
    [v1] = described["versions"]
    assert (v1["version"], v1["runtime"], v1["instances"], v1["status"]) == (
        "1",
        "torch",
        1,
        "ready",
    )
    assert v1["queue_depth"] == 0
    # Register version 2 of the registry (the ONNX export) next to the running version 1.
    r = httpx.post(f"{api}/models", json={"ref": "digits:2"}, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["loaded"] == "2"
    assert r.json()["default_version"] == "1"  # a pinned version does not take the default
    runtimes = {v["version"]: v["runtime"] for v in r.json()["versions"]}
    assert runtimes == {"1": "torch", "2": "onnx"}
    r = httpx.put(f"{api}/models/digits/default", json={"version": "2"}, headers=auth)
    assert r.json()["default_version"] == "2"
    answer = httpx.post(
        f"{srv.url}/v1/models/digits:predict", content=example_images["2"], headers=PNG
    )
    assert answer.headers["x-model-version"] == "2"
    assert answer.json()["predictions"][0]["label"] == "2"
    # Unload it: the default falls back to version 1, which keeps answering.
    r = httpx.delete(f"{api}/models/digits/versions/2", headers=auth)
    assert r.json() == {"unloaded": "digits:2"}
    answer = httpx.post(
        f"{srv.url}/v1/models/digits:predict", content=example_images["2"], headers=PNG
    )
    assert answer.headers["x-model-version"] == "1"
    assert httpx.get(f"{api}/models/digits", headers=auth).json()["default_version"] == "1"


def test_upload_an_archive(managed, onnx_archive, example_images):
    srv, auth, _ = managed
    r = httpx.post(
        f"{srv.management_url}/models", content=Path(onnx_archive).read_bytes(),
        headers=auth | {"Content-Type": "application/octet-stream"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    version = r.json()["loaded"]
    answer = httpx.post(
        f"{srv.url}/v1/models/digits/versions/{version}:predict",
        content=example_images["8"],
        headers=PNG,
    )
    assert answer.json()["predictions"][0]["label"] == "8"
    httpx.delete(
        f"{srv.management_url}/models/digits/versions/{version}", headers=auth
    ).raise_for_status()


@pytest.mark.parametrize(
    ("method", "path", "body", "ctype", "status", "fragment"),
    [
        ("GET", "/models/nope", None, None, 404, "'nope' is not loaded"),
        ("GET", "/models?limit=0", None, None, 400, "limit must be an integer"),
        ("GET", "/models?offset=x", None, None, 400, "offset must be an integer"),
        ("POST", "/models", b'{"ref": ""}', "application/json", 400, "ref must be"),
        ("POST", "/models", b"[1]", "application/json", 400, "JSON object"),
        ("POST", "/models", b"{", "application/json", 400, "not valid JSON"),
        ("POST", "/models", b'{"ref": "ghost"}', "application/json", 404, "not in the registry"),
        ("POST", "/models", b"not a zip", "application/octet-stream", 400, "not a zip file"),
        ("POST", "/models", b"x", "text/plain", 415, "application/json"),
        ("PUT", "/models/digits/default", b'{"version": 3}', "application/json", 400,
         "version must be"),
        ("PUT", "/models/digits/default", b'{"version": "9"}', "application/json", 404,
         "no version '9'"),
        ("DELETE", "/models/digits/versions/9", None, None, 404, "no version '9'"),
    ],
)  # fmt: skip
def test_bad_management_requests(managed, method, path, body, ctype, status, fragment):
    srv, auth, _ = managed
    headers = auth | ({"Content-Type": ctype} if ctype else {})
    r = httpx.request(method, srv.management_url + path, content=body, headers=headers)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


def test_management_on_a_public_address_needs_the_flag(tmp_path, digits_archive):
    result = mh(
        "serve", str(digits_archive), "--port", "0", "--management-host", "0.0.0.0",
        "--management-port", "0", "--home", str(tmp_path), timeout_s=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "refusing to expose the management API on 0.0.0.0" in result.stderr


async def test_unregister_finishes_accepted_requests_first(tmp_path):
    import asyncio

    from modelhost.archive.manifest import Batching
    from support.archives import slow_archive

    archive = slow_archive(tmp_path, delay_s=0.3, batching=Batching(max_batch_size=1))
    args = ("--home", str(tmp_path / "home"), "--management-port", "0", "--trust-code")
    with running_server(archive, args=args) as srv:
        auth = {"Authorization": f"Bearer {srv.token_file.read_text().strip()}"}
        async with httpx.AsyncClient(timeout=30) as client:
            calls = [
                asyncio.create_task(
                    client.post(f"{srv.url}/v1/models/slow:predict", json={"instances": [[i] * 4]})
                )
                for i in range(4)
            ]
            # all four accepted (queued or computing) before the unload starts
            await asyncio.to_thread(
                srv.wait_for_metric, "modelhost_in_flight_requests", 4.0, model="slow"
            )
            gone = await client.delete(f"{srv.management_url}/models/slow/versions/1", headers=auth)
            answers = await asyncio.gather(*calls)
        assert gone.status_code == 200
        assert [a.status_code for a in answers] == [200] * 4
        assert sorted(a.json()["predictions"][0][0] for a in answers) == [0.0, 2.0, 4.0, 6.0]
        after = httpx.post(f"{srv.url}/v1/models/slow:predict", json={"instances": [[1] * 4]})
        assert after.status_code == 404


def test_the_inference_port_can_require_a_token(digits_archive, example_images, tmp_path):
    from modelhost.client import Client
    from modelhost.errors import Unauthorized

    env = {"MODELHOST_INFERENCE_TOKEN": "s3cret-inference"}
    args = ("--home", str(tmp_path), "--trust-code")
    with running_server(digits_archive, env=env, args=args) as srv:
        assert httpx.get(f"{srv.url}/v2/health/ready").status_code == 200  # probes stay open
        r = httpx.post(
            f"{srv.url}/v1/models/digits:predict", content=example_images["1"], headers=PNG
        )
        assert r.status_code == 401
        assert r.json()["code"] == "unauthorized"
        assert httpx.get(f"{srv.url}/metrics").status_code == 401
        with Client(srv.url, token="wrong") as client, pytest.raises(Unauthorized):
            client.predict_image("digits", example_images["1"])
        with Client(srv.url, token="s3cret-inference") as client:
            assert (
                client.predict_image("digits", example_images["1"])["predictions"][0]["label"]
                == "1"
            )
