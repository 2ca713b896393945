"""v1 and v2 give one model's answer in two shapes, for each runtime: v1 the task's answer
(label, score, top_k), v2 the raw logits, or with ``classification`` the same top k as
Triton's ``"value:index:label"`` strings (checked with the real ``tritonclient``)."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from support.server import ServerProcess, running_server

pytestmark = pytest.mark.slow

RUNTIMES = {"torch": "1", "onnx": "2"}  # the digits archive and its ONNX export
K = 3  # the digits manifest's top_k


@pytest.fixture(scope="module")
def server(digits_archive, onnx_archive) -> ServerProcess:
    with running_server(digits_archive, onnx_archive, args=("--trust-code",)) as srv:
        yield srv


def _pixels(png: bytes) -> np.ndarray:
    """The model's input for one PNG, made here (grayscale, 28 x 28, / 255), not by modelhost."""
    gray = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32) / 255.0
    assert gray.shape == (28, 28)
    return gray.reshape(1, 1, 28, 28)


def _v1(server: ServerProcess, version: str, png: bytes) -> dict:
    r = httpx.post(
        f"{server.url}/v1/models/digits/versions/{version}:predict",
        content=png,
        headers={"Content-Type": "image/png"},
    )
    assert r.status_code == 200, r.text
    (prediction,) = r.json()["predictions"]
    return prediction


def _v2(server: ServerProcess, version: str, x: np.ndarray, **output: object) -> dict:
    body = {
        "inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32",
                    "data": x.reshape(-1).tolist()}],
        "outputs": [{"name": "logits", **output}],
    }  # fmt: skip
    r = httpx.post(f"{server.url}/v2/models/digits/versions/{version}/infer", json=body)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


def _parse(strings: list[str]) -> list[tuple[float, int, str]]:
    parts = [s.split(":") for s in strings]
    return [(float(value), int(index), label) for value, index, label in parts]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_v1_label_and_scores_are_v2_argmax_and_softmax(server, example_images, runtime):
    version = RUNTIMES[runtime]
    for png in example_images.values():
        v1 = _v1(server, version, png)
        out = _v2(server, version, _pixels(png))
        assert (out["datatype"], out["shape"]) == ("FP32", [1, 10])
        logits = np.array(out["data"], dtype=np.float64)
        probs = _softmax(logits)
        assert v1["label"] == str(int(logits.argmax()))
        assert v1["score"] == pytest.approx(probs.max(), rel=1e-5)
        for ranked in v1["top_k"]:
            assert ranked["score"] == pytest.approx(probs[int(ranked["label"])], rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_v2_classification_gives_v1_top_k(server, example_images, runtime):
    version = RUNTIMES[runtime]
    for png in example_images.values():
        v1 = _v1(server, version, png)
        raw = np.array(_v2(server, version, _pixels(png))["data"])
        out = _v2(server, version, _pixels(png), parameters={"classification": K})
        assert (out["datatype"], out["shape"]) == ("BYTES", [1, K])
        top = _parse(out["data"])
        # The label is the class index here (the digits manifest's labels are "0".."9").
        assert [label for _, _, label in top] == [t["label"] for t in v1["top_k"]]
        assert [index for _, index, _ in top] == [int(t["label"]) for t in v1["top_k"]]
        # Values are the raw output, as Triton sends them (6 decimals).
        assert [value for value, _, _ in top] == pytest.approx(
            raw[[i for _, i, _ in top]], abs=1e-6
        )


def test_v2_classification_of_a_batch_ranks_each_row(server, example_images):
    x = np.concatenate([_pixels(example_images[d]) for d in ("3", "8")])
    out = _v2(server, "2", x, parameters={"classification": 2, "binary_data": False})
    assert out["shape"] == [2, 2]
    assert [_parse(out["data"][i : i + 2])[0][2] for i in (0, 2)] == ["3", "8"]
    many = _v2(server, "2", x, parameters={"classification": 50})  # clamped to 10 classes
    assert many["shape"] == [2, 10]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_tritonclient_reads_classification_as_bytes(server, example_images, runtime):
    import tritonclient.http as triton

    version = RUNTIMES[runtime]
    png = example_images["6"]
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert "classification" in client.get_server_metadata()["extensions"]
        image = triton.InferInput("image", [1, 1, 28, 28], "FP32")
        image.set_data_from_numpy(_pixels(png))  # binary, as tritonclient sends by default
        wanted = triton.InferRequestedOutput("logits", class_count=K)  # binary too
        result = client.infer("digits", [image], model_version=version, outputs=[wanted])
    finally:
        client.close()
    classes = result.as_numpy("logits")
    assert classes.shape == (1, K)
    top = _parse([b.decode() for b in classes[0]])
    assert [label for _, _, label in top] == [
        t["label"] for t in _v1(server, version, png)["top_k"]
    ]
    assert top[0][2] == "6"


@pytest.mark.parametrize(
    "value",
    [0, -1, True, False, 2.0, 2.5, "3", None, [3], {"k": 3}],
    ids=repr,
)
def test_a_bad_classification_count_is_a_400_naming_the_field(server, value):
    body = {
        "inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32",
                    "data": [0.5] * 784}],
        "outputs": [{"name": "logits", "parameters": {"classification": value}}],
    }  # fmt: skip
    r = httpx.post(f"{server.url}/v2/models/digits/infer", json=body)
    if value is None:  # JSON null: the parameter is absent
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_input"
    assert "outputs[0].parameters.classification must be an integer >= 1" in r.json()["error"]
