"""TaskCodec: one model version's decoding and answers, as tables, for every task."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import orjson
import pytest
from PIL import Image

from modelhost.archive.manifest import (
    ClassificationPostprocessing,
    ImagePreprocessing,
    ModelSpec,
    TensorSignature,
)
from modelhost.codecs import task as task_module
from modelhost.codecs.limits import DecodeLimits
from modelhost.codecs.steps import Step, finish
from modelhost.codecs.task import TaskCodec
from modelhost.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from modelhost.types import TensorSpec

IMAGE = TensorSpec("image", "float32", (-1, 1, 8, 8))
LOGITS = TensorSpec("logits", "float32", (-1, 4))
PREP = ImagePreprocessing(width=8, height=8, scale=1.0)


def _spec(task="generic", outputs=(LOGITS,), **extra) -> ModelSpec:
    sig = [TensorSignature(name=s.name, dtype=s.dtype, shape=s.shape) for s in outputs]
    return ModelSpec(
        runtime="onnx",
        task=task,
        inputs=(TensorSignature(name="image", dtype="float32", shape=(-1, 1, 8, 8)),),
        outputs=tuple(sig),
        **extra,
    )


DEFAULT_LIMITS = DecodeLimits()
CLASSIFY = ClassificationPostprocessing()


def _codec(task="generic", outputs=(LOGITS,), limits=DEFAULT_LIMITS, **extra) -> TaskCodec:
    return TaskCodec.for_manifest(_spec(task, outputs, **extra), (IMAGE,), outputs, limits)


def _png(width=8, height=8, value=100) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), value).save(buf, format="PNG")
    return buf.getvalue()


def _bomb(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


LOGITS_2 = np.array([[0.0, 3.0, 1.0, -1.0], [2.0, 0.0, 0.0, 5.0]], np.float32)


# -- which answer a manifest gives ---------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "outputs", "extra", "kind"),
    [
        ("classification", (LOGITS,), {}, "classification"),
        ("generic", (LOGITS,), {"postprocessing": CLASSIFY}, "classification"),
        ("embedding", (LOGITS,), {}, "embedding"),
        ("regression", (LOGITS,), {}, "rows"),
        ("generic", (LOGITS,), {}, "rows"),
        ("generic", (LOGITS, TensorSpec("aux", "int64", (-1,))), {}, "named_rows"),
    ],
)  # fmt: skip
def test_the_manifest_chooses_the_answer(task, outputs, extra, kind):
    assert _codec(task, outputs, **extra).answer_kind == kind


def test_a_classifier_answers_labels_scores_and_top_k():
    codec = _codec("classification", labels=("a", "b", "c", "d"),
                   postprocessing=ClassificationPostprocessing(top_k=2))  # fmt: skip
    first, second = codec.answer({"logits": LOGITS_2})
    assert first["label"] == "b"
    assert [t["label"] for t in first["top_k"]] == ["b", "c"]
    assert second["label"] == "d"
    probs = np.exp(LOGITS_2[1]) / np.exp(LOGITS_2[1]).sum()
    assert second["score"] == pytest.approx(probs[3])


def test_a_classification_task_without_postprocessing_answers_labels_by_index():
    (first, _) = _codec("classification").answer({"logits": LOGITS_2})
    assert first["label"] == "1"
    assert len(first["top_k"]) == 3  # the default top_k


def test_an_embedding_model_answers_one_flat_vector_per_instance():
    out = TensorSpec("vec", "float32", (-1, 2, 2))
    vectors = _codec("embedding", (out,)).answer({"vec": LOGITS_2.reshape(2, 2, 2)})
    assert [v.tolist() for v in vectors] == LOGITS_2.tolist()


def test_other_models_answer_rows_or_named_rows():
    rows = _codec("regression").answer({"logits": LOGITS_2})
    assert [r.tolist() for r in rows] == LOGITS_2.tolist()
    aux = TensorSpec("aux", "int64", (-1,))
    named = _codec("generic", (LOGITS, aux)).answer({"logits": LOGITS_2, "aux": np.array([7, 8])})
    assert [r["aux"] for r in named] == [7, 8]
    assert named[1]["logits"].tolist() == LOGITS_2[1].tolist()


# -- v2 tensors: raw, or Triton's classification -------------------------------------------


def test_tensors_are_raw_unless_classification_is_asked():
    codec = _codec("classification", labels=("a", "b", "c", "d"))
    outputs = {"logits": LOGITS_2}
    assert codec.tensors(outputs, {}) is outputs
    ranked = codec.tensors(outputs, {"logits": 2})["logits"]
    assert ranked.dtype == object
    assert ranked.tolist() == [
        [b"3.000000:1:b", b"1.000000:2:c"],
        [b"5.000000:3:d", b"2.000000:0:a"],
    ]


def test_labels_belong_to_the_first_output_only():
    aux = TensorSpec("aux", "int64", (-1, 3))
    codec = _codec("generic", (LOGITS, aux), labels=("a", "b", "c", "d"))
    ranked = codec.tensors({"logits": LOGITS_2, "aux": np.array([[5, 9, 1]] * 2)}, {"aux": 1})
    assert ranked["aux"].tolist() == [[b"9:1"], [b"9:1"]]
    assert ranked["logits"] is not None


# -- decoding: priced steps, limits first -------------------------------------------------


def test_an_image_is_one_step_priced_by_its_pixels_and_bytes():
    png = _png(16, 12, value=40)
    codec = _codec(preprocessing=PREP)
    step = codec.decode(png, "image/png")
    assert isinstance(step, Step)
    assert (step.body_bytes, step.pixels) == (len(png), 16 * 12)
    arrays = finish(step)
    assert arrays["image"].shape == (1, 1, 8, 8)
    np.testing.assert_allclose(arrays["image"], 40, atol=0.5)


def test_a_bomb_is_refused_before_any_pixel_is_decoded(monkeypatch):
    calls: list[object] = []
    monkeypatch.setattr(task_module, "decode_pixels", lambda *a: calls.append(a))
    codec = _codec(preprocessing=PREP, limits=DecodeLimits(max_image_pixels=10_000))
    with pytest.raises(PayloadTooLarge, match=r"body: image of 20000x20000 .*\(max_image_pixels\)"):
        codec.decode(_bomb(20000, 20000), "image/png")
    assert calls == []


def test_json_instances_are_priced_by_their_bytes_and_b64_images_then_by_pixels():
    import base64

    codec = _codec(preprocessing=PREP)
    body = orjson.dumps({"instances": [{"b64": base64.b64encode(_png(20, 10)).decode()}] * 2})
    step = codec.decode(body, "application/json")
    assert (step.body_bytes, step.pixels) == (len(body), 0)
    pixels = step.run()
    assert isinstance(pixels, Step)
    assert (pixels.body_bytes, pixels.pixels) == (0, 2 * 20 * 10)
    assert finish(pixels)["image"].shape == (2, 1, 8, 8)


def test_numeric_instances_need_no_second_step():
    codec = _codec()
    body = orjson.dumps({"instances": np.zeros((3, 1, 8, 8)).tolist()})
    arrays = codec.decode(body, "application/json").run()
    assert isinstance(arrays, dict)
    assert arrays["image"].shape == (3, 1, 8, 8)


def test_v2_tensors_are_priced_by_their_json_part_only():
    codec = _codec()
    raw = np.zeros((2, 1, 8, 8), "<f4").tobytes()
    head = orjson.dumps({"inputs": [{"name": "image", "shape": [2, 1, 8, 8], "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}]})  # fmt: skip
    step = codec.decode_tensors(head + raw, len(head))
    assert step.body_bytes == len(head)
    assert finish(step).inputs["image"].shape == (2, 1, 8, 8)
    assert codec.decode_tensors(head, None).body_bytes == len(head)
    assert codec.decode_tensors(head, 10**9).body_bytes == len(head)


@pytest.mark.parametrize(
    ("content_type", "body", "error", "message"),
    [
        ("text/csv", b"1,2", UnsupportedMediaType, "'text/csv' is for tabular models"),
        ("text/plain", b"1,2", UnsupportedMediaType, "'text/plain' is not accepted"),
        ("", b"{}", UnsupportedMediaType, "'(none)' is not accepted"),
        ("image/png", _png(), InvalidInput, "this model takes no images"),
    ],
)
def test_content_types_the_model_cannot_take_are_refused(content_type, body, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        _codec().decode(body, content_type)


def test_the_image_input_keeps_the_signature_dtype():
    half = TensorSpec("image", "float16", (-1, 1, 8, 8))
    codec = TaskCodec.for_manifest(_spec(preprocessing=PREP), (half,), (LOGITS,))
    assert finish(codec.decode(_png(), "image/png"))["image"].dtype == np.float16
