import hashlib
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from modelhost.archive.manifest import ModelSpec
from modelhost.errors import ConfigError
from modelhost.train import digits_model, train_digits
from modelhost.train.data import load_digits_split
from modelhost.train.digits import evaluate
from modelhost.train.digits_model import DigitsCNN

OUTPUTS = (
    "weights.safetensors",
    "model.py",
    "metrics.json",
    "training_curve.png",
    "modelspec.json",
)


@pytest.fixture(scope="module")
def trained(digits_model_dir):
    """The session's default training run (tests/conftest.py), as its metrics.json says."""
    return json.loads((digits_model_dir / "metrics.json").read_text()) | {
        "out_dir": digits_model_dir
    }


@pytest.mark.slow
def test_defaults_reach_the_accuracy_bar(trained):
    assert trained["test_accuracy"] >= 0.95
    assert trained["epochs"] == 12
    assert trained["seed"] == 0


@pytest.mark.slow
def test_writes_all_outputs(trained):
    for name in OUTPUTS:
        assert (trained["out_dir"] / name).is_file(), name
    assert (trained["out_dir"] / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    model_source = Path(digits_model.__file__).read_bytes()
    assert (trained["out_dir"] / "model.py").read_bytes() == model_source
    history = trained["history"]
    assert set(history) == {"train_loss", "train_accuracy", "test_loss", "test_accuracy"}
    assert all(len(curve) == trained["epochs"] for curve in history.values())
    assert history["test_accuracy"][-1] == trained["test_accuracy"]


@pytest.mark.slow
def test_modelspec_validates(trained):
    spec = ModelSpec.model_validate_json((trained["out_dir"] / "modelspec.json").read_text())
    assert spec.runtime == "torch"
    assert spec.labels == tuple(str(i) for i in range(10))
    assert spec.inputs[0].shape == (-1, 1, 28, 28)
    assert spec.runtime_config["class_name"] == "DigitsCNN"
    assert spec.metrics["test_accuracy"] == pytest.approx(trained["test_accuracy"])


@pytest.mark.slow
def test_weights_reload_and_reproduce_the_accuracy(trained):
    model = DigitsCNN()
    model.load_state_dict(load_file(str(trained["out_dir"] / "weights.safetensors")))
    split = load_digits_split(seed=0)
    _, accuracy = evaluate(model, torch.from_numpy(split.x_test), torch.from_numpy(split.y_test))
    assert accuracy == pytest.approx(trained["test_accuracy"])


@pytest.mark.slow
def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    def weights_digest(name, seed):
        report = train_digits(
            tmp_path / name, epochs=2, seed=seed, progress=False, console=Console(quiet=True)
        )
        return hashlib.sha256((report.out_dir / "weights.safetensors").read_bytes()).digest()

    first = weights_digest("a", seed=0)
    assert weights_digest("b", seed=0) == first
    assert weights_digest("c", seed=1) != first


@pytest.mark.slow
def test_restores_global_torch_settings(tmp_path):
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    rng_state = torch.get_rng_state()
    train_digits(tmp_path, epochs=1, progress=False, console=Console(quiet=True))
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.equal(torch.get_rng_state(), rng_state)


@pytest.mark.slow
def test_logs_one_line_per_epoch_and_reports_metrics(tmp_path):
    console = Console(record=True, width=120, force_terminal=False)
    report = train_digits(tmp_path, epochs=2, seed=3, console=console, progress=True)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert (report.epochs, report.seed, report.out_dir) == (2, 3, tmp_path)
    assert report.test_accuracy == metrics["test_accuracy"]
    assert report.train_loss == metrics["train_loss"]
    text = console.export_text()
    assert "epoch   1/2  train loss" in text
    assert "epoch   2/2  train loss" in text
    assert "test accuracy" in text


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"epochs": 0}, "epochs"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
    ],
)
def test_bad_arguments_are_config_errors(tmp_path, kwargs, name):
    with pytest.raises(ConfigError, match=name):
        train_digits(tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()
