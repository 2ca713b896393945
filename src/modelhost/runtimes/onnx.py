"""ONNX Runtime: one ``InferenceSession`` per instance, full graph optimizations."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict

from modelhost.archive.manifest import Manifest
from modelhost.errors import ArchiveError
from modelhost.runtimes.base import LoadOptions, parse_config
from modelhost.runtimes.devices import onnx_providers


class OnnxConfig(BaseModel):
    """``runtime_config`` of an onnx archive."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str = "model.onnx"


class OnnxPredictor:
    """Runs an ONNX Runtime session; output names come from the manifest."""

    def __init__(self, session: ort.InferenceSession, manifest: Manifest) -> None:
        self._session = session
        self._output_names = [spec.name for spec in manifest.outputs]
        providers = session.get_providers()
        self._device = "cuda" if "CUDAExecutionProvider" in providers else "cpu"

    @property
    def device(self) -> str:
        return self._device

    def predict(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self._output_names, dict(batch))
        return dict(zip(self._output_names, values, strict=True))


class OnnxRuntime:
    """The ``onnx`` runtime."""

    name = "onnx"

    def load(self, model_dir: Path, manifest: Manifest, options: LoadOptions) -> OnnxPredictor:
        cfg: OnnxConfig = parse_config(manifest, OnnxConfig)
        if cfg.file not in manifest.files:
            raise ArchiveError(f"runtime_config.file {cfg.file!r} is not in the archive")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = options.onnx_intra_op_threads
        so.inter_op_num_threads = 1
        providers = onnx_providers(options.device, ort.get_available_providers())
        try:
            session = ort.InferenceSession(
                str(model_dir / cfg.file), sess_options=so, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ArchiveError(f"{cfg.file!r} is not a loadable ONNX model: {exc}") from exc
        _check_names(session, manifest)
        return OnnxPredictor(session, manifest)


def _check_names(session: ort.InferenceSession, manifest: Manifest) -> None:
    graph_inputs = {i.name for i in session.get_inputs()}
    graph_outputs = {o.name for o in session.get_outputs()}
    for spec in manifest.inputs:
        if spec.name not in graph_inputs:
            raise ArchiveError(f"manifest input {spec.name!r} is not an input of the ONNX graph")
    for spec in manifest.outputs:
        if spec.name not in graph_outputs:
            raise ArchiveError(f"manifest output {spec.name!r} is not an output of the ONNX graph")


RUNTIME = OnnxRuntime()
