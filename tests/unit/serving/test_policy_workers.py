"""The worker-process decisions of policy.py, as tables."""

import pytest

from modelhost.serving.policy import (
    choose_placement,
    onnx_intra_op_threads,
    restart_delay_s,
    worker_count,
)


@pytest.mark.parametrize(
    ("requested", "cores", "accelerator", "shared", "workers"),
    [
        (0, 1, False, False, 1),  # one core: one worker
        (0, 2, False, False, 2),  # one per core
        (0, 8, False, False, 8),
        (0, 64, False, False, 8),  # capped: every worker holds a copy of every model
        (0, 16, True, False, 1),  # a GPU with a copy per worker: one copy
        (0, 16, True, True, 8),  # a GPU, shared: one copy for every worker
        (0, 2, False, True, 2),
        (3, 2, False, False, 3),  # asked for: as asked
        (4, 16, True, False, 4),
    ],
)
def test_worker_count(requested, cores, accelerator, shared, workers):
    assert worker_count(requested, cores, accelerator, shared) == workers


@pytest.mark.parametrize(
    ("requested", "accelerator", "placement"),
    [
        ("auto", False, "per-worker"),  # CPU: no hop (measured faster on digits)
        ("auto", True, "shared"),  # GPU: one copy in its memory
        ("per-worker", True, "per-worker"),  # asked for: as asked
        ("shared", False, "shared"),
    ],
)
def test_choose_placement(requested, accelerator, placement):
    assert choose_placement(requested, accelerator) == placement


@pytest.mark.parametrize(
    ("requested", "cores", "workers", "instances", "threads"),
    [
        (0, 16, 1, 1, 0),  # one worker: onnxruntime's own choice, as before
        (0, 16, 2, 1, 8),  # the cores shared among the workers
        (0, 16, 4, 2, 2),  # ... and among each worker's instances
        (0, 2, 4, 1, 1),  # never below one
        (3, 2, 4, 1, 3),  # asked for: as asked
    ],
)
def test_onnx_intra_op_threads(requested, cores, workers, instances, threads):
    assert onnx_intra_op_threads(requested, cores, workers, instances) == threads


@pytest.mark.parametrize(
    ("failures", "delay_s"), [(0, 0.0), (1, 1.0), (2, 2.0), (5, 16.0), (6, 30.0), (50, 30.0)]
)
def test_restart_delay_s_doubles_up_to_a_cap(failures, delay_s):
    assert restart_delay_s(failures) == delay_s
