"""Archives made for tests: a deliberately slow torch model, tiny hand-made model dirs."""

from __future__ import annotations

from pathlib import Path

from modelhost.archive.manifest import Batching, ModelSpec, TensorSignature
from modelhost.archive.pack import write_archive

SLOW_MODEL = '''
import time
import torch


class Slow(torch.nn.Module):
    """Doubles its input after sleeping ``delay_s``: a stand-in for a heavy model."""

    def __init__(self, delay_s: float = 0.3):
        super().__init__()
        self.delay_s = delay_s
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        time.sleep(self.delay_s)
        return x * self.scale
'''


def slow_archive(tmp: Path, *, delay_s: float, batching: Batching | None = None) -> Path:
    """A torch archive whose forward sleeps ``delay_s`` per batch; input x (-1, 4) float32."""
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
            "init_kwargs": {"delay_s": delay_s},
        },
    )
    files = {"model.py": tmp / "model.py", "weights.safetensors": tmp / "weights.safetensors"}
    out = tmp / "slow.mh"
    write_archive(spec, files, name="slow", version="1", out=out)
    return out
