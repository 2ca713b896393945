"""The two seams every framework implements: ``Runtime.load`` and ``Predictor.predict``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ValidationError

from modelhost.archive.manifest import Manifest, ModelSpec
from modelhost.errors import ArchiveError


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """How to load: ``device`` (auto, cpu, cuda, cuda:N), thread counts (0 = default) and
    whether onnxruntime's idle threads spin-wait; the defaults are those of ``Settings``."""

    device: str = "auto"
    torch_threads: int = 0
    onnx_intra_op_threads: int = 0
    onnx_inter_op_threads: int = 1
    onnx_allow_spinning: bool = False


class Predictor(Protocol):
    """A loaded model. ``predict`` takes and returns arrays whose axis 0 is the batch.

    ``predict`` is called from one worker thread at a time per predictor; it may block.
    """

    @property
    def device(self) -> str: ...

    def predict(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Runtime(Protocol):
    """A framework adapter: ``load`` a verified model directory into a Predictor."""

    name: str

    def load(self, model_dir: Path, manifest: Manifest, options: LoadOptions) -> Predictor: ...


def outputs_by_name(manifest: Manifest, values: object) -> dict[str, object]:
    """Pair a model's raw return value (one value, a sequence or a mapping) with output names.

    A mapping is looked up by the manifest's output names (extra keys are ignored); a tuple
    or list is taken in the manifest's order; anything else is the one output.

    Raises:
        ValueError: the number of values differs from the manifest's outputs, or a mapping
            lacks one of them. The message names the manifest's outputs; at warm-up the
            engine reports it as the archive's error (model and manifest disagree).
    """
    names = [spec.name for spec in manifest.outputs]
    listed = ", ".join(repr(name) for name in names)
    if isinstance(values, Mapping):
        missing = [name for name in names if name not in values]
        if missing:
            got = ", ".join(repr(key) for key in list(values)[:16])
            raise ValueError(
                f"model returned outputs named [{got}] but the manifest's outputs are "
                f"[{listed}]; {', '.join(map(repr, missing))} missing: make the model "
                "return them or fix outputs in the model spec"
            )
        return {name: values[name] for name in names}
    seq = list(values) if isinstance(values, list | tuple) else [values]
    if len(seq) != len(names):
        raise ValueError(
            f"model returned {len(seq)} output{'s' if len(seq) != 1 else ''} but the manifest "
            f"lists {len(names)}: [{listed}]; make the model return one value per manifest "
            "output, in that order, or fix outputs in the model spec"
        )
    return dict(zip(names, seq, strict=True))


def parse_config(manifest: ModelSpec, model: type[BaseModel]) -> Any:
    """Validate ``runtime_config`` of a manifest (or a spec being packed) with a runtime's
    own config model."""
    try:
        return model.model_validate(manifest.runtime_config)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise ArchiveError(f"runtime_config.{field}: {err['msg']}") from exc
