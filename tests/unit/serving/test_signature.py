"""check_inputs and shape_matches, as tables."""

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from modelhost.errors import InvalidInput
from modelhost.serving.dataplane import CHECK_INLINE_BYTES, checked
from modelhost.serving.signature import check_inputs, shape_matches
from modelhost.types import TensorSpec

X = TensorSpec("x", "float32", (-1, 2))
IDS = TensorSpec("ids", "int64", (-1,))
IMAGE = TensorSpec("image", "float32", (-1, 1, 4, 4))


@pytest.mark.parametrize(
    ("shape", "spec", "matches"),
    [
        ((3, 2), (-1, 2), True),
        ((1, 2), (1, 2), True),
        ((5,), (-1,), True),
        ((2, 7, 9), (-1, -1, -1), True),
        ((), (), True),
        ((3, 3), (-1, 2), False),
        ((3,), (-1, 2), False),
        ((3, 2, 1), (-1, 2), False),
        ((2, 2), (1, 2), False),
        ((0, 2), (-1, 2), True),
        ((3, 2), (), False),
    ],
)
def test_shape_matches(shape, spec, matches):
    assert shape_matches(shape, spec) is matches


@pytest.mark.parametrize(
    ("inputs", "specs", "batch"),
    [
        ({"x": np.zeros((3, 2), np.float32)}, (X,), 3),
        ({"ids": np.arange(5)}, (IDS,), 5),
        ({"x": np.zeros((2, 2), np.float32), "ids": np.arange(2)}, (X, IDS), 2),
        ({"ids": np.arange(2), "x": np.zeros((2, 2), np.float32)}, (X, IDS), 2),
        ({"image": np.ones((1, 1, 4, 4), np.float32)}, (IMAGE,), 1),
    ],
)
def test_check_inputs_returns_the_batch_size(inputs, specs, batch):
    assert check_inputs(inputs, specs) == batch


@pytest.mark.parametrize(
    ("inputs", "specs", "message"),
    [
        ({"z": np.zeros((1, 2), np.float32)}, (X,), "unknown input 'z'; the model takes ['x']"),
        (
            {"x": np.zeros((1, 2), np.float32), "z": np.zeros(1)},
            (X,),
            "unknown input 'z'",
        ),
        ({}, (X,), "input 'x' is missing; the model takes ['x']"),
        ({"x": np.zeros((1, 2), np.float32)}, (X, IDS), "input 'ids' is missing"),
        ({"x": np.zeros((1, 2), np.float64)}, (X,), "input 'x' has dtype float64; the signature"),
        ({"ids": np.zeros(1, np.int32)}, (IDS,), "input 'ids' has dtype int32"),
        ({"x": np.zeros((1, 3), np.float32)}, (X,), "input 'x' has shape [1, 3]; it does not"),
        ({"x": np.zeros(2, np.float32)}, (X,), "input 'x' has shape [2]"),
        ({"image": np.zeros((1, 4, 4), np.float32)}, (IMAGE,), "input 'image' has shape [1, 4, 4]"),
        ({"x": np.zeros((0, 2), np.float32)}, (X,), "input 'x' is an empty batch"),
        (
            {"x": np.zeros((2, 2), np.float32), "ids": np.arange(3)},
            (X, IDS),
            "input 'ids' has 3 rows but other inputs have 2",
        ),
        ({"x": np.array([[1, np.nan]], np.float32)}, (X,), "input 'x' contains NaN or infinity"),
        ({"x": np.array([[np.inf, 1]], np.float32)}, (X,), "input 'x' contains NaN or infinity"),
        ({"x": np.array([[1, -np.inf]], np.float32)}, (X,), "input 'x' contains NaN or infinity"),
        ({}, (), "the model declares no inputs"),
    ],
)
def test_check_inputs_refuses(inputs, specs, message):
    with pytest.raises(InvalidInput) as info:
        check_inputs(inputs, specs)
    assert message in str(info.value)


def test_nan_check_is_for_floats_only():
    flags = TensorSpec("flags", "bool", (-1,))
    assert check_inputs({"flags": np.array([True, False])}, (flags,)) == 2


def _request(x: np.ndarray):
    from modelhost.types import InferRequest

    return InferRequest(inputs={"x": x}, deadline_s=float("inf"))


@pytest.mark.parametrize("rows", [4, 1 + CHECK_INLINE_BYTES // 8])  # inline, and in a thread
async def test_checked_refuses_and_counts_alike_on_both_sides_of_the_thread_limit(rows):
    info = SimpleNamespace(inputs=(X,))
    fine = np.ones((rows, 2), np.float32)
    assert await checked(_request(fine), info) == rows
    bad = fine.copy()
    bad[-1, -1] = np.nan
    with pytest.raises(InvalidInput, match="NaN or infinity"):
        await checked(_request(bad), info)


async def test_a_large_input_is_checked_while_the_event_loop_runs():
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    info = SimpleNamespace(inputs=(X,))
    small, large = (np.ones((n, 2), np.float32) for n in (4, CHECK_INLINE_BYTES))
    task = asyncio.create_task(ticker())
    await checked(_request(small), info)
    assert ticks == 0  # inline: nothing else ran (no await point)
    await checked(_request(large), info)
    task.cancel()
    assert ticks > 0  # the loop ran the ticker while a thread scanned the large input
