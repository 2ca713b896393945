"""Device names: ``auto`` picks a GPU when the framework sees one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from modelhost.errors import ConfigError


def resolve_torch_device(requested: str) -> str:
    """Map ``auto``/``cpu``/``cuda``/``cuda:N`` to a device torch can use.

    Raises:
        ConfigError: a CUDA device was asked for and torch sees none.
    """
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {requested!r} requested but torch sees no CUDA device")
        return requested
    raise ConfigError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N")


def onnx_providers(requested: str, available: list[str]) -> list[str]:
    """ONNX Runtime execution providers for a device request, best first.

    Raises:
        ConfigError: CUDA requested but the CUDA provider is not available.
    """
    cuda = "CUDAExecutionProvider"
    if requested == "cpu":
        return ["CPUExecutionProvider"]
    if requested == "auto":
        return [cuda, "CPUExecutionProvider"] if cuda in available else ["CPUExecutionProvider"]
    if requested.startswith("cuda"):
        if cuda not in available:
            raise ConfigError(
                f"device {requested!r} requested but onnxruntime has no CUDA provider"
            )
        return [cuda, "CPUExecutionProvider"]
    raise ConfigError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N")


# A GPU driver shows itself here (NVIDIA; AMD ROCm's /dev/kfd): without one, ``auto`` can
# only mean the CPU, and no framework needs importing to know it.
_GPU_DRIVER_PATHS = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd")


def may_use_accelerator(requested: str) -> bool:
    """Whether models served with device ``requested`` may run on a GPU: ``cuda*`` yes,
    ``cpu`` no, ``auto`` when a GPU driver is present and torch (else onnxruntime) sees
    a CUDA device. Imports a framework only on a machine with a GPU driver.
    """
    if requested == "cpu":
        return False
    if requested != "auto":
        return True
    if not any(Path(p).exists() for p in _GPU_DRIVER_PATHS):
        return False
    if importlib.util.find_spec("torch") is not None:
        import torch

        return bool(torch.cuda.is_available())
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    return False
