"""ONNX Runtime: one ``InferenceSession`` per instance, graph optimizations at the level
the archive names (``runtime_config.graph_optimization``, default ``all``).

ONNX is data, provided no tensor reads bytes from outside the archive. Before a session is
made, every tensor of the model (graph and subgraph initializers, sparse initializers,
Constant and other node attributes, functions, training graphs) is checked: one stored as
external data must name a file of the archive beside or below the model file. onnxruntime
1.32 also refuses locations outside the model's directory, but older releases that the
``onnx`` extra allows did not, and its message names no fix.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict

from modelhost.archive.manifest import Manifest, TensorSignature
from modelhost.errors import ArchiveError
from modelhost.runtimes.base import LoadOptions, parse_config
from modelhost.runtimes.devices import onnx_providers

# onnxruntime's element type names, by manifest dtype.
_ORT_TYPES: dict[str, str] = {
    "bool": "tensor(bool)",
    "uint8": "tensor(uint8)",
    "uint16": "tensor(uint16)",
    "uint32": "tensor(uint32)",
    "uint64": "tensor(uint64)",
    "int8": "tensor(int8)",
    "int16": "tensor(int16)",
    "int32": "tensor(int32)",
    "int64": "tensor(int64)",
    "float16": "tensor(float16)",
    "float32": "tensor(float)",
    "float64": "tensor(double)",
}


class OnnxConfig(BaseModel):
    """``runtime_config`` of an onnx archive."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str = "model.onnx"
    # onnxruntime's graph optimization level for the session.
    graph_optimization: Literal["disabled", "basic", "extended", "all"] = "all"


GRAPH_LEVELS: dict[str, ort.GraphOptimizationLevel] = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class OnnxPredictor:
    """Runs an ONNX Runtime session; output names come from the manifest."""

    def __init__(self, session: ort.InferenceSession, manifest: Manifest) -> None:
        self._session = session
        self._output_names = [spec.name for spec in manifest.outputs]
        providers = session.get_providers()
        self._device = "cpu"
        if "CUDAExecutionProvider" in providers:
            cuda = session.get_provider_options().get("CUDAExecutionProvider", {})
            self._device = f"cuda:{cuda.get('device_id', '0')}"

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
        """Check the model's external data and signature, then open a session.

        Raises:
            ArchiveError: the model file is missing or not ONNX; a tensor's external data
                is not a file of the archive (absolute, ``..``, in-memory marker, absent);
                a manifest input or output is not in the graph or has another element
                type or a contradicting shape; onnxruntime cannot load the model.
            ConfigError: the device asked for has no execution provider.
        """
        cfg: OnnxConfig = parse_config(manifest, OnnxConfig)
        if cfg.file not in manifest.files:
            raise ArchiveError(f"runtime_config.file {cfg.file!r} is not in the archive")
        check_external_data(model_dir / cfg.file, cfg.file, manifest.files)
        so = ort.SessionOptions()
        so.graph_optimization_level = GRAPH_LEVELS[cfg.graph_optimization]
        so.intra_op_num_threads = options.onnx_intra_op_threads
        so.inter_op_num_threads = options.onnx_inter_op_threads
        spinning = "1" if options.onnx_allow_spinning else "0"
        for pool in ("intra_op", "inter_op"):
            so.add_session_config_entry(f"session.{pool}.allow_spinning", spinning)
        providers = onnx_providers(options.device, ort.get_available_providers())
        try:
            session = ort.InferenceSession(
                str(model_dir / cfg.file), sess_options=so, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ArchiveError(f"{cfg.file!r} is not a loadable ONNX model: {exc}") from exc
        _check_signature(session, manifest, cfg.file)
        return OnnxPredictor(session, manifest)


def check_external_data(path: Path, file: str, members: Mapping[str, object]) -> None:
    """Refuse a model with a tensor whose bytes would be read from outside the archive.

    Args:
        path: the extracted model file. file: its member name in the archive.
        members: the archive's member names (the manifest's ``files``).

    Raises:
        ArchiveError: ``file`` is not an ONNX model, or names the tensor and the location
            that is not a member of the archive.
    """
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and onnx's own errors
        raise ArchiveError(f"{file!r} is not an ONNX model: {exc}") from exc
    base = posixpath.dirname(file)
    for where, tensor in _tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        member = _member_at(base, location)
        if member is None or member not in members:
            raise ArchiveError(
                f"{file!r}: tensor {tensor.name!r} ({where}) reads its data from "
                f"{location!r}, which is not a file of the archive; external data must be "
                f"archive members beside or below {file!r}"
            )


def _member_at(base: str, location: str) -> str | None:
    """The archive member an external-data ``location`` names, or None if it is outside."""
    if (
        not location
        or location.startswith(("/", "*"))  # absolute, or onnxruntime's in-memory marker
        or "\\" in location
        or ":" in location
        or any(ord(ch) < 32 for ch in location)
    ):
        return None
    joined = posixpath.normpath(posixpath.join(base, location))
    if joined == ".." or joined.startswith("../"):
        return None
    return joined


def _tensors(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    """Every tensor stored in ``model``, with where it is, in graphs at any depth."""
    for graph_where, graph in _graphs(model):
        for tensor in graph.initializer:
            yield f"initializer of {graph_where}", tensor
        for sparse in graph.sparse_initializer:
            yield f"sparse initializer of {graph_where}", sparse.values
            yield f"sparse initializer of {graph_where}", sparse.indices
        yield from _node_tensors(graph.node, graph_where)
    for function in model.functions:
        yield from _node_tensors(function.node, f"function {function.name!r}")


def _node_tensors(
    nodes: Iterable[onnx.NodeProto], where: str
) -> Iterator[tuple[str, onnx.TensorProto]]:
    for node in nodes:
        for attr in node.attribute:
            at = f"attribute {attr.name!r} of node {node.name or node.op_type!r} in {where}"
            if attr.HasField("t"):
                yield at, attr.t
            yield from ((at, t) for t in attr.tensors)
            sparse = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
            for sp in [*sparse, *attr.sparse_tensors]:
                yield at, sp.values
                yield at, sp.indices


def _graphs(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    """The main graph, training graphs, and every subgraph of their nodes and functions."""
    roots: list[tuple[str, onnx.GraphProto]] = [("the graph", model.graph)]
    for i, info in enumerate(model.training_info):
        roots.append((f"training_info[{i}].initialization", info.initialization))
        roots.append((f"training_info[{i}].algorithm", info.algorithm))
    nodes_of_functions = [node for function in model.functions for node in function.node]
    stack = roots + list(_subgraphs(nodes_of_functions, "a function"))
    while stack:
        where, graph = stack.pop()
        yield where, graph
        stack.extend(_subgraphs(graph.node, where))


def _subgraphs(
    nodes: Iterable[onnx.NodeProto], where: str
) -> Iterator[tuple[str, onnx.GraphProto]]:
    for node in nodes:
        for attr in node.attribute:
            at = f"subgraph {attr.name!r} of node {node.name or node.op_type!r} in {where}"
            if attr.HasField("g"):
                yield at, attr.g
            yield from ((at, g) for g in attr.graphs)


def _check_signature(session: ort.InferenceSession, manifest: Manifest, file: str) -> None:
    graph_inputs = {i.name: i for i in session.get_inputs()}
    graph_outputs = {o.name: o for o in session.get_outputs()}
    for kind, specs, graph in (
        ("input", manifest.inputs, graph_inputs),
        ("output", manifest.outputs, graph_outputs),
    ):
        for spec in specs:
            node = graph.get(spec.name)
            if node is None:
                raise ArchiveError(
                    f"manifest {kind} {spec.name!r} is not an {kind} of the ONNX graph "
                    f"{file!r} (it has {sorted(graph)})"
                )
            _check_arg(kind, spec, node.type, node.shape, file)


def _check_arg(
    kind: str, spec: TensorSignature, ort_type: str, shape: list[object], file: str
) -> None:
    expected = _ORT_TYPES[spec.dtype]
    if ort_type != expected:
        raise ArchiveError(
            f"manifest {kind} {spec.name!r} is {spec.dtype} but {file!r} declares {ort_type}; "
            f"fix its dtype in the model spec"
        )
    if len(shape) != len(spec.shape):
        raise ArchiveError(
            f"manifest {kind} {spec.name!r} has shape {list(spec.shape)} but {file!r} "
            f"declares {len(shape)} dimensions {shape}; fix its shape in the model spec"
        )
    for dim, (ours, theirs) in enumerate(zip(spec.shape, shape, strict=True)):
        if ours != -1 and isinstance(theirs, int) and theirs > 0 and ours != theirs:
            raise ArchiveError(
                f"manifest {kind} {spec.name!r} dimension {dim} is {ours} but {file!r} "
                f"fixes it to {theirs}; fix its shape in the model spec"
            )


RUNTIME = OnnxRuntime()
