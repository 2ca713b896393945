"""The batching and back-pressure decisions, as tables."""

import pytest

from modelhost.serving.policy import (
    BatchPolicy,
    fits_in_batch,
    is_queue_full,
    retry_after_s,
    should_close_batch,
    warmup_rows,
)

POLICY = BatchPolicy(max_batch_size=8, max_batch_delay_s=0.002, max_queue=4, max_batch_elements=80)


@pytest.mark.parametrize(
    ("now_s", "oldest_s", "items", "others", "close"),
    [
        # nobody else in flight: close at once, whatever the size or age
        (1.0, 1.0, 1, 0, True),
        (1.0, 1.0, 1, -1, True),
        (1.0, 1.0, 7, 0, True),
        # full (or over-full with one big request): close
        (1.0, 1.0, 8, 5, True),
        (1.0, 1.0, 20, 5, True),
        # others in flight, young and not full: keep gathering
        (1.0, 1.0, 1, 3, False),
        (1.0015, 1.0, 7, 1, False),
        # oldest request waited max_batch_delay_s or longer: close
        (1.002, 1.0, 1, 3, True),
        (1.5, 1.0, 1, 3, True),
    ],
)
def test_should_close_batch(now_s, oldest_s, items, others, close):
    assert should_close_batch(now_s, oldest_s, items, others, POLICY) is close


def test_zero_delay_closes_at_once():
    policy = BatchPolicy(max_batch_size=8, max_batch_delay_s=0.0, max_queue=4)
    assert should_close_batch(1.0, 1.0, 1, 10, policy) is True


@pytest.mark.parametrize(
    ("items", "request_items", "fits"),
    [
        (0, 1, True),
        (0, 8, True),
        (0, 100, True),  # larger than max_batch_size: still runs, alone
        (1, 7, True),
        (7, 1, True),
        (1, 8, False),
        (7, 2, False),
        (8, 1, False),
        (3, 100, False),
    ],
)
def test_fits_in_batch_by_rows(items, request_items, fits):
    # 1 element per row: only the row limit can refuse
    assert fits_in_batch(items, items, request_items, request_items, POLICY) is fits


@pytest.mark.parametrize(
    ("elements", "request_elements", "fits"),
    [
        (0, 1000, True),  # a request over max_batch_elements runs, alone
        (40, 40, True),
        (79, 1, True),
        (40, 41, False),
        (80, 1, False),
        (1, 10**12, False),
    ],
)
def test_fits_in_batch_by_elements(elements, request_elements, fits):
    items = 0 if elements == 0 else 1
    assert fits_in_batch(items, elements, 1, request_elements, POLICY) is fits


@pytest.mark.parametrize(
    ("item_elements", "max_batch_size", "max_elements", "rows"),
    [
        (784, 32, 1024**2, (1, 32)),  # digits: the whole max batch fits
        (784, 65536, 1024**2, (1, 1337)),  # a hostile max_batch_size is capped
        (10**7, 64, 1024**2, (1,)),  # one item over the budget: batch 1 only
        (1, 1, 1, (1,)),
        (0, 8, 100, (1, 8)),  # a scalar-per-item signature
    ],
)
def test_warmup_rows(item_elements, max_batch_size, max_elements, rows):
    assert warmup_rows(item_elements, max_batch_size, max_elements) == rows


@pytest.mark.parametrize(
    ("depth", "full"), [(0, False), (3, False), (4, True), (5, True), (1000, True)]
)
def test_is_queue_full(depth, full):
    assert is_queue_full(depth, POLICY) is full


@pytest.mark.parametrize(
    ("depth", "items_per_s", "seconds"),
    [
        (100, 50.0, 2),
        (101, 50.0, 3),
        (10, 0.0, 1),
        (10, -5.0, 1),
        (0, 100.0, 1),
        (1, 1000.0, 1),
        (59, 1.0, 59),
        (60, 1.0, 60),
        (10_000, 1.0, 60),
        (10_000, 0.001, 60),
    ],
)
def test_retry_after_s_is_the_drain_time_clamped_to_1_60(depth, items_per_s, seconds):
    result = retry_after_s(depth, items_per_s)
    assert result == seconds
    assert isinstance(result, int)


@pytest.mark.parametrize(
    ("requested", "cores", "instances", "expected"),
    [
        (0, 1, 1, 1),
        (0, 2, 1, 1),
        (0, 2, 2, 1),
        (0, 4, 1, 3),
        (0, 16, 3, 5),
        (0, 16, 0, 15),
        (3, 2, 1, 3),
        (1, 64, 8, 1),
    ],
)
def test_torch_threads_leave_a_core_for_the_event_loop(requested, cores, instances, expected):
    from modelhost.serving.policy import torch_threads

    assert torch_threads(requested, cores, instances) == expected
