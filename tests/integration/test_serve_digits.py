"""The whole path over real HTTP: trained digits archive -> modelhost serve -> clients."""

from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelhost.client import AsyncClient, Client
from modelhost.errors import InvalidInput, ModelNotFound
from modelhost.train.data import load_digits_split
from support.cli import mh
from support.paths import EXAMPLE_IMAGES

pytestmark = pytest.mark.slow


def test_server_prints_model_line_and_url(server) -> None:
    text = "".join(server.output)
    assert "loaded digits:1" in text
    assert "runtime=torch" in text
    assert "device=cpu" in text
    assert "warm-up" in text
    assert server.url.startswith("http://127.0.0.1:")


def test_example_images_are_classified_right_with_curl_shape(server, example_images) -> None:
    for label, png in example_images.items():
        r = httpx.post(
            f"{server.url}/v1/models/digits:predict",
            content=png,
            headers={"Content-Type": "image/png"},
        )
        assert r.status_code == 200, r.text
        (pred,) = r.json()["predictions"]
        assert pred["label"] == label
        assert 0.5 < pred["score"] <= 1.0
        assert pred["top_k"][0]["label"] == label
        assert len(pred["top_k"]) == 3
        assert r.headers["x-model-version"] == "1"


def test_versioned_route_and_jpeg(server, example_images) -> None:
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.open(BytesIO(example_images["3"])).resize((56, 56)).save(buf, format="JPEG", quality=95)
    r = httpx.post(
        f"{server.url}/v1/models/digits/versions/1:predict",
        content=buf.getvalue(),
        headers={"Content-Type": "image/jpeg"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["label"] == "3"


def test_json_instances_and_b64_instances(server, example_images) -> None:
    split = load_digits_split(seed=0)
    x, y = split.x_test[:5], split.y_test[:5]
    with Client(server.url) as client:
        answer = client.predict_instances("digits", x.tolist())
        labels = [p["label"] for p in answer["predictions"]]
        assert labels == [str(v) for v in y]
        b64 = [{"b64": base64.b64encode(example_images[k]).decode()} for k in ("1", "8")]
        answer = client.predict_instances("digits", b64)
        assert [p["label"] for p in answer["predictions"]] == ["1", "8"]


def test_cli_predict_prints_the_digit(server) -> None:
    result = mh(
        "predict", "--url", server.url, "--model", "digits",
        str(EXAMPLE_IMAGES / "digit_7.png"), str(EXAMPLE_IMAGES / "digit_2.png"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split(": ")[1].startswith("7 ")
    assert lines[1].split(": ")[1].startswith("2 ")


def test_cli_predict_unknown_model_is_one_clear_line(server) -> None:
    result = mh(
        "predict", "--url", server.url, "--model", "nope", str(EXAMPLE_IMAGES / "digit_7.png")
    )
    assert result.returncode == 1
    assert "model 'nope' is not loaded" in result.stderr
    assert "Traceback" not in result.stderr


def test_kserve_v2_health_metadata_and_ready(server) -> None:
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    for path in ("/v2", "/v2/"):
        meta = httpx.get(server.url + path).json()
        assert meta["name"] == "modelhost"
        assert meta["extensions"] == ["binary_tensor_data", "classification"]
    for path in ("/v2/models/digits", "/v2/models/digits/versions/1"):
        meta = httpx.get(server.url + path).json()
        assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
        assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
        assert meta["platform"] == "pytorch_eager"
        assert meta["versions"] == ["1"]
    assert httpx.get(f"{server.url}/v2/models/digits/ready").json()["ready"] is True
    assert httpx.get(f"{server.url}/v2/models/digits/versions/1/ready").status_code == 200
    r = httpx.get(f"{server.url}/v2/models/nope/ready")
    assert r.status_code == 404
    assert "nope" in r.json()["error"]
    assert httpx.get(f"{server.url}/v2/models/digits/versions/9").status_code == 404


def test_kserve_v2_infer_nested_and_flat_agree(server) -> None:
    x = load_digits_split(seed=0).x_test[:2]
    base = {"name": "image", "shape": [2, 1, 28, 28], "datatype": "FP32"}
    with Client(server.url) as client:
        nested = client.infer_v2("digits", {"id": "r1", "inputs": [{**base, "data": x.tolist()}]})
        flat = client.infer_v2(
            "digits", {"inputs": [{**base, "data": x.reshape(-1).tolist()}]}, version="1"
        )
    assert nested["id"] == "r1"
    assert "id" not in flat
    assert nested["model_name"] == "digits"
    assert nested["model_version"] == "1"
    (out,) = nested["outputs"]
    assert out["name"] == "logits"
    assert out["shape"] == [2, 10]
    assert out["data"] == flat["outputs"][0]["data"]
    logits = np.array(out["data"]).reshape(2, 10)
    assert logits.argmax(1).tolist() == load_digits_split(seed=0).y_test[:2].tolist()


def test_kserve_v2_binary_tensors_round_trip(server) -> None:
    import orjson

    x = load_digits_split(seed=0).x_test[:3]
    head = orjson.dumps(
        {
            "inputs": [
                {"name": "image", "shape": [3, 1, 28, 28], "datatype": "FP32",
                 "parameters": {"binary_data_size": x.nbytes}}
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    )  # fmt: skip
    r = httpx.post(
        f"{server.url}/v2/models/digits/infer",
        content=head + x.tobytes(),
        headers={
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(head)),
        },
    )
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    doc = orjson.loads(r.content[:n])
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == 3 * 10 * 4
    logits = np.frombuffer(r.content[n:], dtype="<f4").reshape(3, 10)
    assert logits.argmax(1).tolist() == load_digits_split(seed=0).y_test[:3].tolist()


def test_client_reraises_server_errors(server) -> None:
    with Client(server.url) as client:
        with pytest.raises(ModelNotFound, match="nope"):
            client.predict_image("nope", b"x")
        with pytest.raises(InvalidInput, match="not a decodable"):
            client.predict_image("digits", b"not an image")


async def test_async_client_and_batches_form_under_concurrent_load(server, example_images) -> None:
    count_before = server.metric("modelhost_batch_size_count", model="digits")
    sum_before = server.metric("modelhost_batch_size_sum", model="digits")
    async with AsyncClient(server.url) as client:
        answers = await asyncio.gather(
            *(client.predict_image("digits", example_images[str(i % 10)]) for i in range(200))
        )
    assert [a["predictions"][0]["label"] for a in answers] == [str(i % 10) for i in range(200)]
    batches = server.metric("modelhost_batch_size_count", model="digits") - count_before
    items = server.metric("modelhost_batch_size_sum", model="digits") - sum_before
    assert items == 200
    assert batches < items, "no request was batched with another"
    assert items / batches > 1.5


def test_metrics_parse_and_count_requests(server, example_images) -> None:
    def ok_count() -> float:
        return server.metric(
            "modelhost_inference_requests_total", model="digits", code="200", protocol="native"
        )

    before = ok_count()
    for _ in range(3):
        httpx.post(
            f"{server.url}/v1/models/digits:predict",
            content=example_images["5"],
            headers={"Content-Type": "image/png"},
        ).raise_for_status()
    assert ok_count() == before + 3
    r = httpx.get(f"{server.url}/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name, kind in [
        ("modelhost_inference_requests", "counter"),
        ("modelhost_request_duration_seconds", "histogram"),
        ("modelhost_queue_duration_seconds", "histogram"),
        ("modelhost_batch_size", "histogram"),
        ("modelhost_pending_requests", "gauge"),
        ("modelhost_in_flight_requests", "gauge"),
    ]:
        assert families[name].type == kind
    om = httpx.get(f"{server.url}/metrics", headers={"Accept": "application/openmetrics-text"})
    assert om.text.rstrip().endswith("# EOF")


def test_list_and_describe_models(server) -> None:
    assert httpx.get(f"{server.url}/v1/models").json()["models"] == ["digits"]
    described = httpx.get(f"{server.url}/v1/models/digits").json()
    created = described.pop("created")
    assert isinstance(created, int)
    assert described == {"name": "digits", "ready": True, "default_version": "1", "versions": ["1"],
                         "id": "digits", "object": "model", "owned_by": "modelhost"}  # fmt: skip
