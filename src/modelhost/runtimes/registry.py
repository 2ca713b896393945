"""Runtimes by name, declared once. A new runtime is one module and one ``RuntimeEntry``.

Each entry says where the runtime lives, which pip extra installs its framework, its KServe
v2 ``platform`` string, the tasks it serves, whether loading an archive for it runs code
the archive carries (the server's ``--trust-code`` gate), and optionally how to check its
model files before packing. A manifest is checked against it (:func:`check_spec`) when it
is packed and when it is loaded. Nothing here imports a framework: the modules are imported
lazily, so serving an ONNX model needs no torch, and the other way round.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, ModuleType

from modelhost.archive.manifest import ModelSpec
from modelhost.errors import ArchiveError, ConfigError
from modelhost.runtimes.base import Runtime


@dataclass(frozen=True, slots=True)
class RuntimeEntry:
    """One runtime: ``module`` (defines ``RUNTIME``), pip ``extra``, KServe ``platform``.

    ``runs_code`` is True when loading executes what the archive's author wrote: the eager
    runtime imports the archive's ``model.py``; a TorchScript file is a program (its
    ``forward`` and ``__setstate__`` may call ``torch.from_file`` and read any file). ONNX
    is data: onnxruntime 1.32 refuses external data outside the model's directory, loads no
    custom-op library unless the server registers one, and ``runtimes/onnx.py`` refuses any
    tensor whose bytes are not a file of the archive. Keras is data as modelhost loads it
    (``safe_mode`` on; Lambda, TFSMLayer and custom classes refused: ``keras_files.py``).

    ``check_files`` names (``module:function``) a check of a model directory's files that
    ``pack`` runs before writing, without the framework: ``function(spec, model_dir)``,
    raising ArchiveError. Empty: the files are checked at load only.
    """

    name: str
    module: str
    extra: str
    platform: str
    runs_code: bool
    tasks: frozenset[str]
    check_files: str = ""

    def check_task(self, task: str) -> None:
        """Raises ArchiveError unless this runtime serves ``task``."""
        if task not in self.tasks:
            raise ArchiveError(
                f"runtime {self.name!r} does not serve task {task!r}; it serves "
                f"{', '.join(sorted(self.tasks))}"
            )


# Tensor runtimes run any graph: their task only says how answers are post-processed.
_TENSOR_TASKS = frozenset({"classification", "embedding", "regression", "generic"})

_ENTRIES = (
    RuntimeEntry("torch", "modelhost.runtimes.torch", "torch", "pytorch_eager",
                 runs_code=True, tasks=_TENSOR_TASKS),
    RuntimeEntry("torchscript", "modelhost.runtimes.torchscript", "torch",
                 "pytorch_torchscript", runs_code=True, tasks=_TENSOR_TASKS),
    RuntimeEntry("onnx", "modelhost.runtimes.onnx", "onnx", "onnx_onnxv1",
                 runs_code=False, tasks=_TENSOR_TASKS),
    # Offline, safetensors only, trust_remote_code off: the archive's code never runs.
    RuntimeEntry("transformers", "modelhost.runtimes.transformers", "text", "transformers",
                 runs_code=False, tasks=frozenset({"embedding", "classification"})),
    # The archive's own handler class: its code runs in the server (needs --trust-code).
    RuntimeEntry("python", "modelhost.runtimes.python", "", "python",
                 runs_code=True, tasks=_TENSOR_TASKS),
    # safe_mode on, compile off; Lambda, TFSMLayer and custom classes refused at pack and load.
    RuntimeEntry("keras", "modelhost.runtimes.keras", "keras", "keras", runs_code=False,
                 tasks=_TENSOR_TASKS,
                 check_files="modelhost.runtimes.keras_files:check_model_dir"),
)  # fmt: skip
RUNTIMES: Mapping[str, RuntimeEntry] = MappingProxyType({e.name: e for e in _ENTRIES})

# KServe v2 metadata `platform` strings (informational), by runtime name.
PLATFORMS: Mapping[str, str] = MappingProxyType({e.name: e.platform for e in _ENTRIES})


def runtime_names() -> list[str]:
    """Names of every runtime modelhost knows."""
    return sorted(RUNTIMES)


def runtime_entry(name: str) -> RuntimeEntry:
    """The declaration of runtime ``name``; imports no framework.

    Raises:
        ConfigError: unknown runtime (names the known ones).
    """
    entry = RUNTIMES.get(name)
    if entry is None:
        raise ConfigError(f"unknown runtime {name!r}; known: {', '.join(runtime_names())}")
    return entry


def check_spec(spec: ModelSpec) -> RuntimeEntry:
    """The runtime of ``spec`` (a manifest, or a model spec being packed), checked: a
    runtime of this modelhost that serves the spec's task. Imports no framework.

    Raises:
        ArchiveError: unknown runtime (an archive for another modelhost), or a task the
            runtime does not serve.
    """
    entry = RUNTIMES.get(spec.runtime)
    if entry is None:
        raise ArchiveError(
            f"runtime {spec.runtime!r} is not one of this modelhost's: {', '.join(runtime_names())}"
        )
    entry.check_task(spec.task)
    return entry


def check_packable(spec: ModelSpec, model_dir: Path) -> RuntimeEntry:
    """:func:`check_spec`, then the runtime's check of the files in ``model_dir`` (its
    ``check_files``), which imports no framework.

    Raises:
        ArchiveError: see :func:`check_spec`, or the runtime refuses a file (the message
            names it). ConfigError: the check needs a package that is not installed.
    """
    entry = check_spec(spec)
    if entry.check_files:
        module_name, _, function = entry.check_files.partition(":")
        check: Callable[[ModelSpec, Path], None] = getattr(_import(module_name, entry), function)
        check(spec, model_dir)
    return entry


def runs_code(runtime_name: str) -> bool:
    """Whether loading an archive of ``runtime_name`` runs code from the archive.

    Imports no framework, so the trust check happens before anything is loaded.

    Raises:
        ConfigError: unknown runtime.

    Example:
        >>> runs_code("torchscript"), runs_code("onnx")
        (True, False)
    """
    return runtime_entry(runtime_name).runs_code


def get_runtime(name: str) -> Runtime:
    """Return the runtime called ``name``, importing its framework.

    Raises:
        ConfigError: unknown runtime, or its framework is not installed (names the extra).
    """
    entry = runtime_entry(name)
    runtime: Runtime = _import(entry.module, entry).RUNTIME
    return runtime


def _import(module_name: str, entry: RuntimeEntry) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"runtime {entry.name!r} needs {exc.name or 'its framework'}: "
            f"pip install 'modelhost[{entry.extra or 'all'}]'"
        ) from exc
