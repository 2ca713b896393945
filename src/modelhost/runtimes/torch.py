"""PyTorch eager runtime: a model class from a Python file in the archive + safetensors.

Loading runs the archive's ``module_file``: that is trusted code of the archive's author,
exactly like installing their Python package. Serve archives only from authors you trust
(the digests prove the archive is unchanged since packing, not that its author is honest).
Weights are safetensors; no pickle is loaded.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from safetensors.torch import load_file

from modelhost.archive.manifest import Manifest
from modelhost.errors import ArchiveError
from modelhost.runtimes.base import LoadOptions, outputs_by_name, parse_config
from modelhost.runtimes.devices import resolve_torch_device


class TorchConfig(BaseModel):
    """``runtime_config`` of a torch archive."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    module_file: str
    class_name: str
    weights_file: str
    init_kwargs: dict[str, Any] = {}


def set_torch_threads(threads: int) -> None:
    """Set torch's intra-op thread count once (0 leaves torch's default)."""
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


class TorchPredictor:
    """Runs an ``nn.Module`` under ``inference_mode``; inputs in signature order."""

    def __init__(self, module: torch.nn.Module, manifest: Manifest, device: str) -> None:
        self._module = module
        self._manifest = manifest
        self._device = device
        self._input_names = [spec.name for spec in manifest.inputs]

    @property
    def device(self) -> str:
        return self._device

    @property
    def module(self) -> torch.nn.Module:
        """The loaded module (used by export)."""
        return self._module

    def predict(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            args = [_tensor(batch[name]).to(self._device) for name in self._input_names]
            raw = self._module(*args)
        return {
            name: value.detach().cpu().numpy()
            for name, value in outputs_by_name(self._manifest, raw).items()
            if isinstance(value, torch.Tensor)
        }


def _tensor(arr: np.ndarray) -> torch.Tensor:
    # torch refuses to share read-only memory (np.frombuffer of a request body): copy those.
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def load_module(model_dir: Path, manifest: Manifest) -> torch.nn.Module:
    """Import the archive's model class, build it and load its safetensors weights (CPU).

    Raises:
        ArchiveError: the file, class or weights are missing or do not fit together.
    """
    cfg: TorchConfig = parse_config(manifest, TorchConfig)
    source = model_dir / cfg.module_file
    if cfg.module_file not in manifest.files or not source.is_file():
        raise ArchiveError(f"runtime_config.module_file {cfg.module_file!r} is not in the archive")
    if cfg.weights_file not in manifest.files:
        raise ArchiveError(
            f"runtime_config.weights_file {cfg.weights_file!r} is not in the archive"
        )
    module_name = f"modelhost_archive_{manifest.name}_{manifest.version}".replace("-", "_")
    module_name = module_name.replace(".", "_")
    spec = importlib.util.spec_from_file_location(module_name, source)
    if spec is None or spec.loader is None:
        raise ArchiveError(f"cannot import {cfg.module_file!r}")
    code = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = code
    try:
        spec.loader.exec_module(code)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ArchiveError(f"{cfg.module_file!r} failed to import: {exc!r}") from exc
    cls = getattr(code, cfg.class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ArchiveError(f"{cfg.module_file!r} defines no nn.Module named {cfg.class_name!r}")
    module = cls(**cfg.init_kwargs)
    try:
        module.load_state_dict(load_file(str(model_dir / cfg.weights_file)), strict=True)
    except (RuntimeError, OSError) as exc:
        raise ArchiveError(
            f"weights {cfg.weights_file!r} do not fit {cfg.class_name}: {exc}"
        ) from exc
    return module.eval()


class TorchRuntime:
    """The ``torch`` runtime."""

    name = "torch"

    def load(self, model_dir: Path, manifest: Manifest, options: LoadOptions) -> TorchPredictor:
        set_torch_threads(options.torch_threads)
        device = resolve_torch_device(options.device)
        module = load_module(model_dir, manifest).to(device)
        return TorchPredictor(module, manifest, device)


RUNTIME = TorchRuntime()
