"""The ``python`` runtime: the archive's own handler class, for what no stock runtime does.

Loading imports the archive's handler file, code of its author that runs in the server with
the server's rights. The runtime is declared ``runs_code`` (runtimes/registry.py), so the
server refuses it unless started with ``--trust-code``, before anything is imported.

The contract (``runtime_config``: ``{"file": "handler.py", "class": "Handler"}``)::

    class Handler:
        def __init__(self, model_dir: pathlib.Path) -> None: ...        # load files
        def preprocess(self, inputs: dict[str, np.ndarray]) -> Any: ...  # optional
        def predict(self, batch: Any) -> Any: ...                        # required
        def postprocess(self, outputs: Any) -> dict[str, np.ndarray]: ...  # optional

Each is called once per batch (axis 0 of every array is the batch), from the instance's
worker thread; ``preprocess`` and ``postprocess`` default to passing their argument on. The
answer must map the manifest's output names to arrays with one row per input row: the
warm-up at load holds it to the manifest's names, dtypes and shapes, so a handler that
answers otherwise is refused at load naming the tensor. What a handler raises while serving
is that request's 500 (``inference_failed``), the others of its batch rerun alone.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from modelhost.archive.manifest import Manifest
from modelhost.errors import ArchiveError
from modelhost.runtimes.base import LoadOptions, parse_config


class PythonConfig(BaseModel):
    """``runtime_config`` of a python archive."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    file: str = "handler.py"
    class_name: str = Field("Handler", alias="class", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


def _identity(value: Any) -> Any:
    return value


class HandlerPredictor:
    """Calls the handler's preprocess → predict → postprocess on each batch."""

    def __init__(self, handler: Any, manifest: Manifest) -> None:
        self._pre: Callable[[Any], Any] = getattr(handler, "preprocess", _identity)
        self._predict: Callable[[Any], Any] = handler.predict
        self._post: Callable[[Any], Any] = getattr(handler, "postprocess", _identity)
        self._outputs = [spec.name for spec in manifest.outputs]

    @property
    def device(self) -> str:
        return "cpu"

    def predict(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        answer = self._post(self._predict(self._pre(dict(batch))))
        if not isinstance(answer, Mapping):
            raise ValueError(
                f"the handler answered a {type(answer).__name__}; postprocess must return a "
                f"dict of the outputs {self._outputs}"
            )
        return {name: np.asarray(value) for name, value in answer.items()}


class PythonRuntime:
    """The ``python`` runtime."""

    name = "python"

    def load(self, model_dir: Path, manifest: Manifest, options: LoadOptions) -> HandlerPredictor:
        """Import the handler file and build its class on ``model_dir``.

        Raises:
            ArchiveError: the file is not in the archive; it does not import (syntax error,
                a missing module, an exception at import); the class is missing, not a
                class, or lacks ``predict``; its constructor raises.
        """
        cfg: PythonConfig = parse_config(manifest, PythonConfig)
        source = model_dir / cfg.file
        if cfg.file not in manifest.files or not source.is_file():
            raise ArchiveError(f"runtime_config.file {cfg.file!r} is not in the archive")
        module_name = f"modelhost_handler_{manifest.name}_{manifest.version}"
        module_name = module_name.replace("-", "_").replace(".", "_")
        spec = importlib.util.spec_from_file_location(module_name, source)
        if spec is None or spec.loader is None:
            raise ArchiveError(f"cannot import {cfg.file!r}")
        code = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = code  # for dataclasses and pickle-free introspection
        try:
            spec.loader.exec_module(code)
        except Exception as exc:  # the author's code: whatever it raises at import
            sys.modules.pop(module_name, None)
            raise ArchiveError(f"{cfg.file!r} fails to import: {exc!r}") from exc
        cls = getattr(code, cfg.class_name, None)
        if not inspect.isclass(cls):
            sys.modules.pop(module_name, None)
            raise ArchiveError(f"{cfg.file!r} defines no class {cfg.class_name!r}")
        if not callable(getattr(cls, "predict", None)):
            sys.modules.pop(module_name, None)
            raise ArchiveError(f"{cfg.file!r}: class {cfg.class_name} has no predict method")
        try:
            handler = cast(Any, cls)(model_dir)
        except Exception as exc:  # the author's constructor
            sys.modules.pop(module_name, None)
            raise ArchiveError(f"{cfg.class_name}({model_dir.name!r}) raised {exc!r}") from exc
        return HandlerPredictor(handler, manifest)


RUNTIME = PythonRuntime()
