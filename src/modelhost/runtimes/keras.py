"""Keras 3 runtime on the torch backend: one ``.keras`` or legacy ``.h5`` model file.

    model file ─► check_keras_file (no Lambda, TFSMLayer, custom class: keras_files.py)
               ─► keras.saving.load_model(safe_mode=True, compile=False), on the device
               ─► KerasPredictor: model(x, training=False) under torch.inference_mode

No code of the file's author runs, so the registry marks this runtime data (no
``--trust-code``). Keras runs on torch, never TensorFlow (``keras_backend.py``). Inputs and
outputs are the Keras model's, in its order: ``modelhost pack-keras`` writes them from the
model (:func:`spec_of_keras_file`), and each load checks the manifest against them.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelhost.archive.manifest import (
    ClassificationPostprocessing,
    DType,
    ImagePreprocessing,
    Manifest,
    ModelSpec,
    TensorSignature,
)
from modelhost.errors import ArchiveError, ConfigError
from modelhost.runtimes.base import LoadOptions, outputs_by_name, parse_config
from modelhost.runtimes.devices import resolve_torch_device
from modelhost.runtimes.keras_backend import import_keras
from modelhost.runtimes.keras_files import KerasConfig, check_keras_file
from modelhost.runtimes.torch import set_torch_threads, to_torch

keras = import_keras()

_DTYPES = frozenset(typing.get_args(DType))
_MESSAGE_CHARS = 400  # Keras appends whole configs to its messages; the start says it all


def load_keras_model(path: Path, device: str) -> Any:
    """Check ``path`` (:func:`check_keras_file`) and build its model on ``device``.

    Raises:
        ArchiveError: the file is refused, or Keras cannot build the model from it (an
            unknown class or function, weights that do not fit, a damaged file).
    """
    check_keras_file(path)
    try:
        with keras.device(device):
            model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError, TypeError, KeyError, OSError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArchiveError(
            f"{path.name}: Keras cannot build the model: {first[:_MESSAGE_CHARS]}"
        ) from exc
    if not isinstance(model, keras.Model) or not model.inputs:
        raise ArchiveError(
            f"{path.name} holds no built model with inputs; build it (keras.Input) before saving it"
        )
    return model


def spec_of_keras_file(
    path: Path, labels: tuple[str, ...] = (), image_scale: float | None = None
) -> tuple[ModelSpec, dict[str, Path]]:
    """The model spec and files of a Keras model file, as ``modelhost pack-keras`` packs it.

    The signature is the model's inputs and outputs (names, dtypes, shapes with -1 for the
    batch and every dynamic dimension). A model with one (batch, classes) output whose last
    layer applies softmax is a ``classification`` model (its scores are probabilities
    already); any other is ``generic`` (its outputs are answered as they are).

    Args:
        path: a ``.keras`` or ``.h5`` file.
        labels: class names, one per class, for a classification model (optional).
        image_scale: the model takes images (PNG/JPEG requests): its one input is
            (batch, H, W, C) or (batch, C, H, W) with C 1 (grayscale) or 3 (RGB); pixels
            0..255 are multiplied by this (1/255 for a model trained on ``x / 255``).

    Raises:
        ConfigError: no such file; labels for a model that is no classifier, or not one per
            class. ArchiveError: the file is refused or does not load (see
            :func:`load_keras_model`).
    """
    if not path.is_file():
        raise ConfigError(f"{path} is not a file")
    model = load_keras_model(path, "cpu")
    inputs = tuple(_signature(t.name, t, "input") for t in model.inputs)
    outputs = tuple(
        _signature(name, t, "output")
        for name, t in zip(_output_names(model), model.outputs, strict=True)
    )
    classes = outputs[0].shape[1] if len(outputs) == 1 and len(outputs[0].shape) == 2 else -1
    classifier = classes > 0 and _applies_softmax(_producer(model.outputs[0]))
    if labels and not classifier:
        raise ConfigError(
            f"--labels given, but {path.name} is no classifier (one (batch, classes) output "
            "after a softmax); leave the labels out"
        )
    if labels and len(labels) != classes:
        raise ConfigError(
            f"--labels lists {len(labels)} labels but {path.name} has {classes} classes"
        )
    spec = ModelSpec(
        runtime="keras",
        task="classification" if classifier else "generic",
        inputs=inputs,
        outputs=outputs,
        labels=labels,
        postprocessing=(
            ClassificationPostprocessing(softmax=False, top_k=min(3, classes))
            if classifier
            else None
        ),
        preprocessing=None if image_scale is None else image_preprocessing(inputs, image_scale),
        runtime_config=KerasConfig(file=path.name).model_dump(),
    )
    return spec, {path.name: path}


def image_preprocessing(inputs: tuple[TensorSignature, ...], scale: float) -> ImagePreprocessing:
    """How images become a Keras model's one image input, from its shape.

    Raises:
        ConfigError: not one input of (batch, H, W, 1|3) or (batch, 1|3, H, W), fixed sizes.
    """
    shape = inputs[0].shape if len(inputs) == 1 else ()
    if len(shape) == 4 and shape[3] in (1, 3) and min(shape[1:3]) > 0:
        return ImagePreprocessing(
            grayscale=shape[3] == 1, height=shape[1], width=shape[2], scale=scale, layout="hwc"
        )
    if len(shape) == 4 and shape[1] in (1, 3) and min(shape[2:4]) > 0:
        return ImagePreprocessing(
            grayscale=shape[1] == 1, height=shape[2], width=shape[3], scale=scale, layout="chw"
        )
    raise ConfigError(
        f"--image: the model takes {[list(s.shape) for s in inputs]}; an image model takes one "
        "input of (batch, height, width, 1 or 3) or (batch, 1 or 3, height, width)"
    )


def _signature(name: str, tensor: Any, kind: str) -> TensorSignature:
    dtype = str(tensor.dtype)
    if dtype not in _DTYPES:
        raise ArchiveError(
            f"{kind} {name!r} has dtype {dtype!r}, which modelhost does not serve; "
            f"it serves {', '.join(sorted(_DTYPES))}"
        )
    dims = tuple(-1 if d is None else int(d) for d in tensor.shape)
    return TensorSignature(name=name, dtype=typing.cast(DType, dtype), shape=(-1, *dims[1:]))


def _producer(tensor: Any) -> Any:
    """The layer that computes a symbolic tensor of a built model."""
    return tensor._keras_history.operation


def _output_names(model: Any) -> list[str]:
    names = [str(_producer(t).name) for t in model.outputs]
    if len(set(names)) == len(names):
        return names
    return [f"{name}_{i}" for i, name in enumerate(names)]  # one layer, several outputs


def _applies_softmax(layer: Any) -> bool:
    return isinstance(layer, keras.layers.Softmax) or (
        getattr(layer, "activation", None) is keras.activations.softmax
    )


def check_signature(model: Any, manifest: Manifest) -> None:
    """Raise ArchiveError unless the manifest's inputs are the model's, by name and in
    order, and it lists as many outputs as the model has."""
    names = [str(t.name) for t in model.inputs]
    declared = [spec.name for spec in manifest.inputs]
    if names != declared:
        raise ArchiveError(
            f"the manifest's inputs {declared} are not the Keras model's inputs {names} (in "
            "that order); fix inputs in the model spec, or pack the file with pack-keras"
        )
    if len(model.outputs) != len(manifest.outputs):
        raise ArchiveError(
            f"the Keras model has {len(model.outputs)} outputs but the manifest lists "
            f"{len(manifest.outputs)}; fix outputs in the model spec"
        )


class KerasPredictor:
    """Runs a Keras model on the torch backend; inputs in the manifest's (the model's) order.

    ``model(x, training=False)`` under ``torch.inference_mode``, not ``predict_on_batch``:
    on the digits CNN 4-5 % faster at batch 1, 2-3 % at batch 8, alike within the noise at
    batch 32 (benchmarks/keras_predict.py, 1 thread, 3 runs); it also keeps no autograd
    graph and returns tensors on the device.
    """

    def __init__(self, model: Any, manifest: Manifest, device: str) -> None:
        self._model = model
        self._manifest = manifest
        self._device = device
        self._input_names = [spec.name for spec in manifest.inputs]

    @property
    def device(self) -> str:
        return self._device

    @property
    def model(self) -> Any:
        """The loaded ``keras.Model``."""
        return self._model

    def predict(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [to_torch(batch[name]).to(self._device) for name in self._input_names]
        # keras.device is per thread (Keras keeps it thread-local): set it in the calling one.
        with keras.device(self._device), torch.inference_mode():
            raw = self._model(args[0] if len(args) == 1 else args, training=False)
        outputs = {}
        for name, value in outputs_by_name(self._manifest, raw).items():
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"the Keras model's output {name!r} is no tensor")
            outputs[name] = value.detach().cpu().numpy()
        return outputs


class KerasRuntime:
    """The ``keras`` runtime."""

    name = "keras"

    def load(self, model_dir: Path, manifest: Manifest, options: LoadOptions) -> KerasPredictor:
        cfg: KerasConfig = parse_config(manifest, KerasConfig)
        if cfg.file not in manifest.files:
            raise ArchiveError(f"runtime_config.file {cfg.file!r} is not in the archive")
        set_torch_threads(options.torch_threads)
        device = resolve_torch_device(options.device)
        model = load_keras_model(model_dir / cfg.file, device)
        check_signature(model, manifest)
        return KerasPredictor(model, manifest, device)


RUNTIME = KerasRuntime()
