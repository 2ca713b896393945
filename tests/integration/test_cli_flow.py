"""The command line, as a user types it: train -> pack -> inspect -> export, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.cli import mh

pytestmark = pytest.mark.slow


def test_train_pack_inspect_export(tmp_path: Path) -> None:
    trained = mh(
        "train", "digits-cnn", "--out", "model", "--epochs", "2", "--seed", "3", cwd=tmp_path
    )
    assert trained.returncode == 0, trained.stderr
    assert "epoch   2/2" in trained.stdout
    for name in (
        "weights.safetensors",
        "model.py",
        "metrics.json",
        "training_curve.png",
        "modelspec.json",
    ):
        assert (tmp_path / "model" / name).is_file()
    assert (tmp_path / "model" / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    packed = mh(
        "pack", "model", "--name", "digits", "--version", "7", "--out", "d.mh", cwd=tmp_path
    )
    assert packed.returncode == 0, packed.stderr
    assert "packed digits:7" in packed.stdout

    shown = mh("inspect", "d.mh", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "digits:7" in shown.stdout
    assert "file digests verified" in shown.stdout
    assert "[-1, 1, 28, 28]" in shown.stdout
    manifest = json.loads(mh("inspect", "d.mh", "--json", cwd=tmp_path).stdout)
    assert manifest["name"] == "digits"
    assert manifest["preprocessing"] == {
        "kind": "image", "grayscale": True, "width": 28, "height": 28,
        "scale": 1 / 255, "mean": 0.0, "std": 1.0, "layout": "chw",
    }  # fmt: skip
    assert set(manifest["files"]) == {
        "weights.safetensors",
        "model.py",
        "metrics.json",
        "training_curve.png",
    }
    assert 0.0 < manifest["metrics"]["test_accuracy"] <= 1.0

    untrusted = mh("export", "d.mh", "--to", "onnx", "--out", "d-onnx.mh", cwd=tmp_path)
    assert untrusted.returncode == 1
    assert "--trust-code" in untrusted.stderr
    assert not (tmp_path / "d-onnx.mh").exists()
    exported = mh(
        "export", "d.mh", "--to", "onnx", "--out", "d-onnx.mh", "--trust-code", cwd=tmp_path
    )
    assert exported.returncode == 0, exported.stderr
    assert "to onnx" in exported.stdout
    assert (
        json.loads(mh("inspect", "d-onnx.mh", "--json", cwd=tmp_path).stdout)["runtime"] == "onnx"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("train", "resnet", "--out", "x"), "unknown recipe 'resnet'"),
        (("train", "digits-cnn", "--out", "x", "--epochs", "0"), "epochs"),
        (
            ("pack", "missing", "--name", "a", "--version", "1", "--out", "a.mh"),
            "is not a directory",
        ),
        (("inspect", "nothing.mh"), "no such archive file"),
        (("inspect", "notzip.mh"), "not a zip file"),
        (("export", "notzip.mh", "--to", "tensorrt", "--out", "x.mh"), "--to 'tensorrt'"),
        (("serve", "nothing.mh", "--port", "0"), "no such archive file"),
        (("serve", "nothing.mh", "--port", "70000"), "setting port"),
    ],
)
def test_cli_errors_are_one_clear_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    (tmp_path / "notzip.mh").write_text("hello")
    result = mh(*args, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_pack_names_a_bad_version(tmp_path: Path, digits_model_dir: Path) -> None:
    result = mh(
        "pack",
        str(digits_model_dir),
        "--name",
        "digits",
        "--version",
        "../1",
        "--out",
        "x.mh",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "version" in result.stderr
    assert not (tmp_path / "x.mh").exists()


def test_serve_on_a_busy_port_and_predict_without_server_are_clear(
    tmp_path: Path, digits_archive: Path
) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        served = mh("serve", str(digits_archive), "--port", str(port), "--trust-code", cwd=tmp_path)
        assert served.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}" in served.stderr
        image = Path(__file__).parents[2] / "examples" / "digits" / "images" / "digit_1.png"
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            free = closed.getsockname()[1]
        asked = mh(
            "predict",
            "--url",
            f"http://127.0.0.1:{free}",
            "--model",
            "digits",
            str(image),
            cwd=tmp_path,
        )
        assert asked.returncode == 1
        assert "cannot reach the server" in asked.stderr
