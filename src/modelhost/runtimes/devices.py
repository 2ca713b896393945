"""Device names: ``auto`` picks a GPU when the framework sees one."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from modelhost.errors import ConfigError

_DEVICE = re.compile(r"auto|cpu|cuda(?::(0|[1-9][0-9]{0,2}))?")
_HELP = "use auto, cpu, cuda or cuda:N (N = the GPU's index)"


def parse_device(requested: str) -> tuple[str, int | None]:
    """``(kind, index)`` of a device name: ``("auto"|"cpu"|"cuda", N or None)``.

    >>> parse_device("cuda:1"), parse_device("cpu")
    (('cuda', 1), ('cpu', None))

    Raises:
        ConfigError: anything else (``gpu``, ``cuda:``, ``cuda:-1``, ``CUDA``, ``cuda:０``).
    """
    match = _DEVICE.fullmatch(requested)
    if match is None:
        raise ConfigError(f"unknown device {requested[:40]!r}; {_HELP}")
    index = match.group(1)
    kind = requested.split(":", 1)[0]
    return kind, None if index is None else int(index)


def resolve_torch_device(requested: str) -> str:
    """Map ``auto``/``cpu``/``cuda``/``cuda:N`` to a device torch can use.

    Raises:
        ConfigError: an unknown name; a CUDA device torch does not see (none, or no GPU
            of that index).
    """
    kind, index = parse_device(requested)
    import torch

    if kind == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise ConfigError(f"device {requested!r} requested but torch sees no CUDA device")
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        raise ConfigError(f"device {requested!r} requested but torch sees {count} GPU(s)")
    return requested


Provider = str | tuple[str, dict[str, str]]
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def onnx_providers(requested: str, available: list[str]) -> list[Provider]:
    """ONNX Runtime execution providers for a device request, best first (``cuda:N``
    passes its index as the provider's ``device_id``).

    Raises:
        ConfigError: an unknown name; CUDA requested but the CUDA provider is not available.
    """
    kind, index = parse_device(requested)
    if kind == "cpu":
        return [_CPU]
    if kind == "auto":
        return [_CUDA, _CPU] if _CUDA in available else [_CPU]
    if _CUDA not in available:
        raise ConfigError(
            f"device {requested!r} requested but onnxruntime has no CUDA provider (install "
            "onnxruntime-gpu in place of onnxruntime)"
        )
    return [(_CUDA, {"device_id": str(index or 0)}), _CPU]


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
