"""How the keras runtime calls a model: ``model(x, training=False)`` under
``torch.inference_mode`` against ``model.predict_on_batch(x)``, and the digits CNN built
channels-first against channels-last.

    4 variants = {model(x), predict_on_batch} x {channels_first (1,28,28), channels_last
    (28,28,1)} of the Keras digits CNN (train/digits_keras.py, random weights), each
    called from one worker thread (as the server calls predict), batches 1, 8, 32

Figures: ms per call, the best of ``--slices`` slices of ``--calls`` calls, and each
variant's ratio to ``model(x)`` channels-first. Nothing is asserted. Run
``.venv/bin/python benchmarks/keras_predict.py [--threads 1] [--slices 7]``.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from modelhost.runtimes.keras import keras
from modelhost.train.digits_keras import build_digits_cnn

BATCHES = (1, 8, 32)


def variants(model: Any) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    def call(x: np.ndarray) -> np.ndarray:
        with keras.device("cpu"), torch.inference_mode():
            out: np.ndarray = model(torch.from_numpy(x), training=False).numpy()
        return out

    def predict_on_batch(x: np.ndarray) -> np.ndarray:
        with keras.device("cpu"):
            out: np.ndarray = model.predict_on_batch(x)
        return out

    return {"model(x)": call, "predict_on_batch": predict_on_batch}


def best_ms(
    fns: dict[str, Callable[[np.ndarray], np.ndarray]],
    inputs: dict[str, np.ndarray],
    calls: int,
    slices: int,
) -> dict[str, float]:
    """The best ms per call of each ``fns[name](inputs[name])``; the slices of the variants
    take turns, so a disturbance of the machine hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for name, fn in fns.items():
        fn(inputs[name])  # warm-up
    for _ in range(slices):
        for name, fn in fns.items():
            x = inputs[name]
            start = time.perf_counter()
            for _ in range(calls):
                fn(x)
            times[name].append((time.perf_counter() - start) / calls * 1000)
    return {name: min(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--slices", type=int, default=7)
    parser.add_argument("--calls", type=int, default=100, help="calls per slice (batch 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    layouts = {"channels_first": (build_digits_cnn(), (1, 28, 28)),
               "channels_last": (build_digits_cnn("channels_last"), (28, 28, 1))}  # fmt: skip
    fns, shapes = {}, {}
    for layout, (model, shape) in layouts.items():
        for how, fn in variants(model).items():
            fns[f"{layout:<15} {how:<17}"] = fn
            shapes[f"{layout:<15} {how:<17}"] = shape
    rows: list[tuple[str, int, float]] = []

    def run() -> None:  # in a worker thread, as the server calls predict
        for batch in BATCHES:
            inputs = {name: rng.random((batch, *shapes[name]), dtype=np.float32) for name in fns}
            calls = max(10, args.calls // batch * 2)
            for name, ms in best_ms(fns, inputs, calls, args.slices).items():
                rows.append((name, batch, ms))

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    first = next(iter(fns))
    base = {batch: ms for name, batch, ms in rows if name == first}
    print(f"keras {keras.__version__} on torch {torch.__version__}, {args.threads} thread(s)")
    print(f"{'layout':<15} {'call':<17} {'batch':>5} {'ms/call':>8} {'ratio':>6}")
    for name, batch, ms in sorted(rows, key=lambda row: (row[0], row[1])):
        print(f"{name} {batch:>5} {ms:>8.3f} {ms / base[batch]:>6.2f}")


if __name__ == "__main__":
    main()
