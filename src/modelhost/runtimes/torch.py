"""PyTorch eager runtime: a model class from a Python file in the archive + safetensors.

Loading runs the archive's ``module_file``: that is trusted code of the archive's author,
exactly like installing their Python package. Serve archives only from authors you trust
(the digests prove the archive is unchanged since packing, not that its author is honest).
Weights are safetensors; no pickle is loaded.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from safetensors import SafetensorError
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
            args = [to_torch(batch[name]).to(self._device) for name in self._input_names]
            raw = self._module(*args)
        outputs = {}
        for name, value in outputs_by_name(self._manifest, raw).items():
            if not isinstance(value, torch.Tensor):
                raise ValueError(
                    f"model output {name!r} is a {type(value).__name__}, not a tensor; "
                    "forward() must return tensors for every manifest output"
                )
            outputs[name] = value.detach().cpu().numpy()
        return outputs


def to_torch(arr: np.ndarray) -> torch.Tensor:
    """``arr`` as a CPU tensor sharing its memory; a read-only array (``np.frombuffer`` of a
    request body) is copied first, as torch refuses to share read-only memory."""
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def load_module(model_dir: Path, manifest: Manifest) -> torch.nn.Module:
    """Import the archive's model class, build it and load its safetensors weights (CPU).

    A failed load leaves ``sys.modules`` as it was: the archive's module is removed again
    (or the one it replaced restored).

    Raises:
        ArchiveError: the file, class or weights are missing; the module fails to import;
            ``init_kwargs`` do not fit the class or its constructor raises; the weights file
            is not valid safetensors (lying header, offsets, dtypes, truncated); the weights
            do not fit the class (missing, unexpected or mis-shaped tensors).
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
    previous = sys.modules.get(module_name)
    try:
        code = _import_file(module_name, source, cfg.module_file)
        module = _construct(code, cfg)
        _load_weights(module, model_dir / cfg.weights_file, cfg)
    except BaseException:
        if previous is None:
            sys.modules.pop(module_name, None)
        else:
            sys.modules[module_name] = previous
        raise
    return module.eval()


def _import_file(module_name: str, source: Path, module_file: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, source)
    if spec is None or spec.loader is None:
        raise ArchiveError(f"cannot import {module_file!r}")
    code = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = code
    try:
        spec.loader.exec_module(code)
    except Exception as exc:  # the archive's code may raise anything while importing
        raise ArchiveError(f"{module_file!r} failed to import: {exc!r}") from exc
    return code


def _construct(code: ModuleType, cfg: TorchConfig) -> torch.nn.Module:
    cls = getattr(code, cfg.class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ArchiveError(f"{cfg.module_file!r} defines no nn.Module named {cfg.class_name!r}")
    try:
        signature: inspect.Signature | None = inspect.signature(cls)
    except (TypeError, ValueError):  # not introspectable: let the call itself decide
        signature = None
    if signature is not None:
        try:
            signature.bind(**cfg.init_kwargs)
        except TypeError as exc:
            raise ArchiveError(
                f"runtime_config.init_kwargs {sorted(cfg.init_kwargs)} do not fit "
                f"{cfg.class_name}{signature} in {cfg.module_file!r}: {exc}; "
                "fix init_kwargs in the model spec"
            ) from exc
    try:
        module = cls(**cfg.init_kwargs)
    except Exception as exc:  # the archive's constructor may raise anything
        raise ArchiveError(
            f"{cfg.class_name}(**runtime_config.init_kwargs) in {cfg.module_file!r} raised {exc!r}"
        ) from exc
    if not isinstance(module, torch.nn.Module):
        raise ArchiveError(f"{cfg.class_name}() in {cfg.module_file!r} returned no nn.Module")
    return module


def _load_weights(module: torch.nn.Module, path: Path, cfg: TorchConfig) -> None:
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, OverflowError, RuntimeError) as exc:
        raise ArchiveError(
            f"weights {cfg.weights_file!r} are not a valid safetensors file: {exc}"
        ) from exc
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError, KeyError) as exc:
        raise ArchiveError(
            f"weights {cfg.weights_file!r} do not fit {cfg.class_name}: {exc}"
        ) from exc


class TorchRuntime:
    """The ``torch`` runtime."""

    name = "torch"

    def load(self, model_dir: Path, manifest: Manifest, options: LoadOptions) -> TorchPredictor:
        set_torch_threads(options.torch_threads)
        device = resolve_torch_device(options.device)
        module = load_module(model_dir, manifest).to(device)
        return TorchPredictor(module, manifest, device)


RUNTIME = TorchRuntime()
