"""outputs_by_name: pairing a model's return value with the manifest's outputs."""

import numpy as np
import pytest

from modelhost.archive.manifest import Manifest, TensorSignature
from modelhost.runtimes.base import outputs_by_name


def _manifest(*names):
    return Manifest(
        runtime="onnx",
        inputs=(TensorSignature(name="x", dtype="float32", shape=(-1, 2)),),
        outputs=tuple(TensorSignature(name=n, dtype="float32", shape=(-1, 2)) for n in names),
        name="m",
        version="1",
        files={},
    )


A, B = np.zeros((1, 2)), np.ones((1, 2))


@pytest.mark.parametrize(
    ("names", "value", "expected"),
    [
        (("y",), A, {"y": A}),
        (("y",), (A,), {"y": A}),
        (("y",), [A], {"y": A}),
        (("y", "z"), (A, B), {"y": A, "z": B}),
        (("y", "z"), [B, A], {"y": B, "z": A}),
        (("y", "z"), {"z": B, "y": A}, {"y": A, "z": B}),
        (("y",), {"y": A, "extra": B}, {"y": A}),
    ],
)
def test_values_are_paired_with_the_manifest_outputs_in_order(names, value, expected):
    paired = outputs_by_name(_manifest(*names), value)
    assert list(paired) == list(expected)
    for name, array in expected.items():
        assert paired[name] is array


@pytest.mark.parametrize(
    ("names", "value", "count"),
    [
        (("y",), (A, B), "2 outputs"),
        (("y",), [], "0 outputs"),
        (("y", "z"), A, "1 output "),
        (("y", "z"), (A,), "1 output "),
        (("y", "z"), (A, B, A), "3 outputs"),
    ],
)
def test_a_wrong_number_of_outputs_is_a_value_error_naming_the_manifest_outputs(
    names, value, count
):
    with pytest.raises(ValueError, match="manifest") as info:
        outputs_by_name(_manifest(*names), value)
    message = str(info.value)
    assert f"model returned {count}" in message
    assert f"lists {len(names)}" in message
    for name in names:
        assert repr(name) in message


@pytest.mark.parametrize(
    ("names", "value", "missing"),
    [
        (("y",), {}, ["'y'"]),
        (("y",), {"Y": A}, ["'y'"]),
        (("y", "z"), {"y": A}, ["'z'"]),
        (("y", "z"), {"a": A, "b": B}, ["'y'", "'z'"]),
    ],
)
def test_a_mapping_without_a_manifest_output_is_a_value_error_not_a_key_error(
    names, value, missing
):
    with pytest.raises(ValueError, match="missing") as info:
        outputs_by_name(_manifest(*names), value)
    assert not isinstance(info.value, KeyError)
    message = str(info.value)
    for name in missing:
        assert name in message
    for key in value:
        assert repr(key) in message
    assert "fix outputs in the model spec" in message
