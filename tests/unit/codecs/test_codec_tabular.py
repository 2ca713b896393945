"""The tabular codec: JSON records, CSV and v2 per-feature tensors give the same matrix in
the manifest's feature order; every wrong name, value or shape is a 4xx naming it."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelhost.archive.manifest import ModelSpec, TabularPreprocessing, TensorSignature
from modelhost.codecs.limits import DecodeLimits
from modelhost.codecs.steps import finish
from modelhost.codecs.task import TaskCodec
from modelhost.errors import ArchiveError, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from modelhost.types import TensorSpec

FEATURES = ("income", "debt_to_income", "late_payments")
INPUT = TensorSpec("features", "float32", (-1, 3))
OUTPUT = TensorSpec("probabilities", "float32", (-1, 2))
ROWS = [[52000.0, 0.25, 1.0], [31000.0, 0.6, 3.0]]
DEFAULT_LIMITS = DecodeLimits()


def _codec(limits: DecodeLimits = DEFAULT_LIMITS, inputs=(INPUT,)) -> TaskCodec:
    spec = ModelSpec(
        runtime="onnx", task="classification", labels=("default", "repaid"),
        inputs=tuple(TensorSignature(name=s.name, dtype="float32", shape=s.shape) for s in inputs),
        outputs=(TensorSignature(name="probabilities", dtype="float32", shape=(-1, 2)),),
        preprocessing=TabularPreprocessing(features=FEATURES),
    )  # fmt: skip
    return TaskCodec.for_manifest(spec, inputs, (OUTPUT,), limits)


def _records(rows=ROWS, order=FEATURES) -> bytes:
    return orjson.dumps({"instances": [
        {name: row[FEATURES.index(name)] for name in order} for row in rows
    ]})  # fmt: skip


def _csv(rows=ROWS, order=FEATURES) -> bytes:
    lines = [",".join(order)] + [
        ",".join(repr(row[FEATURES.index(n)]) for n in order) for row in rows
    ]
    return ("\n".join(lines) + "\n").encode()


def _v2(rows=ROWS, names=FEATURES) -> bytes:
    return orjson.dumps({"inputs": [
        {"name": n, "datatype": "FP32", "shape": [len(rows)],
         "data": [row[FEATURES.index(n)] for row in rows]} for n in names
    ]})  # fmt: skip


def _matrix(body: bytes, kind: str = "application/json") -> np.ndarray:
    return finish(_codec().decode(body, kind))["features"]


def test_records_csv_and_v2_give_the_matrix_in_the_manifests_order_whatever_theirs():
    expected = np.array(ROWS, np.float32)
    shuffled = ("late_payments", "income", "debt_to_income")
    bodies = [(_records(), "application/json"), (_records(order=shuffled), "application/json"),
              (_csv(), "text/csv"), (_csv(order=shuffled), "text/csv")]  # fmt: skip
    for body, kind in bodies:
        got = _matrix(body, kind)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)
    v2 = finish(_codec().decode_tensors(_v2(names=shuffled), None))
    np.testing.assert_array_equal(v2.inputs["features"], expected)
    assert [s.name for s in _codec().wire_inputs] == list(FEATURES)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"income": 1, "debt_to_income": 0.1}, r"instances\[1\] lacks the features 'late_"),
        ({**dict.fromkeys(FEATURES, 1), "age": 3}, r"instances\[1\] names unknown features 'age'"),
        ({"incоme": 1, "debt_to_income": 0.1, "late_payments": 0},  # Cyrillic о
         r"unknown features 'incоme' \(non-ASCII: U\+043E\)"),
        ({**dict.fromkeys(FEATURES, 1), "income": True},
         r"instances\[1\]\.income must be a number, not a boolean"),
        ({**dict.fromkeys(FEATURES, 1), "income": "52000"}, "not a string '52000'"),
        ({**dict.fromkeys(FEATURES, 1), "income": None}, "not null"),
        ({**dict.fromkeys(FEATURES, 1), "income": [1]}, "not a list"),
        ({**dict.fromkeys(FEATURES, 1), "income": {"v": 1}}, "not an object"),
        ([1, 2, 3], r"instances\[1\] must be an object of the features"),
        ("income=1", r"instances\[1\] must be an object"),
    ],
)  # fmt: skip
def test_every_bad_record_is_a_400_naming_the_row_and_feature(record, message):
    good = dict(zip(FEATURES, ROWS[0], strict=True))
    body = orjson.dumps({"instances": [good, record]})
    with pytest.raises(InvalidInput, match=message):
        _matrix(body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"income,debt_to_income\n1,2\n", "lacks the features 'late_payments'"),
        (b"income,debt_to_income,late_payments,age\n1,2,3,4\n", "unknown features 'age'"),
        (b"income,income,late_payments\n1,2,3\n", "names 'income' twice"),
        (b"income,debt_to_income,late_payments\n1,2\n", "row 1 has 2 cells"),
        (b"income,debt_to_income,late_payments\n1,x,3\n", r"row 1, column 'debt_to_income': 'x'"),
        ("income,debt_to_income,late_payments\n١٢,1,1\n".encode(), "'١٢' is not a number"),
        (b"income,debt_to_income,late_payments\n1_000,1,1\n", "'1_000' is not a number"),
        (b"income,debt_to_income,late_payments\n", "needs a header row"),
        (b"", "needs a header row"),
        (b"income,debt_to_income,late_payments\n\xff,1,1\n", "not UTF-8"),
        (b'income,debt_to_income,late_payments\n"1,2,3\n', "malformed"),
    ],
)  # fmt: skip
def test_every_bad_csv_is_a_400_naming_the_row_or_column(body, message):
    with pytest.raises(InvalidInput, match=message):
        _matrix(body, "text/csv")


def test_a_csv_with_a_bom_and_blank_lines_reads_as_written():
    body = "\ufeff" + _csv().decode().replace("\n", "\r\n\r\n")
    np.testing.assert_array_equal(_matrix(body.encode(), "text/csv"), np.array(ROWS, np.float32))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_v2(names=FEATURES[:2]), "lacks the features 'late_payments'"),
        (_v2()[:-2] + b',{"name":"age","datatype":"FP32","shape":[2],"data":[1,2]}]}',
         "the model takes 3"),
        (orjson.dumps({"inputs": [
            {"name": n, "datatype": "FP32", "shape": [2 if n != "income" else 1],
             "data": [1.0] * (2 if n != "income" else 1)} for n in FEATURES
        ]}), "differ in length"),
        (orjson.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 3],
                                   "data": [1, 2, 3]}]}), "not an input of the model"),
    ],
)  # fmt: skip
def test_v2_requests_send_one_tensor_per_feature(body, message):
    with pytest.raises(InvalidInput, match=message):
        finish(_codec().decode_tensors(body, None))


def test_limits_bound_rows_and_cells_before_converting():
    tight = _codec(DecodeLimits(max_items=1))
    with pytest.raises(PayloadTooLarge, match="max_request_items"):
        finish(tight.decode(_records(), "application/json"))
    with pytest.raises(PayloadTooLarge, match="max_request_items"):
        finish(tight.decode(_csv(), "text/csv"))


def test_csv_is_for_tabular_models_only_and_a_tabular_model_takes_one_matrix():
    plain = TaskCodec.for_manifest(
        ModelSpec(runtime="onnx",
                  inputs=(TensorSignature(name="x", dtype="float32", shape=(-1, 3)),),
                  outputs=(TensorSignature(name="y", dtype="float32", shape=(-1, 2)),)),
        (TensorSpec("x", "float32", (-1, 3)),), (OUTPUT,),
    )  # fmt: skip
    with pytest.raises(UnsupportedMediaType, match="'text/csv' is for tabular models"):
        finish(plain.decode(_csv(), "text/csv"))
    with pytest.raises(ArchiveError, match=r"one input of shape \[-1, 3\]"):
        _codec(inputs=(TensorSpec("features", "float32", (-1, 4)),))


@given(st.binary(max_size=300))
def test_any_csv_body_is_a_matrix_or_a_4xx(body):
    try:
        got = _matrix(b"income,debt_to_income,late_payments\n" + body, "text/csv")
    except (InvalidInput, PayloadTooLarge):
        return
    assert got.shape[1] == 3
    assert got.dtype == np.float32


@given(
    st.lists(
        st.dictionaries(
            st.sampled_from([*FEATURES, "x", "İncome"]),
            st.one_of(
                st.floats(width=32),
                st.integers(-(2**63), 2**63 - 1),
                st.text(),
                st.none(),
                st.booleans(),
            ),
            max_size=5,
        ),
        max_size=5,
    )
)
def test_any_records_are_a_matrix_or_a_4xx(records):  # fmt: skip
    try:
        got = _matrix(orjson.dumps({"instances": records}))
    except (InvalidInput, PayloadTooLarge):
        return
    assert got.shape == (len(records), 3)
