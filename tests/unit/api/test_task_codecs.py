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


def test_one_codec_per_version_built_once():
    codecs = TaskCodecs(DecodeLimits(max_items=7))
    info = _info(labels=("a", "b", "c"), task="classification")
    codec = codecs.of(info)
    assert codecs.of(info) is codec
    assert codec.answer_kind == "classification"
    assert codec.labels == ("a", "b", "c")
    assert codec.limits.max_items == 7
    assert codecs.of(_info(version="2")) is not codec
    assert codecs.of(_info(sha256="b" * 64)) is not codec


def test_a_version_loaded_again_gets_a_new_codec():
    codecs = TaskCodecs(DecodeLimits())
    assert codecs.of(_info(task="regression")).answer_kind == "rows"
    # Same name, version and digest, loaded again: new signature objects, a new codec.
    assert codecs.of(_info(task="classification")).answer_kind == "classification"


def test_the_least_recently_used_codec_is_dropped_past_the_bound():
    codecs = TaskCodecs(DecodeLimits(), max_versions=2)
    one, two = _info(version="1"), _info(version="2")
    first = codecs.of(one)
    codecs.of(two)
    assert codecs.of(one) is first  # used again: now two is the oldest
    codecs.of(_info(version="3"))
    assert codecs.of(one) is first
    assert len(codecs._codecs) == 2
