"""The ``digits-cnn`` recipe in Keras 3 (torch backend): the CNN of the Keras MNIST tutorial.

    load_digits_split(seed) → Sequential: Conv2D 32 → MaxPooling2D → Conv2D 64 → MaxPooling2D
        → Flatten → Dropout 0.5 → Dense 10 softmax; adam, sparse categorical cross-entropy
        → out_dir/ cnn_model.h5  modelspec.json  metrics.json  training_curve.png

The layers read channels-first images (N, 1, 28, 28), the layout the image preprocessing
of every modelhost archive produces and the torch backend computes in (channels-last costs
transposes: 4-9 % slower at batches 1-8, 14-19 % at 32; benchmarks/keras_predict.py).
The model's input is ``image`` and its output ``probabilities``; ``modelhost pack`` turns
the directory into a ``keras`` archive that answers PNG requests as the torch recipe's does.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress

from modelhost.archive.manifest import ModelSpec
from modelhost.runtimes.keras import spec_of_keras_file
from modelhost.runtimes.keras_backend import import_keras
from modelhost.train.data import IMAGE_SIZE, NUM_CLASSES, DigitsSplit, load_digits_split
from modelhost.train.digits import (
    BATCHING,
    IMAGES,
    History,
    TrainReport,
    check_train_args,
    deterministic,
    write_curves,
)

keras = import_keras()

MODEL_FILE = "cnn_model.h5"
EPOCHS = 15  # the tutorial's
# Keras's names of the per-epoch curves, and ours (those of the torch recipe).
_CURVES = {
    "loss": "train_loss",
    "accuracy": "train_accuracy",
    "val_loss": "test_loss",
    "val_accuracy": "test_accuracy",
}


def build_digits_cnn(data_format: str = "channels_first") -> Any:
    """The tutorial's CNN: float32 images in [0, 1] → (N, 10) probabilities.

    Images are (N, 1, 28, 28) channels-first (the recipe's layout), or (N, 28, 28, 1) with
    ``data_format="channels_last"`` (Keras's default; benchmarks/keras_predict.py).
    """
    layers, fmt = keras.layers, data_format
    size = (IMAGE_SIZE, IMAGE_SIZE)
    shape = (1, *size) if fmt == "channels_first" else (*size, 1)
    return keras.Sequential(
        [
            keras.Input(shape=shape, name="image"),
            layers.Conv2D(32, kernel_size=3, activation="relu", data_format=fmt),
            layers.MaxPooling2D(pool_size=2, data_format=fmt),
            layers.Conv2D(64, kernel_size=3, activation="relu", data_format=fmt),
            layers.MaxPooling2D(pool_size=2, data_format=fmt),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(NUM_CLASSES, activation="softmax", name="probabilities"),
        ],
        name="digits_cnn",
    )


def train_digits_keras(
    out_dir: Path,
    *,
    epochs: int = EPOCHS,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 1e-3,
    console: Console | None = None,
    progress: bool = True,
) -> TrainReport:
    """Train the Keras digits CNN and write the model directory ``out_dir``.

    Deterministic: the same arguments give the same weights (``cnn_model.h5``'s bytes
    differ, HDF5 stamps times). The run seeds Python's, NumPy's, torch's and Keras's random
    generators, runs torch on one thread with deterministic algorithms, and restores the
    Python, NumPy and torch states and settings when it returns.

    Args:
        out_dir: directory to write; created if missing, existing files are overwritten.
        epochs: passes over the training split, >= 1 (the tutorial's 15).
        seed: seeds the weight init, shuffle order and dropout; in [0, 2**32).
        batch_size: samples per optimizer step, >= 1. 64, not the tutorial's 128: the
            digits are 1437 training images, not 60000 (seeds 0-2 reach 0.966-0.972).
        lr: Adam's learning rate, > 0 (Keras's default 1e-3).
        console: where epoch lines and the progress bar go (a new Console if None).
        progress: show a progress bar over epochs x batches.

    Returns:
        The :class:`TrainReport`; defaults reach a test accuracy of about 0.97.

    Raises:
        ConfigError: an argument is out of range (the message names it).

    Example:
        >>> report = train_digits_keras(Path("runs/keras"), epochs=2, progress=False)
        >>> (report.out_dir / "cnn_model.h5").exists()
        True
    """
    check_train_args(epochs=epochs, seed=seed, batch_size=batch_size, lr=lr)
    console = console if console is not None else Console()
    out_dir.mkdir(parents=True, exist_ok=True)
    started_s = time.perf_counter()
    split = load_digits_split(seed=seed)
    with deterministic(seed), _seeded(seed):
        model, history = _fit(split, epochs, batch_size, lr, console, progress)
    duration_s = time.perf_counter() - started_s
    report = TrainReport.of(history, seed=seed, duration_s=duration_s, out_dir=out_dir)
    _write_outputs(model, history, report)
    console.print(
        f"digits-cnn (keras): test accuracy {report.test_accuracy:.4f} in {duration_s:.1f} s "
        f"→ {out_dir}"
    )
    return report


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    # keras.utils.set_random_seed seeds Python's and NumPy's global generators too; give
    # the caller back theirs (torch's is restored by `deterministic`).
    python_state, numpy_state = random.getstate(), np.random.get_state()
    keras.utils.set_random_seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _fit(
    split: DigitsSplit, epochs: int, batch_size: int, lr: float, console: Console, progress: bool
) -> tuple[Any, History]:
    model = build_digits_cnn()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    batches = -(-len(split.y_train) // batch_size)
    with Progress(console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task("training digits-cnn (keras)", total=epochs * batches)

        def epoch_line(epoch: int, logs: dict[str, float]) -> None:
            console.print(
                f"epoch {epoch + 1:>3}/{epochs}  train loss {logs['loss']:.4f}  acc "
                f"{logs['accuracy']:.4f}  test loss {logs['val_loss']:.4f}  acc "
                f"{logs['val_accuracy']:.4f}"
            )

        lines = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: bar.advance(task),
            on_epoch_end=epoch_line,
        )
        fitted = model.fit(
            split.x_train,
            split.y_train,
            batch_size=batch_size,
            epochs=epochs,
            validation_data=(split.x_test, split.y_test),
            callbacks=[lines],
            verbose=0,
        )
    history: History = {ours: [float(v) for v in fitted.history[k]] for k, ours in _CURVES.items()}
    return model, history


def _write_outputs(model: Any, history: History, report: TrainReport) -> None:
    path = report.out_dir / MODEL_FILE
    with _quiet_legacy_notice():
        model.save(path)
    (report.out_dir / "modelspec.json").write_text(
        _model_spec(path, report).model_dump_json(indent=2)
    )
    write_curves(history, report)


def _model_spec(path: Path, report: TrainReport) -> ModelSpec:
    # The spec pack-keras writes for the file (which also checks that the file loads as the
    # server will load it), plus what only training knows: images, batching, metrics.
    spec, _ = spec_of_keras_file(path, labels=tuple(str(label) for label in range(NUM_CLASSES)))
    return spec.model_copy(
        update={"preprocessing": IMAGES, "batching": BATCHING, "metrics": report.final_metrics}
    )


@contextmanager
def _quiet_legacy_notice() -> Iterator[None]:
    # The recipe saves .h5 on purpose (the legacy format users ask for); Keras logs a
    # warning recommending .keras on every such save, through absl's logger.
    logger = logging.getLogger("absl")

    def keep(record: logging.LogRecord) -> bool:
        return "considered legacy" not in record.getMessage()

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)
