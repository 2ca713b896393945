"""The TorchScript runtime: any file torch.jit.load cannot read is an ArchiveError; and a
TorchScript file is a program that can read files, which is why it counts as code."""

import io
import zipfile

import numpy as np
import pytest
import torch

from modelhost.archive.manifest import ModelSpec, TensorSignature
from modelhost.errors import ArchiveError
from modelhost.runtimes import LoadOptions, get_runtime, runs_code
from support.hostile_archives import opened_archive

SPEC = ModelSpec(
    runtime="torchscript",
    inputs=(TensorSignature(name="x", dtype="float32", shape=(-1, 4)),),
    outputs=(TensorSignature(name="y", dtype="float32", shape=(-1, 4)),),
)


class Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


class ReadsAFile(torch.nn.Module):
    """forward() returns the first bytes of a file of the server's disk."""

    def __init__(self, path: str, size: int) -> None:
        super().__init__()
        self.path = path
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_file(self.path, shared=False, size=self.size, dtype=torch.uint8)


class ReadsAFileAtLoad(torch.nn.Module):
    """__setstate__, run by torch.jit.load itself, reads a file into ``stolen``."""

    def __init__(self, path: str, size: int) -> None:
        super().__init__()
        self.path = path
        self.size = size
        self.stolen = torch.zeros(size, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stolen

    @torch.jit.export
    def __getstate__(self) -> tuple[str, int, torch.Tensor, bool]:
        return (self.path, self.size, self.stolen, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, int, torch.Tensor, bool]) -> None:
        self.path = state[0]
        self.size = state[1]
        self.stolen = torch.from_file(state[0], shared=False, size=state[1], dtype=torch.uint8)
        self.training = state[3]


def _scripted(module):
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


def _load(tmp_path, model_pt):
    opened = opened_archive(tmp_path, SPEC, {"model.pt": model_pt})
    return get_runtime("torchscript").load(opened.root, opened.manifest, LoadOptions(device="cpu"))


def test_a_good_torchscript_file_loads_and_predicts(tmp_path):
    predictor = _load(tmp_path, _scripted(Double()))
    out = predictor.predict({"x": np.ones((2, 4), dtype=np.float32)})
    assert out["y"].tolist() == [[2.0] * 4] * 2


def _not_torchscript():
    good = _scripted(Double())
    plain_zip = io.BytesIO()
    with zipfile.ZipFile(plain_zip, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    pickled = io.BytesIO()
    torch.save({"w": torch.ones(2)}, pickled)
    return {
        "empty": b"",
        "text": b"def forward(self, x): return x\n",
        "random bytes": bytes(range(256)) * 8,
        "cut in half": good[: len(good) // 2],
        "cut before the end record": good[:-30],
        "a plain zip": plain_zip.getvalue(),
        "a torch.save pickle": pickled.getvalue(),
        "an onnx-like protobuf": b"\x08\x07\x12\x07pytorch",
    }


NOT_TORCHSCRIPT = _not_torchscript()


@pytest.mark.parametrize("kind", sorted(NOT_TORCHSCRIPT))
def test_a_file_torch_jit_load_cannot_read_is_an_archive_error_naming_it(tmp_path, kind):
    with pytest.raises(ArchiveError, match=r"'model\.pt' is not a loadable TorchScript file"):
        _load(tmp_path, NOT_TORCHSCRIPT[kind])


def test_torchscript_forward_can_read_any_file_so_it_is_code(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"top secret value")
    predictor = _load(tmp_path, _scripted(ReadsAFile(str(secret), 10)))
    out = predictor.predict({"x": np.ones((1, 4), dtype=np.float32)})
    assert bytes(out["y"].tolist()) == b"top secret"
    assert runs_code("torchscript") is True


def test_torchscript_can_read_a_file_while_it_is_loaded_so_it_is_code(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"0000")
    model_pt = _scripted(ReadsAFileAtLoad(str(secret), 4))
    secret.write_bytes(b"read at load time")
    predictor = _load(tmp_path, model_pt)
    out = predictor.predict({"x": np.ones((1, 4), dtype=np.float32)})
    assert bytes(out["y"].tolist()) == b"read"
    assert runs_code("torchscript") is True
