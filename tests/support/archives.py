"""Archives made for tests: a deliberately slow torch model, repacked archives."""

from __future__ import annotations

import tempfile
from pathlib import Path

from modelhost.archive.manifest import Batching, ModelSpec, TensorSignature
from modelhost.archive.open import open_archive
from modelhost.archive.pack import write_archive

SLOW_MODEL = '''
import os
import time
import torch


class Slow(torch.nn.Module):
    """Doubles its input after sleeping ``delay_s``: a stand-in for a heavy model.

    With a ``gate`` file, a batch whose first value is 1.0 waits until that file exists
    (at most a minute), so that a test decides when the model answers. With a
    ``load_gate`` file, loading waits until that file exists: the test decides when
    loading ends.
    """

    def __init__(self, delay_s: float = 0.3, gate: str = "", load_gate: str = ""):
        super().__init__()
        while load_gate and not os.path.exists(load_gate):
            time.sleep(0.005)
        self.delay_s = delay_s
        self.gate = gate
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        if self.gate and float(x.flatten()[0]) == 1.0:
            give_up = time.monotonic() + 60.0
            while not os.path.exists(self.gate) and time.monotonic() < give_up:
                time.sleep(0.005)
        time.sleep(self.delay_s)
        return x * self.scale
'''


def slow_archive(
    tmp: Path,
    *,
    delay_s: float,
    batching: Batching | None = None,
    gate: Path | None = None,
    load_gate: Path | None = None,
) -> Path:
    """A torch archive whose forward sleeps ``delay_s`` per batch; input x (-1, 4) float32.

    ``gate``: a batch starting with 1.0 waits until this file exists; ``load_gate``: its
    load waits until this file exists (see SLOW_MODEL).
    """
    import torch
    from safetensors.torch import save_file

    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "model.py").write_text(SLOW_MODEL)
    save_file({"scale": torch.tensor(2.0)}, str(tmp / "weights.safetensors"))
    spec = ModelSpec(
        runtime="torch",
        task="regression",
        inputs=(TensorSignature(name="x", dtype="float32", shape=(-1, 4)),),
        outputs=(TensorSignature(name="y", dtype="float32", shape=(-1, 4)),),
        batching=batching or Batching(max_batch_size=8, max_batch_delay_ms=1.0, max_queue=64),
        runtime_config={
            "module_file": "model.py",
            "class_name": "Slow",
            "weights_file": "weights.safetensors",
            "init_kwargs": {
                "delay_s": delay_s,
                "gate": str(gate or ""),
                "load_gate": str(load_gate or ""),
            },
        },
    )
    files = {"model.py": tmp / "model.py", "weights.safetensors": tmp / "weights.safetensors"}
    out = tmp / "slow.mh"
    write_archive(spec, files, name="slow", version="1", out=out)
    return out


def repack(archive: Path, out: Path, *, version: str | None = None, **spec_updates) -> Path:
    """The same model files under a manifest with ``spec_updates``: other bytes (other
    labels: another registry version), or a manifest that lies about its model."""
    with tempfile.TemporaryDirectory() as tmp:
        opened = open_archive(archive, Path(tmp))
        m = opened.manifest
        fields = {k: getattr(m, k) for k in ModelSpec.model_fields} | spec_updates
        files = {name: opened.root / name for name in m.files}
        write_archive(
            ModelSpec(**fields), files, name=m.name, version=version or m.version, out=out
        )
    return out
