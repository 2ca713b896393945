"""What a Keras model file may ask Keras to build: built-in layers only. No Keras import.

    model.keras (zip)   config.json          ─┐
    model.h5   (HDF5)   attrs["model_config"] ─┴─► read_model_config ─► check_model_config
                                                                          (ArchiveError)

A Keras model file is a config (JSON: which classes to build, with which arguments) and
weights. Keras builds whatever the config names. Most of it is data, but some of it runs
code of the file's author: a ``Lambda`` layer holds Python bytecode or names any function
of any module; a ``TFSMLayer`` loads a TensorFlow SavedModel (a program) from a path outside
the file; tf.keras's ``TFOpLambda`` calls a TensorFlow function the file names; a custom
class needs its author's Python code. :func:`check_keras_file` refuses each of them, naming
the layer and where it sits, at any depth (a Sequential inside a Functional, a layer
wrapped in ``TimeDistributed``). It reads the file without Keras, so ``modelhost pack``
checks without the framework, and the runtime checks again before every load; Keras's own
``safe_mode`` stays on behind it.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import h5py
from pydantic import BaseModel, ConfigDict, Field

from modelhost.archive.manifest import ModelSpec
from modelhost.errors import ArchiveError
from modelhost.runtimes.base import parse_config

SUFFIXES = (".keras", ".h5", ".hdf5")
# The config of a large Functional model is a few MiB; more is a file built to exhaust memory.
MAX_CONFIG_BYTES = 64 * 1024 * 1024

# Layers that run code, with why; refused wherever they sit.
REFUSED_LAYERS = {
    "Lambda": "its function is Python code of the file's author (bytecode, or any function "
    "named by module)",
    "TFSMLayer": "it loads a TensorFlow SavedModel, a program of the file's author, from a "
    "path outside the file",
    "TFOpLambda": "it calls a TensorFlow function that the file names",
    "SlicingOpLambda": "it calls a TensorFlow function that the file names",
}
# Markers of plain values in a Keras config (arrays, bytes, slices, a Functional model's
# symbolic tensors, legacy tuples); ``__lambda__`` (bytecode) is none of them.
_VALUE_MARKERS = frozenset(
    {
        "__bytes__", "__complex__", "__ellipsis__", "__keras_tensor__", "__numpy__",
        "__slice__", "__tensor__", "__tuple__",
    }
)  # fmt: skip
# Keras writes its built-in functions (activations, losses) as module "builtins" and looks
# them up among its own modules only; these modules hold functions a layer may apply to a
# tensor. Anything else (keras.utils, keras.config, os) is refused.
_FUNCTION_MODULES = frozenset(
    {"builtins", "keras.activations", "keras.losses", "keras.metrics", "keras.ops"}
)
_FIX = "rebuild the model from built-in Keras layers"


class KerasConfig(BaseModel):
    """``runtime_config`` of a keras archive: the model file (``.keras``, ``.h5``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str = Field(pattern=r"(?i)^[^/\\]+\.(keras|h5|hdf5)$")


def check_model_dir(spec: ModelSpec, model_dir: Path) -> None:
    """Check the model file of a keras model directory before it is packed.

    Raises:
        ArchiveError: bad ``runtime_config``, the file is missing, or
            :func:`check_keras_file` refuses it.
    """
    cfg: KerasConfig = parse_config(spec, KerasConfig)
    path = model_dir / cfg.file
    if not path.is_file():
        raise ArchiveError(f"runtime_config.file {cfg.file!r} is not a file in {model_dir}")
    check_keras_file(path)


def check_keras_file(path: Path) -> dict[str, Any]:
    """Read the model config of ``path`` and refuse what would run code; return the config.

    The top-level ``compile_config`` (optimizer, loss) is not checked: modelhost loads with
    ``compile=False``, and Keras then never reads it.

    Raises:
        ArchiveError: not a readable ``.keras``/``.h5`` model file, or a layer, class or
            function that runs code or needs its author's code (the message names it).
    """
    config = read_model_config(path)
    check_model_config({k: v for k, v in config.items() if k != "compile_config"}, path.name)
    return config


def read_model_config(path: Path) -> dict[str, Any]:
    """The model config (parsed JSON) of a ``.keras`` zip or an ``.h5`` file.

    Raises:
        ArchiveError: another suffix, not a zip / HDF5 file, no model config (a weights-only
            file), a config over MAX_CONFIG_BYTES, or not a JSON object naming a class.
    """
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ArchiveError(
            f"{path.name} is not a Keras model file; modelhost reads {', '.join(SUFFIXES)}"
        )
    text = _zip_config(path) if suffix == ".keras" else _h5_config(path)
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ArchiveError(f"{path.name}: the model config is not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or not isinstance(config.get("class_name"), str):
        raise ArchiveError(f"{path.name}: the model config names no model class")
    return config


def _zip_config(path: Path) -> bytes:
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo("config.json")
            if info.file_size > MAX_CONFIG_BYTES:
                raise ArchiveError(f"{path.name}: config.json is over {MAX_CONFIG_BYTES} bytes")
            return zf.read(info)
    except KeyError as exc:
        raise ArchiveError(f"{path.name} has no config.json: not a Keras 3 model file") from exc
    except (zipfile.BadZipFile, OSError, RuntimeError) as exc:
        raise ArchiveError(f"{path.name} is not a readable .keras (zip) file: {exc}") from exc


def _h5_config(path: Path) -> str | bytes:
    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
    except OSError as exc:
        raise ArchiveError(f"{path.name} is not a readable HDF5 file: {exc}") from exc
    if raw is None:
        raise ArchiveError(
            f"{path.name} holds no model config (weights only?); save the whole model: "
            "model.save('model.keras') or model.save('model.h5')"
        )
    if not isinstance(raw, str | bytes) or len(raw) > MAX_CONFIG_BYTES:
        raise ArchiveError(f"{path.name}: model_config is not a JSON text of a sane size")
    return raw


def check_model_config(config: object, source: str) -> None:
    """Refuse the first object in ``config`` that runs code or needs its author's code.

    Every JSON object with a ``class_name`` is a class (or function) Keras would build;
    nested configs are walked to any depth (without recursion). ``source`` names the file
    in messages.

    Raises:
        ArchiveError: naming the layer (its name, class and enclosing models) and why.

    Example:
        >>> check_model_config({"class_name": "Lambda", "config": {"name": "f"}}, "m.h5")
        Traceback (most recent call last):
        modelhost.errors.ArchiveError: m.h5: layer 'f' (Lambda) is refused: ...
    """
    stack: list[tuple[object, tuple[str, ...]]] = [(config, ())]
    while stack:
        value, where = stack.pop()
        if isinstance(value, list):
            stack.extend((item, where) for item in reversed(value))
            continue
        if not isinstance(value, dict):
            continue
        class_name = value.get("class_name")
        if isinstance(class_name, str):
            _check_object(value, class_name, where, source)
            name = _object_name(value)
            where = (*where, name) if name else where
        stack.extend((item, where) for item in reversed(list(value.values())))


def _object_name(obj: dict[str, Any]) -> str | None:
    inner = obj.get("config")
    name = inner.get("name") if isinstance(inner, dict) else None
    return name if isinstance(name, str) else None


def _describe(obj: dict[str, Any], class_name: str, where: tuple[str, ...]) -> str:
    name = _object_name(obj)
    label = f"layer {name!r} ({class_name})" if name else f"a {class_name}"
    return label + _inside(where)


def _check_object(
    obj: dict[str, Any], class_name: str, where: tuple[str, ...], source: str
) -> None:
    what = _describe(obj, class_name, where)
    why = REFUSED_LAYERS.get(class_name)
    if why is not None:
        raise ArchiveError(
            f"{source}: {what} is refused: {why}; modelhost never runs code from a model "
            f"file (Keras safe_mode stays on): {_FIX}"
        )
    if class_name.startswith("__"):
        if class_name in _VALUE_MARKERS:
            return
        kind = "a Python lambda (bytecode)" if class_name == "__lambda__" else class_name
        raise ArchiveError(
            f"{source}: {kind}{_inside(where)} is refused: it is code or an object Keras "
            f"builds from code of the file's author; {_FIX}"
        )
    module = obj.get("module")
    if class_name == "function":
        if not isinstance(module, str) or module not in _FUNCTION_MODULES:
            raise ArchiveError(
                f"{source}: function {obj.get('config')!r} of module {module!r}{_inside(where)}"
                f" is refused: modelhost loads Keras's built-in functions only "
                f"({', '.join(sorted(_FUNCTION_MODULES))}); {_FIX}"
            )
        return
    registered = obj.get("registered_name")
    if ">" in class_name:
        origin = f"registered as {class_name!r}"
    elif isinstance(registered, str) and ">" in registered:
        origin = f"registered as {registered!r}"
    elif "module" in obj and not _is_keras_module(module):
        origin = f"module {module!r}"
    else:
        return
    raise ArchiveError(
        f"{source}: {what} is a custom class ({origin}): it needs the "
        "Python code of the file's author, and modelhost loads built-in Keras layers "
        f"only; {_FIX}"
    )


def _inside(where: tuple[str, ...]) -> str:
    return f" inside {' > '.join(map(repr, where))}" if where else ""


def _is_keras_module(module: object) -> bool:
    return isinstance(module, str) and (module == "keras" or module.startswith("keras."))
