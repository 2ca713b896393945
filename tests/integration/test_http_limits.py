"""The HTTP edge under hostile and broken clients, over raw sockets against a real server.

Every refusal is a JSON error naming its setting (or a plain close when nothing was sent), the
server keeps answering afterwards, and nothing it logs is a traceback. Timeouts are set to
0.5 s; a read waits up to 20 s for the server to act, so only "it closed" is asserted, never
how fast.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from support.server import ServerProcess, running_server

pytestmark = pytest.mark.slow

READ_TIMEOUT_S = 20.0
INFER = "/v2/models/digits/infer"


@dataclass
class Answer:
    """What a raw connection got back before the server closed it."""

    raw: bytes

    @property
    def status(self) -> int:
        return int(self.raw.split(b" ", 2)[1])

    @property
    def json(self) -> dict[str, str]:
        return orjson.loads(self.raw.split(b"\r\n\r\n", 1)[1])

    def header(self, name: str) -> str | None:
        head = self.raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        for line in head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name:
                return value.strip()
        return None


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=READ_TIMEOUT_S)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (socket.timeout if it never does)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def exchange(url: str, data: bytes) -> Answer:
    """Send ``data`` (from a thread: the server may answer before it is all sent), then
    read until the server closes the connection."""
    with connect(url) as sock:

        def send() -> None:
            # The server may refuse and close before it has read it all.
            with contextlib.suppress(OSError):
                sock.sendall(data)

        sender = threading.Thread(target=send)
        sender.start()
        try:
            return Answer(read_until_closed(sock))
        finally:
            sender.join()


def request_head(path: str = "/v2/health/live", *lines: bytes, method: bytes = b"GET") -> bytes:
    head = [method + b" " + path.encode() + b" HTTP/1.1", b"Host: test", *lines]
    return b"\r\n".join(head) + b"\r\n\r\n"


def assert_still_answers(srv: ServerProcess) -> None:
    assert httpx.get(f"{srv.url}/v2/health/live", timeout=READ_TIMEOUT_S).status_code == 200


@pytest.fixture(scope="module")
def edge(onnx_archive, tmp_path_factory) -> Iterator[ServerProcess]:
    env = {
        "MODELHOST_HEADER_TIMEOUT_S": "0.5",
        "MODELHOST_BODY_TIMEOUT_S": "0.5",
        "MODELHOST_MAX_CONNECTIONS": "16",
    }
    home = tmp_path_factory.mktemp("edge-home")
    with running_server(onnx_archive, args=("--home", str(home)), env=env) as srv:
        yield srv
    log = "".join(srv.output)
    assert "Traceback" not in log, log


HEAD_32MIB = request_head("/v2/health/live", b"X-Big: " + b"a" * (32 * 1024**2))
OVERSIZED_HEADS = {
    "one 32 MiB header": HEAD_32MIB,
    "10,000 small headers": request_head("/v2/health/live", *[b"X: y"] * 10_000),
    "101 headers": request_head("/v2/health/live", *[b"X-%d: y" % i for i in range(100)]),
    "1 MiB request line": request_head("/v2/health/live?q=" + "a" * 1024**2),
    "two 40 KB headers": request_head("/", b"A: " + b"a" * 40_000, b"B: " + b"b" * 40_000),
    "64 KiB name, no colon": b"GET / HTTP/1.1\r\n" + b"n" * (64 * 1024),
}


@pytest.mark.parametrize("data", OVERSIZED_HEADS.values(), ids=OVERSIZED_HEADS.keys())
def test_oversized_heads_are_refused_with_431(edge, data):
    answer = exchange(edge.url, data)
    assert answer.status == 431
    assert answer.json["code"] == "headers_too_large"
    assert "max_header" in answer.json["error"]
    assert_still_answers(edge)


def test_a_head_just_under_the_limits_is_served(edge):
    head = request_head("/v2/health/live", *[b"X-%d: %s" % (i, b"v" * 500) for i in range(90)])
    assert len(head) < 64 * 1024
    answer = exchange(edge.url, head[:-2] + b"Connection: close\r\n\r\n")
    assert answer.status == 200


STALLED_HEADS = {
    "half a request line": b"GET /v2/hea",
    "a request line only": b"GET /v2/health/live HTTP/1.1\r\n",
    "half the headers": b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\nX-A: b",
    "half a header name": b"POST /v2/models/digits/infer HTTP/1.1\r\nContent-Le",
}


@pytest.mark.parametrize("data", STALLED_HEADS.values(), ids=STALLED_HEADS.keys())
def test_a_stalled_head_is_answered_408_and_closed(edge, data):
    with connect(edge.url) as sock:
        sock.sendall(data)
        answer = Answer(read_until_closed(sock))  # socket.timeout: never closed
    assert answer.status == 408
    assert answer.json["code"] == "request_timeout"
    assert "header_timeout_s" in answer.json["error"]
    assert_still_answers(edge)


@pytest.mark.parametrize("data", [b"", b"\r\n"], ids=["nothing", "an empty line"])
def test_a_connection_that_sends_no_request_is_closed_without_an_answer(edge, data):
    with connect(edge.url) as sock:
        sock.sendall(data)
        assert read_until_closed(sock) == b""


def test_a_head_sent_one_byte_at_a_time_is_cut_off(edge):
    """Slowloris: every byte comes in time, the whole head does not."""
    stop = threading.Event()
    with connect(edge.url) as sock:

        def trickle() -> None:
            for byte in request_head("/v2/health/live", *[b"X: y"] * 50):
                if stop.wait(0.02):  # the pace of the attack, not a synchronization
                    return
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    return

        sender = threading.Thread(target=trickle)
        sender.start()
        try:
            answer = Answer(read_until_closed(sock))
        finally:
            stop.set()
            sender.join()
    assert answer.status == 408


def _infer_head(*lines: bytes) -> bytes:
    return request_head(INFER, b"Content-Type: application/json", *lines, method=b"POST")


STALLED_BODIES = {
    "shorter than Content-Length": _infer_head(b"Content-Length: 100") + b'{"inputs": [',
    "Content-Length, no body": _infer_head(b"Content-Length: 100"),
    "chunked, no last chunk": _infer_head(b"Transfer-Encoding: chunked") + b'5\r\n{"inp\r\n',
    "chunked, half a chunk": _infer_head(b"Transfer-Encoding: chunked") + b'64\r\n{"inp',
    "chunked, nothing": _infer_head(b"Transfer-Encoding: chunked"),
    "100-continue, no body": _infer_head(b"Content-Length: 10", b"Expect: 100-continue"),
}


@pytest.mark.parametrize("data", STALLED_BODIES.values(), ids=STALLED_BODIES.keys())
def test_a_stalled_body_is_answered_408_and_closed(edge, data):
    with connect(edge.url) as sock:
        sock.sendall(data)
        raw = read_until_closed(sock)  # socket.timeout: never closed
    answer = Answer(raw.removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n"))
    assert answer.status == 408
    assert answer.json["code"] == "request_timeout"
    assert "body_timeout_s" in answer.json["error"]
    assert_still_answers(edge)


def test_oversized_trailers_are_refused_with_431(edge):
    chunked = _infer_head(b"Transfer-Encoding: chunked") + b"2\r\n{}\r\n0\r\n"
    answer = exchange(edge.url, chunked + b"X-Trailer: " + b"a" * (32 * 1024**2) + b"\r\n\r\n")
    assert answer.status == 431
    assert "max_header_bytes" in answer.json["error"]
    assert_still_answers(edge)


def test_a_body_in_many_tiny_chunks_is_read_whole(edge):
    body = b" " * 30_000 + b"{}"
    chunks = b"".join(b"1\r\n%s\r\n" % body[i : i + 1] for i in range(len(body)))
    head = _infer_head(b"Transfer-Encoding: chunked", b"Connection: close")
    answer = exchange(edge.url, head + chunks + b"0\r\n\r\n")
    assert answer.status == 400  # read whole, then "{}" is not an inference request
    assert answer.json["code"] == "invalid_input"


BAD_LENGTHS = {
    "unicode digits": "٣".encode(),
    "5000 digits": b"9" * 5000,
    "negative": b"-1",
    "plus sign": b"+5",
    "hex": b"0x10",
    "a list": b"5, 5",
    "empty": b"",
}


@pytest.mark.parametrize("value", BAD_LENGTHS.values(), ids=BAD_LENGTHS.keys())
def test_a_bad_content_length_is_a_4xx(edge, value):
    answer = exchange(edge.url, _infer_head(b"Content-Length: " + value) + b"{}")
    assert 400 <= answer.status < 500, answer.raw
    assert answer.json["code"]
    assert_still_answers(edge)


@pytest.mark.parametrize("second", [b"6", b"5"], ids=["conflicting", "equal"])
def test_duplicated_content_length_is_a_4xx(edge, second):
    head = _infer_head(b"Content-Length: 5", b"Content-Length: " + second)
    answer = exchange(edge.url, head + b"{}   ")
    assert 400 <= answer.status < 500, answer.raw


def test_content_length_with_transfer_encoding_is_refused(edge):
    head = _infer_head(b"Content-Length: 5", b"Transfer-Encoding: chunked")
    answer = exchange(edge.url, head + b"0\r\n\r\n")
    assert 400 <= answer.status < 500, answer.raw


def test_pipelined_requests_are_all_answered(edge):
    one = request_head("/v2/health/live")
    last = request_head("/v2/health/ready", b"Connection: close")
    answer = exchange(edge.url, one * 3 + last)
    assert answer.raw.count(b"HTTP/1.1 200 OK") == 4


def test_an_oversized_pipelined_head_closes_after_the_answer_before_it(edge):
    answer = exchange(edge.url, request_head("/v2/health/live") + HEAD_32MIB)
    assert answer.raw.startswith(b"HTTP/1.1 200 OK")
    assert b"431" not in answer.raw.split(b"\r\n\r\n", 1)[0]
    assert_still_answers(edge)


def test_connections_over_max_connections_are_refused_with_503(edge):
    """16 allowed: 15 kept-alive connections, then the next request is refused."""
    held = []
    try:
        for _ in range(15):
            sock = connect(edge.url)
            held.append(sock)
            sock.sendall(request_head("/v2/health/live"))
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        answer = exchange(edge.url, request_head("/v2/health/live"))
    finally:
        for sock in held:
            sock.close()
    assert answer.status == 503
    assert "max_connections" in answer.json["error"]
    assert answer.header("retry-after") is not None


# --- the in-flight body budget (inference server only) ---------------------------------


@pytest.fixture(scope="module")
def budget_server(onnx_archive, tmp_path_factory) -> Iterator[ServerProcess]:
    env = {"MODELHOST_MAX_INFLIGHT_BODY_BYTES": "4096"}
    home = tmp_path_factory.mktemp("budget-home")
    with running_server(onnx_archive, args=("--home", str(home)), env=env) as srv:
        yield srv
    log = "".join(srv.output)
    assert "Traceback" not in log, log


def _hold_upload(url: str, length: int) -> socket.socket:
    """A connection whose request declared ``length`` bytes and is waiting for them; returns
    once the app has asked for the body ("100 Continue"), so its bytes are reserved."""
    sock = connect(url)
    sock.sendall(_infer_head(b"Content-Length: %d" % length, b"Expect: 100-continue"))
    assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")
    return sock


def _finish_upload(sock: socket.socket, length: int) -> Answer:
    sock.sendall(b" " * (length - 2) + b"{}")
    raw = sock.recv(65536)
    sock.close()
    return Answer(raw)


def test_bodies_over_the_inflight_budget_are_refused_503_then_accepted(budget_server):
    url = budget_server.url
    held = [_hold_upload(url, 1500), _hold_upload(url, 1500)]  # 3000 of 4096 bytes held
    try:
        refused = httpx.post(url + INFER, content=b" " * 1500 + b"{}", timeout=READ_TIMEOUT_S)
        chunked = httpx.post(url + INFER, content=iter([b" " * 1500] * 2), timeout=READ_TIMEOUT_S)
        # "{}" is not a valid inference request: 400 shows the body was read, not refused.
        finished = [_finish_upload(sock, 1500).status for sock in held]
    finally:
        for sock in held:
            sock.close()
    assert refused.status_code == 503
    assert refused.json()["code"] == "overloaded"
    assert "max_inflight_body_bytes" in refused.json()["error"]
    assert int(refused.headers["retry-after"]) >= 1
    assert chunked.status_code == 503  # counted as it streams
    assert finished == [400, 400]
    # Every reservation was released when its answer was sent: the whole budget is free.
    fits = httpx.post(url + INFER, content=b" " * 4000 + b"{}", timeout=READ_TIMEOUT_S)
    assert fits.status_code == 400, fits.text


def test_reservations_of_stalled_bodies_are_released(onnx_archive, tmp_path):
    """Uploads cut off by body_timeout_s give their bytes back: after five 3000-byte
    stalls, a 3000-byte upload still fits the 4096-byte budget."""
    env = {"MODELHOST_MAX_INFLIGHT_BODY_BYTES": "4096", "MODELHOST_BODY_TIMEOUT_S": "0.5"}
    args = ("--home", str(tmp_path / "home"))
    with running_server(onnx_archive, args=args, env=env) as srv:
        for _ in range(5):
            with _hold_upload(srv.url, 3000) as sock:
                sock.sendall(b" " * 100)
                raw = read_until_closed(sock)
            assert Answer(raw).status == 408
            # The app saw the disconnect, and released, before the server could read the
            # next connection: the next upload gets its "100 Continue".
        upload = _hold_upload(srv.url, 3000)
        assert _finish_upload(upload, 3000).status == 400
    log = "".join(srv.output)
    assert "Traceback" not in log, log
