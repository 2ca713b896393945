"""DecodeLimits and PixelBudget: each refusal is a 413 naming its setting, at the edge."""

import pytest

from modelhost.codecs.limits import DecodeLimits, most_json_containers
from modelhost.errors import PayloadTooLarge
from modelhost.types import TensorSpec

LIMITS = DecodeLimits(max_items=4, max_elements=10, max_image_pixels=100, max_request_pixels=150)


@pytest.mark.parametrize(
    ("check", "ok", "over", "setting"),
    [
        (LIMITS.check_items, 4, 5, "max_request_items"),
        (LIMITS.check_elements, 10, 11, "max_request_elements"),
    ],
)
def test_counts_at_the_limit_pass_and_one_more_is_refused(check, ok, over, setting):
    check(ok, "f")
    with pytest.raises(PayloadTooLarge, match=rf"^f: {over} .*\({setting}\)"):
        check(over, "f")


@pytest.mark.parametrize(
    ("shape", "most", "setting"),
    [
        ((-1,), 2048 + 4 + 4 * 1 + 4, "max_request_items"),
        ((-1, 5), 2048 + 4 + 4 * 1 + 4, "max_request_items"),
        ((-1, 1, 28, 28), 2048 + 4 + 4 * (1 + 1 + 28) + 4, "max_request_items"),
        ((-1, 3, -1), 2048 + 4 + 4 * (1 + 3) + 4, "max_request_items"),
        ((-1, -1, 2), 2048 + 2 * 10, "max_request_elements"),
    ],
)
def test_the_most_json_containers_follow_the_signature(shape, most, setting):
    assert most_json_containers((TensorSpec("x", "float32", shape),), LIMITS) == (most, setting)


def test_two_inputs_add_up():
    specs = (TensorSpec("a", "float32", (-1, 2, 2)), TensorSpec("b", "int64", (-1,)))
    assert most_json_containers(specs, LIMITS) == (
        2048 + 4 + (4 + 4 * 3) + (4 + 4),
        "max_request_items",
    )


def test_json_containers_are_counted_before_parsing():
    specs = (TensorSpec("x", "float32", (-1, 1)),)
    most, _ = most_json_containers(specs, LIMITS)
    LIMITS.check_json_containers(b"[" * (most - 10) + b"{" * 10, specs)
    with pytest.raises(PayloadTooLarge, match=rf"^body: {most + 1} JSON .*max_request_items"):
        LIMITS.check_json_containers(b"[" * (most - 10) + b"{" * 11, specs)


def test_a_pixel_budget_refuses_one_large_image_and_a_large_sum():
    budget = LIMITS.pixel_budget()
    with pytest.raises(PayloadTooLarge, match=r"^a: image of 11x10 .*\(max_image_pixels\)"):
        budget.take(11, 10, "a")
    budget.take(10, 10, "b")
    budget.take(5, 10, "c")
    assert budget.used == 150
    with pytest.raises(PayloadTooLarge, match=r"^d: .*\(max_request_pixels\)"):
        budget.take(1, 1, "d")
    assert budget.used == 150
    assert LIMITS.pixel_budget().used == 0
