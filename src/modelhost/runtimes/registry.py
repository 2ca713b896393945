"""Runtimes by name. A new runtime is one module here and one line in ``_MODULES``."""

from __future__ import annotations

import importlib

from modelhost.errors import ConfigError
from modelhost.runtimes.base import Runtime

# Imported lazily so that serving an ONNX model needs no torch, and the other way round.
_MODULES: dict[str, str] = {
    "torch": "modelhost.runtimes.torch",
    "torchscript": "modelhost.runtimes.torchscript",
    "onnx": "modelhost.runtimes.onnx",
}

# KServe v2 metadata `platform` strings (informational).
PLATFORMS: dict[str, str] = {
    "torch": "pytorch_eager",
    "torchscript": "pytorch_torchscript",
    "onnx": "onnx_onnxv1",
}


def runtime_names() -> list[str]:
    """Names of every runtime modelhost knows."""
    return sorted(_MODULES)


def get_runtime(name: str) -> Runtime:
    """Return the runtime called ``name``.

    Raises:
        ConfigError: unknown runtime, or its framework is not installed (names the extra).
    """
    module_name = _MODULES.get(name)
    if module_name is None:
        raise ConfigError(f"unknown runtime {name!r}; known: {', '.join(runtime_names())}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = "onnx" if name == "onnx" else "torch"
        raise ConfigError(
            f"runtime {name!r} needs {exc.name or 'its framework'}: "
            f"pip install 'modelhost[{extra}]'"
        ) from exc
    runtime: Runtime = module.RUNTIME
    return runtime
