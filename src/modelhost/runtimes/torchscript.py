"""TorchScript runtime: one ``torch.jit`` file, no Python file from the archive.

A TorchScript file is still a program: its methods (``forward``, ``__setstate__``, run at
load) may call ``torch.from_file`` or ``torch.load`` and read any file the server can. The
registry marks this runtime ``runs_code``, so it is served only with ``--trust-code``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict

from modelhost.archive.manifest import Manifest
from modelhost.errors import ArchiveError
from modelhost.runtimes.base import LoadOptions, parse_config
from modelhost.runtimes.devices import resolve_torch_device
from modelhost.runtimes.torch import TorchPredictor, set_torch_threads


class TorchScriptConfig(BaseModel):
    """``runtime_config`` of a torchscript archive."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str = "model.pt"


class TorchScriptRuntime:
    """The ``torchscript`` runtime."""

    name = "torchscript"

    def load(self, model_dir: Path, manifest: Manifest, options: LoadOptions) -> TorchPredictor:
        cfg: TorchScriptConfig = parse_config(manifest, TorchScriptConfig)
        if cfg.file not in manifest.files:
            raise ArchiveError(f"runtime_config.file {cfg.file!r} is not in the archive")
        set_torch_threads(options.torch_threads)
        device = resolve_torch_device(options.device)
        try:
            module = torch.jit.load(str(model_dir / cfg.file), map_location=device)  # type: ignore[no-untyped-call]
        except Exception as exc:  # torch.jit.load raises RuntimeError, ValueError, ...
            raise ArchiveError(f"{cfg.file!r} is not a loadable TorchScript file: {exc}") from exc
        return TorchPredictor(module.eval(), manifest, device)


RUNTIME = TorchScriptRuntime()
