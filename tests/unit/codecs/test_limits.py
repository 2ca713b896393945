"""DecodeLimits and PixelBudget: each refusal is a 413 naming its setting, at the edge."""

import pytest

from modelhost.codecs.limits import DecodeLimits
from modelhost.errors import PayloadTooLarge

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
    ("body", "refused"),
    [
        (b"[" * 5 + b"{" * 5, False),
        (b"[" * 6 + b"{" * 5, True),
        (b"[1,2,3,4,5,6,7,8,9,10,11,12]", False),
        (b'{"instances": [[0],[0],[0],[0],[0],[0],[0],[0],[0],[0]]}', True),
    ],
)
def test_json_containers_are_counted_before_parsing(body, refused):
    if refused:
        with pytest.raises(PayloadTooLarge, match=r"\(max_request_elements\)"):
            LIMITS.check_json_containers(body)
    else:
        LIMITS.check_json_containers(body)


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
