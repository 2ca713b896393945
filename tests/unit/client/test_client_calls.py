"""The client's pure functions: paths, calls, content types and error bodies -> exceptions."""

from pathlib import Path

import httpx
import pytest

from modelhost import errors
from modelhost.client.http import (
    Call,
    image_content_type,
    infer_v2_call,
    model_path,
    parse,
    predict_image_call,
    predict_instances_call,
)


@pytest.mark.parametrize(
    ("model", "version", "path"),
    [
        ("digits", None, "/v1/models/digits"),
        ("digits", "2", "/v1/models/digits/versions/2"),
        ("a/b", None, "/v1/models/a%2Fb"),
        ("m", "../1", "/v1/models/m/versions/..%2F1"),
        ("m:predict", None, "/v1/models/m%3Apredict"),
        ("sp ace", "v?x#y", "/v1/models/sp%20ace/versions/v%3Fx%23y"),
        ("ünï", None, "/v1/models/%C3%BCn%C3%AF"),
        ("v1.2_rc-3", "1.0", "/v1/models/v1.2_rc-3/versions/1.0"),
    ],
)
def test_model_path_quotes_both_parts(model, version, path):
    assert model_path(model, version) == path


def test_predict_image_call():
    call = predict_image_call("digits", b"\x89PNG", "image/png", None)
    assert call == Call(
        "POST", "/v1/models/digits:predict", content=b"\x89PNG",
        headers={"Content-Type": "image/png"},
    )  # fmt: skip
    assert call.json is None


def test_predict_image_call_with_a_version():
    call = predict_image_call("a/b", b"jpg", "image/jpeg", "7")
    assert call.path == "/v1/models/a%2Fb/versions/7:predict"
    assert call.headers == {"Content-Type": "image/jpeg"}


@pytest.mark.parametrize(
    ("version", "path"),
    [(None, "/v1/models/m:predict"), ("3", "/v1/models/m/versions/3:predict")],
)
def test_predict_instances_call(version, path):
    call = predict_instances_call("m", [[1, 2], [3, 4]], version)
    assert call == Call("POST", path, json={"instances": [[1, 2], [3, 4]]})
    assert call.content is None
    assert call.headers == {}


@pytest.mark.parametrize(
    ("model", "version", "path"),
    [
        ("m", None, "/v2/models/m/infer"),
        ("m", "2", "/v2/models/m/versions/2/infer"),
        ("a b", "x/y", "/v2/models/a%20b/versions/x%2Fy/infer"),
    ],
)
def test_infer_v2_call(model, version, path):
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    call = infer_v2_call(model, body, version)
    assert call == Call("POST", path, json=body)


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("7.png", "image/png"),
        ("dir/IMG.PNG", "image/png"),
        ("a.jpg", "image/jpeg"),
        ("a.JPEG", "image/jpeg"),
        ("a.tar.jpeg", "image/jpeg"),
    ],
)
def test_image_content_type(name, content_type):
    assert image_content_type(Path(name)) == content_type


@pytest.mark.parametrize("name", ["a.gif", "a.webp", "png", "a.png.txt", "a", ".png"])
def test_image_content_type_refuses_other_suffixes(name):
    with pytest.raises(ValueError, match=r"only \.png, \.jpg and \.jpeg") as info:
        image_content_type(Path(name))
    assert name in str(info.value)


# -- parse -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "content", "doc"),
    [(200, b'{"predictions": [1, 2]}', {"predictions": [1, 2]}), (201, b"[1, 2]", [1, 2]),
     (200, b"null", None)],
)  # fmt: skip
def test_parse_returns_the_json_of_a_success(status, content, doc):
    assert parse(httpx.Response(status, content=content)) == doc


SUBCLASSES = [
    cls
    for cls in vars(errors).values()
    if isinstance(cls, type)
    and issubclass(cls, errors.ModelhostError)
    and cls is not errors.ModelhostError
]


@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda cls: cls.__name__)
def test_parse_raises_the_class_of_the_error_code(cls):
    response = httpx.Response(cls.status, json={"error": "it went wrong", "code": cls.code})
    with pytest.raises(cls) as info:
        parse(response)
    assert type(info.value) is cls
    assert info.value.message == "it went wrong"


@pytest.mark.parametrize(("header", "seconds"), [("7", 7.0), ("0.5", 0.5), (None, 1.0)])
def test_parse_overloaded_carries_retry_after(header, seconds):
    headers = {} if header is None else {"Retry-After": header}
    response = httpx.Response(
        503, json={"error": "queue full", "code": "overloaded"}, headers=headers
    )
    with pytest.raises(errors.Overloaded, match="queue full") as info:
        parse(response)
    assert info.value.retry_after_s == seconds


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (
            httpx.Response(404, json={"error": "no route", "code": "not_found"}),
            "HTTP 404: no route",
        ),
        (httpx.Response(500, json={"error": "boom", "code": "internal"}), "HTTP 500: boom"),
        (httpx.Response(418, json={"error": "teapot"}), "HTTP 418: teapot"),
        (httpx.Response(502, text="upstream died"), "HTTP 502: upstream died"),
        (httpx.Response(502), "HTTP 502: Bad Gateway"),
        (httpx.Response(400, json={"code": "invalid_input"}), None),
    ],
    ids=["unknown-code", "internal", "no-code", "text-body", "empty-body", "no-error-field"],
)
def test_parse_unknown_or_missing_codes(response, message):
    with pytest.raises(errors.ModelhostError) as info:
        parse(response)
    if message is None:
        assert type(info.value) is errors.InvalidInput
        assert "invalid_input" in str(info.value)  # falls back to the raw body
    else:
        assert type(info.value) is errors.ModelhostError
        assert str(info.value) == message


@pytest.mark.parametrize("content", [b'["bad gateway"]', b'"bad gateway"', b"null", b"3"])
def test_parse_a_json_error_body_that_is_not_an_object(content):
    with pytest.raises(errors.ModelhostError, match="HTTP 502"):
        parse(httpx.Response(502, content=content))


def test_parse_overloaded_with_an_http_date_retry_after():
    response = httpx.Response(
        503,
        json={"error": "queue full", "code": "overloaded"},
        headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},
    )
    with pytest.raises(errors.Overloaded):
        parse(response)
