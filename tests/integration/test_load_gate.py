"""Every load path (file, registry, upload) goes through one gate: verified bytes, one
content per name:version, code only with --trust-code, a model that keeps its manifest."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from modelhost.archive.manifest import ModelSpec, TensorSignature
from modelhost.archive.pack import write_archive
from support.archives import repack
from support.cli import mh, one_error_line
from support.server import running_server

pytestmark = pytest.mark.slow

PNG = {"Content-Type": "image/png"}
OCTETS = {"Content-Type": "application/octet-stream"}
SECRET_FILE = Path("/etc/passwd")


def file_reader_archive(tmp: Path, target: Path = SECRET_FILE, size: int = 16) -> Path:
    """A TorchScript archive whose forward() returns the first ``size`` bytes of ``target``."""
    import torch

    class Reader(torch.nn.Module):
        def __init__(self, path: str, size: int) -> None:
            super().__init__()
            self.path = path
            self.size = size

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            data = torch.from_file(self.path, shared=False, size=self.size, dtype=torch.uint8)
            return data.to(torch.float32).unsqueeze(0).repeat(x.shape[0], 1)

    tmp.mkdir(parents=True, exist_ok=True)
    module = torch.jit.script(Reader(str(target), size))
    module.save(str(tmp / "model.pt"))
    spec = ModelSpec(
        runtime="torchscript",
        inputs=(TensorSignature(name="x", dtype="float32", shape=(-1, 4)),),
        outputs=(TensorSignature(name="y", dtype="float32", shape=(-1, size)),),
    )
    out = tmp / "reader.mh"
    write_archive(spec, {"model.pt": tmp / "model.pt"}, name="reader", version="1", out=out)
    return out


def push(archive: Path, home: Path) -> str:
    result = mh("push", str(archive), "--home", str(home))
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[1]  # "pushed digits:1 (sha256 ...)"


def test_code_formats_are_refused_without_trust_code(tmp_path, digits_archive):
    reader = file_reader_archive(tmp_path / "reader")
    for archive, runtime in ((digits_archive, "torch"), (reader, "torchscript")):
        line = one_error_line(
            mh("serve", str(archive), "--port", "0", "--management-port", "-1",
               "--home", str(tmp_path / "home"))
        )  # fmt: skip
        assert f"is a {runtime} archive" in line
        assert "--trust-code" in line


def test_an_upload_of_code_is_refused_and_audited(tmp_path, onnx_archive):
    reader = file_reader_archive(tmp_path / "reader")
    home = tmp_path / "home"
    args = ("--home", str(home), "--management-port", "0")
    with running_server(onnx_archive, args=args) as srv:  # ONNX is data: no flag needed
        auth = {"Authorization": f"Bearer {srv.token_file.read_text().strip()}"}
        r = httpx.post(
            f"{srv.management_url}/models", content=reader.read_bytes(), headers=auth | OCTETS
        )
        assert r.status_code == 403, r.text
        assert r.json()["code"] == "untrusted_code"
        assert "--trust-code" in r.json()["error"]
        described = httpx.get(f"{srv.management_url}/models", headers=auth).json()
        assert described["models"] == ["digits"]
    audit = mh("audit", "--home", str(home)).stdout
    assert "failed" in audit
    assert "torchscript" in audit


def test_with_trust_code_a_torchscript_archive_really_reads_files(tmp_path):
    # Why TorchScript counts as code: its forward() read a file of the server's machine.
    reader = file_reader_archive(tmp_path / "reader")
    with running_server(reader, args=("--trust-code", "--home", str(tmp_path / "h"))) as srv:
        r = httpx.post(f"{srv.url}/v1/models/reader:predict", json={"instances": [[0.0] * 4]})
        assert r.status_code == 200, r.text
        leaked = bytes(int(v) for v in r.json()["predictions"][0])
    assert leaked == SECRET_FILE.read_bytes()[:16]


def test_a_registry_blob_changed_on_disk_is_never_served(tmp_path, onnx_archive, digits_archive):
    home = tmp_path / "home"
    assert push(onnx_archive, home) == "digits:1"
    [blob] = [p for p in (home / "artifacts" / "objects").rglob("*") if p.is_file()]
    tampered = repack(onnx_archive, tmp_path / "other.mh", labels=tuple("abcdefghij"))
    shutil.copyfile(tampered, blob)  # a valid archive, but not the bytes that were pushed
    line = one_error_line(
        mh("serve", "digits:1", "--port", "0", "--management-port", "-1", "--home", str(home))
    )
    assert "digits:1" in line
    assert "changed on disk" in line
    # Through the management API of a running server too, with nothing left loaded.
    args = ("--home", str(home), "--management-port", "0", "--trust-code")
    with running_server(digits_archive, args=args) as srv:
        auth = {"Authorization": f"Bearer {srv.token_file.read_text().strip()}"}
        r = httpx.post(f"{srv.management_url}/models", json={"ref": "digits:1"}, headers=auth)
        assert r.status_code == 400, r.text
        assert "changed on disk" in r.json()["error"]
        assert r.json()["code"] == "archive_error"


def test_an_upload_never_shadows_a_registered_version(tmp_path, onnx_archive, example_images):
    home = tmp_path / "home"
    assert push(onnx_archive, home) == "digits:1"
    registered = mh("show", "digits:1", "--home", str(home)).stdout
    # Same name and version in its manifest, other bytes (other labels).
    impostor = repack(onnx_archive, tmp_path / "impostor.mh", labels=tuple("ABCDEFGHIJ"))
    args = ("--home", str(home), "--management-port", "0")
    with running_server(Path("digits:1"), args=args) as srv:
        auth = {"Authorization": f"Bearer {srv.token_file.read_text().strip()}"}
        r = httpx.post(
            f"{srv.management_url}/models", content=impostor.read_bytes(), headers=auth | OCTETS
        )
        assert r.status_code == 200, r.text
        assert r.json()["loaded"] == "2"  # registered as the next version, not as digits:1
        one = httpx.post(
            f"{srv.url}/v1/models/digits/versions/1:predict",
            content=example_images["3"],
            headers=PNG,
        )
        two = httpx.post(
            f"{srv.url}/v1/models/digits/versions/2:predict",
            content=example_images["3"],
            headers=PNG,
        )
        assert one.json()["predictions"][0]["label"] == "3"
        assert two.json()["predictions"][0]["label"] == "D"
        assert not list((home / "uploads").iterdir())  # the upload went into the registry
    assert mh("show", "digits:1", "--home", str(home)).stdout == registered


def test_one_name_version_never_serves_two_contents(tmp_path, onnx_archive):
    impostor = repack(onnx_archive, tmp_path / "impostor.mh", labels=tuple("ABCDEFGHIJ"))
    home = ("--home", str(tmp_path / "home"))
    line = one_error_line(
        mh("serve", str(onnx_archive), str(impostor), "--port", "0", "--management-port", "-1",
           *home)
    )  # fmt: skip
    assert "digits:2 is already served from other bytes" in line
    # The same bytes twice are one version, served once.
    with running_server(onnx_archive, onnx_archive, args=home) as srv:
        assert httpx.get(f"{srv.url}/v2/models/digits").json()["versions"] == ["2"]


# A lying manifest, and words the refusal must hold (the tensor, the lie). ONNX archives
# are caught by the runtime's check of the graph, torch ones by the warm-up's.
LIARS = [
    ({"outputs": (TensorSignature(name="logits", dtype="float64", shape=(-1, 10)),)},
     ("'logits'", "float64")),
    ({"outputs": (TensorSignature(name="logits", dtype="float32", shape=(-1, 3)),)},
     ("'logits'", "3", "shape")),
    ({"inputs": (TensorSignature(name="image", dtype="float32", shape=(-1, 1, 14, 14)),)},
     ("image", "14")),
    ({"inputs": (TensorSignature(name="image", dtype="float64", shape=(-1, 1, 28, 28)),)},
     ("image", "float64")),
    ({"outputs": (TensorSignature(name="logits", dtype="float32", shape=(-1, 10)),
                  TensorSignature(name="extra", dtype="float32", shape=(-1, 10)))},
     ("extra",)),
]  # fmt: skip


@pytest.mark.parametrize(("updates", "words"), LIARS)
@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_a_manifest_that_lies_about_its_model_is_refused_at_load(
    tmp_path, request, runtime, updates, words
):
    archive = request.getfixturevalue("onnx_archive" if runtime == "onnx" else "digits_archive")
    liar = repack(archive, tmp_path / "liar.mh", **updates)
    line = one_error_line(
        mh("serve", str(liar), "--port", "0", "--management-port", "-1", "--trust-code",
           "--home", str(tmp_path / "home"))
    )  # fmt: skip
    for word in words:
        assert word in line


def test_failed_loads_and_uploads_leave_no_files(tmp_path, onnx_archive, example_images):
    liars = [
        repack(onnx_archive, tmp_path / f"liar{i}.mh", version=f"9{i}", **{key: sigs})
        for i, (updates, _) in enumerate(LIARS[:3])
        for key, sigs in updates.items()
    ]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    home = tmp_path / "home"
    args = ("--home", str(home), "--management-port", "0")
    with running_server(onnx_archive, args=args, env={"TMPDIR": str(scratch)}) as srv:
        auth = {"Authorization": f"Bearer {srv.token_file.read_text().strip()}"}
        files_after_start = sorted(p for p in scratch.rglob("*") if p.is_file())
        for liar in liars:
            r = httpx.post(
                f"{srv.management_url}/models", content=liar.read_bytes(), headers=auth | OCTETS
            )
            assert r.status_code == 400, r.text
        assert sorted(p for p in scratch.rglob("*") if p.is_file()) == files_after_start
        assert list((home / "uploads").iterdir()) == []
        answer = httpx.post(
            f"{srv.url}/v1/models/digits:predict", content=example_images["5"], headers=PNG
        )
        assert answer.json()["predictions"][0]["label"] == "5"
    # a refused upload is not left registered either
    assert "digits:9" not in mh("ls", "--home", str(home)).stdout


@pytest.mark.parametrize("scheduler", ["continuous", "nope", "dynamic2"])
def test_an_archive_asking_for_an_unknown_scheduler_is_refused_at_load(
    tmp_path, onnx_archive, scheduler
):
    odd = repack(onnx_archive, tmp_path / "odd.mh", scheduler=scheduler)
    line = one_error_line(
        mh("serve", str(odd), "--port", "0", "--management-port", "-1",
           "--home", str(tmp_path / "home"))
    )  # fmt: skip
    assert f"scheduler {scheduler!r} is not one of this server's: dynamic" in line
