"""Device names: every spelling a user may type is either understood or refused naming the
valid ones; on a machine without a GPU, auto means the CPU and a CUDA request is refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelhost.archive.manifest import ModelSpec, TensorSignature
from modelhost.config import Settings
from modelhost.errors import ConfigError
from modelhost.runtimes.devices import (
    may_use_accelerator,
    onnx_providers,
    parse_device,
    resolve_torch_device,
)

BAD = ["", "gpu", "GPU", "CUDA", "cuda:", "cuda:-1", "cuda:01", "cuda:1.0", "cuda:x",
       "cuda:\uff10", "cuda:1 ", " cpu", "cpu:0", "mps", "cuda:10000", "tpu:0"]  # fmt: skip
X = TensorSignature(name="x", dtype="float32", shape=(-1, 2))


@pytest.mark.parametrize(
    ("name", "parsed"),
    [("auto", ("auto", None)), ("cpu", ("cpu", None)), ("cuda", ("cuda", None)),
     ("cuda:0", ("cuda", 0)), ("cuda:7", ("cuda", 7)), ("cuda:123", ("cuda", 123))],
)  # fmt: skip
def test_the_device_names(name, parsed):
    assert parse_device(name) == parsed
    assert Settings(device=name).device == name
    assert ModelSpec(runtime="onnx", inputs=(X,), outputs=(X,), device=name).device == name


@pytest.mark.parametrize("name", BAD)
def test_every_other_spelling_is_refused_naming_the_valid_ones(name):
    with pytest.raises(ConfigError, match="use auto, cpu, cuda or cuda:N"):
        parse_device(name)
    with pytest.raises(ValidationError):
        Settings(device=name)
    with pytest.raises(ValidationError):
        ModelSpec(runtime="onnx", inputs=(X,), outputs=(X,), device=name)


def test_onnx_providers_for_each_device():
    cpu_only = ["CPUExecutionProvider"]
    gpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnx_providers("cpu", gpu) == ["CPUExecutionProvider"]
    assert onnx_providers("auto", cpu_only) == ["CPUExecutionProvider"]
    assert onnx_providers("auto", gpu) == gpu
    assert onnx_providers("cuda:2", gpu) == [
        ("CUDAExecutionProvider", {"device_id": "2"}),
        "CPUExecutionProvider",
    ]
    with pytest.raises(ConfigError, match=r"no CUDA provider.*onnxruntime-gpu"):
        onnx_providers("cuda", cpu_only)


def test_without_a_gpu_auto_is_the_cpu_and_cuda_is_refused():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_torch_device("auto") == "cpu"
    assert resolve_torch_device("cpu") == "cpu"
    for name in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(ConfigError, match="torch sees no CUDA device"):
            resolve_torch_device(name)
    assert may_use_accelerator("cpu") is False
    assert may_use_accelerator("cuda:1") is True
