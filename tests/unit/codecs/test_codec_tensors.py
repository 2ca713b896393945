"""json_to_array and check_element_count, as tables."""

import numpy as np
import pytest

from modelhost.codecs.tensors import check_element_count, json_to_array
from modelhost.errors import InvalidInput


@pytest.mark.parametrize(
    ("data", "dtype", "expected"),
    [
        ([1, 2], "float32", [1.0, 2.0]),
        ([1.5, -2.25], "float32", [1.5, -2.25]),
        ([[1, 2], [3, 4]], "float64", [[1.0, 2.0], [3.0, 4.0]]),
        ([1], "float16", [1.0]),
        ([[1, 2], [3, 4]], "int64", [[1, 2], [3, 4]]),
        ([0, 255], "uint8", [0, 255]),
        ([-128, 127], "int8", [-128, 127]),
        ([-(2**31), 2**31 - 1], "int32", [-(2**31), 2**31 - 1]),
        ([0, 65535], "uint16", [0, 65535]),
        ([2**63, 2**64 - 1], "uint64", [2**63, 2**64 - 1]),
        ([-(2**63), 2**63 - 1], "int64", [-(2**63), 2**63 - 1]),
        ([True, False], "bool", [True, False]),
        ([], "float32", []),
        (7, "float32", 7.0),
        ([[[1]]], "int16", [[[1]]]),
    ],
)
def test_json_to_array_accepts(data, dtype, expected):
    arr = json_to_array(data, np.dtype(dtype), "inputs[0].data")
    assert arr.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(arr, np.array(expected, dtype=dtype))
    assert arr.shape == np.shape(expected)


@pytest.mark.parametrize(
    ("data", "dtype", "message"),
    [
        ([256], "uint8", "values out of range for uint8"),
        ([-1], "uint8", "values out of range for uint8"),
        ([-1], "uint64", "values out of range for uint64"),
        ([-129], "int8", "values out of range for int8"),
        ([2**31], "int32", "values out of range for int32"),
        ([65536], "uint16", "values out of range for uint16"),
        ([2**63, 2**63], "int64", "values out of range for int64"),
        ([2**64], "uint64", "inputs[0].data: holds"),
        ([1.5], "int64", "holds float64 values; expected integers"),
        ([1.0], "int32", "holds float64 values; expected integers"),
        ([1, 2.5], "uint8", "holds float64 values; expected non-negative integers"),
        ([True], "int64", "holds bool values; expected integers"),
        ([True], "float32", "holds bool values; expected numbers"),
        ([1], "bool", "holds int64 values; expected booleans"),
        ([0.0], "bool", "holds float64 values; expected booleans"),
        (["1"], "float32", "holds strings or nulls; expected numbers"),
        ([None], "float32", "holds strings or nulls"),
        ([1, None], "int64", "holds strings or nulls"),
        ([{"a": 1}], "float32", "holds strings or nulls"),
        ("abc", "float32", "holds strings or nulls"),
        ([[1, 2], [3]], "float32", "lists are ragged"),
        ([[1, 2], 3], "int64", "lists are ragged"),
    ],
)
def test_json_to_array_refuses(data, dtype, message):
    with pytest.raises(InvalidInput) as info:
        json_to_array(data, np.dtype(dtype), "inputs[0].data")
    assert str(info.value).startswith("inputs[0].data: ")
    assert message in str(info.value)


def test_json_to_array_accepts_large_uint64_values_mixed_with_small_ones():
    arr = json_to_array([2**63 + 1, 1], np.dtype("uint64"), "inputs[0].data")
    np.testing.assert_array_equal(arr, np.array([2**63 + 1, 1], dtype=np.uint64))


@pytest.mark.parametrize("dtype", ["int64", "bool"])
def test_json_to_array_accepts_an_empty_list_for_any_dtype(dtype):
    arr = json_to_array([], np.dtype(dtype), "inputs[0].data")
    assert arr.dtype == np.dtype(dtype)
    assert arr.shape == (0,)


@pytest.mark.parametrize(
    ("data", "shape", "expected_shape"),
    [
        ([1, 2, 3, 4], [2, 2], (2, 2)),
        ([[1, 2], [3, 4]], [4], (4,)),
        ([[1, 2], [3, 4]], [2, 2], (2, 2)),
        ([[1, 2, 3], [4, 5, 6]], [3, 2], (3, 2)),
        ([5], [], ()),
        (5, [], ()),
        ([], [0, 3], (0, 3)),
        ([1, 2, 3, 4, 5, 6], [1, 2, 3], (1, 2, 3)),
    ],
)
def test_check_element_count_reshapes(data, shape, expected_shape):
    arr = np.asarray(data, dtype=np.float32)
    out = check_element_count(arr, shape, "inputs[0].data")
    assert out.shape == expected_shape
    np.testing.assert_array_equal(out.reshape(-1), arr.reshape(-1))


@pytest.mark.parametrize(
    ("data", "shape", "message"),
    [
        ([1, 2, 3, 4], [3], "data has 4 elements but shape [3] needs 3"),
        ([1, 2, 3], [2, 2], "data has 3 elements but shape [2, 2] needs 4"),
        ([1, 2], [], "data has 2 elements but shape [] needs 1"),
        ([], [1], "data has 0 elements but shape [1] needs 1"),
        ([1], [0], "data has 1 elements but shape [0] needs 0"),
    ],
)
def test_check_element_count_refuses(data, shape, message):
    with pytest.raises(InvalidInput) as info:
        check_element_count(np.asarray(data, dtype=np.float32), shape, "inputs[0].data")
    assert str(info.value) == f"inputs[0].data: {message}"


def test_check_element_count_refuses_a_shape_whose_product_overflows():
    with pytest.raises(InvalidInput, match="inputs"):
        check_element_count(np.zeros(0, np.float32), [2**62, 4], "inputs[0].data")
