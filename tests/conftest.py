"""Session fixtures: one trained digits model (torch, and Keras), its archives, one shared
server."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

sys.path.insert(0, str(Path(__file__).parent))

from support.cli import mh
from support.paths import EXAMPLE_IMAGES
from support.server import ServerProcess, running_server

# The property tests explore the same examples on every run by default, so CI is
# repeatable; HYPOTHESIS_PROFILE=explore draws new ones (run it when changing a codec).
hypothesis_settings.register_profile("repeatable", derandomize=True)
hypothesis_settings.register_profile("explore", derandomize=False)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


@pytest.fixture(scope="session")
def digits_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits CNN trained once per session with the default settings."""
    from modelhost.train.digits import train_digits

    out = tmp_path_factory.mktemp("digits-model")
    train_digits(out, progress=False)
    return out


@pytest.fixture(scope="session")
def digits_archive(digits_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelhost.archive import pack_model_dir

    out = tmp_path_factory.mktemp("archives") / "digits.mh"
    pack_model_dir(digits_model_dir, name="digits", version="1", out=out)
    return out


@pytest.fixture(scope="session")
def onnx_archive(digits_archive: Path) -> Path:
    from modelhost.optimize.export import export_archive

    out = digits_archive.with_name("digits-onnx.mh")
    export_archive(digits_archive, out, "onnx", version="2")
    return out


@pytest.fixture(scope="session")
def torchscript_archive(digits_archive: Path) -> Path:
    from modelhost.optimize.export import export_archive

    out = digits_archive.with_name("digits-ts.mh")
    export_archive(digits_archive, out, "torchscript", version="3")
    return out


@pytest.fixture(scope="session")
def server(digits_archive: Path) -> Iterator[ServerProcess]:
    """One real server for the read-mostly HTTP tests, serving digits:1."""
    with running_server(digits_archive, args=("--max-batch-delay-ms", "5", "--trust-code")) as srv:
        yield srv


@pytest.fixture(scope="session")
def example_images() -> dict[str, bytes]:
    """label -> PNG bytes of the sample images shipped in examples/digits/images."""
    images = {
        p.stem.split("_")[1]: p.read_bytes() for p in sorted(EXAMPLE_IMAGES.glob("digit_*.png"))
    }
    assert len(images) == 10, f"expected 10 example images in {EXAMPLE_IMAGES}"
    return images


@pytest.fixture(scope="session")
def keras_digits_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The Keras digits CNN trained once per session by the CLI; (directory, its output)."""
    out = tmp_path_factory.mktemp("keras-digits") / "model"
    done = mh("train", "digits-cnn", "--framework", "keras", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    return out, done.stdout


@pytest.fixture(scope="session")
def keras_digits_archive(keras_digits_dir: tuple[Path, str]) -> Path:
    model_dir, _ = keras_digits_dir
    archive = model_dir.parent / "kdigits.mh"
    done = mh("pack", str(model_dir), "--name", "kdigits", "--version", "1",
              "--out", str(archive))  # fmt: skip
    assert done.returncode == 0, done.stderr
    return archive
