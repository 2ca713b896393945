"""Exported archives (ONNX, TorchScript) match the torch model on the digits test split."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from modelhost.archive import open_archive
from modelhost.errors import ConfigError
from modelhost.optimize.export import export_archive
from modelhost.runtimes import LoadOptions, get_runtime
from modelhost.train.data import load_digits_split
from support.server import running_server

pytestmark = pytest.mark.slow


def predict_all(archive: Path, into: Path) -> tuple[np.ndarray, str]:
    opened = open_archive(archive, into)
    predictor = get_runtime(opened.manifest.runtime).load(
        opened.root, opened.manifest, LoadOptions(device="cpu")
    )
    x = load_digits_split(seed=0).x_test
    return predictor.predict({"image": x})["logits"], opened.manifest.runtime


@pytest.mark.parametrize("exported", ["onnx_archive", "torchscript_archive"])
def test_exported_outputs_match_torch_on_the_test_split(
    exported: str, digits_archive: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    reference, runtime = predict_all(digits_archive, tmp_path / "torch")
    assert runtime == "torch"
    logits, runtime = predict_all(request.getfixturevalue(exported), tmp_path / "exported")
    assert runtime in ("onnx", "torchscript")
    assert logits.shape == (360, 10)
    assert np.max(np.abs(logits - reference)) <= 1e-4
    y = load_digits_split(seed=0).y_test
    assert (logits.argmax(1) == y).mean() >= 0.95


def test_export_refuses_a_non_torch_archive(onnx_archive: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="export needs a torch one"):
        export_archive(onnx_archive, tmp_path / "again.mh", "onnx")


def test_export_refuses_when_outputs_differ_beyond_atol(
    digits_archive: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="refusing to write"):
        export_archive(digits_archive, tmp_path / "strict.mh", "onnx", atol=1e-12)
    assert not (tmp_path / "strict.mh").exists()


def test_three_runtimes_served_side_by_side(
    digits_archive: Path, onnx_archive: Path, torchscript_archive: Path, example_images
) -> None:
    with running_server(
        digits_archive, onnx_archive, torchscript_archive, args=("--trust-code",)
    ) as srv:
        text = "".join(srv.output)
        for line in (
            "digits:1  runtime=torch",
            "digits:2  runtime=onnx",
            "digits:3  runtime=torchscript",
        ):
            assert line in text
        meta = httpx.get(f"{srv.url}/v2/models/digits").json()
        assert meta["versions"] == ["1", "2", "3"]
        platforms = {
            v: httpx.get(f"{srv.url}/v2/models/digits/versions/{v}").json()["platform"]
            for v in ("1", "2", "3")
        }
        assert platforms == {"1": "pytorch_eager", "2": "onnx_onnxv1", "3": "pytorch_torchscript"}
        for version in ("1", "2", "3"):
            for label, png in example_images.items():
                r = httpx.post(
                    f"{srv.url}/v1/models/digits/versions/{version}:predict",
                    content=png, headers={"Content-Type": "image/png"},
                )  # fmt: skip
                assert r.json()["predictions"][0]["label"] == label
                assert r.headers["x-model-version"] == version
