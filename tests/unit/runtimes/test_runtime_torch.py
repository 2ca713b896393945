"""The torch eager runtime on real archives whose code, kwargs or weights are wrong: an
ArchiveError naming the file and the fault, and sys.modules left as it was."""

import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save

from modelhost.archive.manifest import ModelSpec, TensorSignature
from modelhost.errors import ArchiveError
from modelhost.runtimes import LoadOptions, get_runtime
from support.hostile_archives import LYING_SAFETENSORS, opened_archive

MODEL_PY = """
import torch


class Scale(torch.nn.Module):
    def __init__(self, factor: float = 2.0):
        super().__init__()
        if factor < 0:
            raise ValueError("factor must be >= 0")
        self.scale = torch.nn.Parameter(torch.tensor(float(factor)))

    def forward(self, x):
        return x * self.scale


class Square(torch.nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.lin = torch.nn.Linear(n, n)

    def forward(self, x):
        return self.lin(x)


class Boom(torch.nn.Module):
    def __init__(self):
        raise RuntimeError("CUDA out of memory (in the constructor)")


class Missing(Exception):
    pass


class RaisesOwnError(torch.nn.Module):
    def __init__(self):
        raise Missing("a file the author forgot")


class ReturnsList(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return [x.tolist()]


class ReturnsDict(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return {"not_y": x}


class NotAModule:
    pass
"""
WEIGHTS = save({"scale": torch.tensor(2.0)})


def _spec(class_name="Scale", init_kwargs=None, weights_file="weights.safetensors"):
    return ModelSpec(
        runtime="torch",
        inputs=(TensorSignature(name="x", dtype="float32", shape=(-1, 4)),),
        outputs=(TensorSignature(name="y", dtype="float32", shape=(-1, 4)),),
        runtime_config={
            "module_file": "model.py",
            "class_name": class_name,
            "weights_file": weights_file,
            "init_kwargs": init_kwargs or {},
        },
    )


def _load(tmp_path, spec=None, weights=WEIGHTS, model_py=MODEL_PY):
    files = {"model.py": model_py.encode(), "weights.safetensors": weights}
    opened = opened_archive(tmp_path, spec or _spec(), files)
    return get_runtime("torch").load(opened.root, opened.manifest, LoadOptions(device="cpu"))


def _archive_modules():
    return {k: v for k, v in sys.modules.items() if k.startswith("modelhost_archive_")}


def _refused(tmp_path, **kwargs):
    """The ArchiveError message of a failed load; checks sys.modules is as it was."""
    before = _archive_modules()
    with pytest.raises(ArchiveError) as info:
        _load(tmp_path, **kwargs)
    after = _archive_modules()
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)
    return str(info.value)


def test_a_good_archive_loads_and_predicts(tmp_path):
    predictor = _load(tmp_path)
    out = predictor.predict({"x": np.ones((3, 4), dtype=np.float32)})
    assert out["y"].tolist() == [[2.0] * 4] * 3
    assert predictor.device == "cpu"


# -- weights ---------------------------------------------------------------------------


@pytest.mark.parametrize("lie", sorted(LYING_SAFETENSORS))
def test_a_safetensors_file_that_lies_is_refused_naming_it(tmp_path, lie):
    message = _refused(tmp_path, weights=LYING_SAFETENSORS[lie])
    assert "'weights.safetensors'" in message
    assert "not a valid safetensors file" in message


@pytest.mark.parametrize(
    ("weights", "problem"),
    [
        ({}, "Missing key"),
        ({"scale": torch.tensor(2.0), "bias": torch.tensor(1.0)}, "Unexpected key"),
        ({"scale": torch.ones(2)}, "size mismatch"),
        ({"scale": torch.ones(2, 2)}, "size mismatch"),
        ({"Scale": torch.tensor(2.0)}, "Missing key"),
    ],
)
def test_weights_that_do_not_fit_the_class_are_refused_naming_both(tmp_path, weights, problem):
    message = _refused(tmp_path, weights=save(weights))
    assert "weights 'weights.safetensors' do not fit Scale" in message
    assert problem in message


# -- the class and its arguments -------------------------------------------------------


@pytest.mark.parametrize(
    ("class_name", "init_kwargs", "problem"),
    [
        ("Scale", {"factr": 3.0}, "unexpected keyword argument 'factr'"),
        ("Scale", {"factor": 1.0, "extra": 1}, "unexpected keyword argument 'extra'"),
        ("Square", {}, "missing a required argument: 'n'"),
        ("Boom", {"anything": 1}, "unexpected keyword argument 'anything'"),
    ],
)
def test_init_kwargs_that_do_not_fit_the_constructor_are_refused(
    tmp_path, class_name, init_kwargs, problem
):
    message = _refused(tmp_path, spec=_spec(class_name, init_kwargs))
    assert "runtime_config.init_kwargs" in message
    assert f"do not fit {class_name}(" in message
    assert "'model.py'" in message
    assert problem in message


@pytest.mark.parametrize(
    ("class_name", "init_kwargs", "raised"),
    [
        ("Scale", {"factor": -1.0}, "ValueError('factor must be >= 0')"),
        ("Square", {"n": "four"}, "TypeError"),
        ("Square", {"n": -3}, "RuntimeError"),
        ("Boom", {}, "RuntimeError('CUDA out of memory"),
        ("RaisesOwnError", {}, "Missing('a file the author forgot')"),
    ],
)
def test_a_constructor_that_raises_is_an_archive_error_naming_the_class(
    tmp_path, class_name, init_kwargs, raised
):
    message = _refused(tmp_path, spec=_spec(class_name, init_kwargs))
    assert f"{class_name}(**runtime_config.init_kwargs) in 'model.py' raised" in message
    assert raised in message


@pytest.mark.parametrize("class_name", ["Nope", "NotAModule", "torch", "Missing"])
def test_a_class_that_is_not_an_nn_module_in_the_file_is_refused(tmp_path, class_name):
    message = _refused(tmp_path, spec=_spec(class_name))
    assert f"no nn.Module named {class_name!r}" in message


@pytest.mark.parametrize(
    "model_py",
    [
        "def broken(:\n",
        "raise ImportError('needs a package the server lacks')\n",
        "import not_a_module_anywhere\n",
        "1 / 0\n",
        MODEL_PY + "\nraise RuntimeError('late')\n",
    ],
)
def test_a_module_file_that_fails_to_import_is_refused_and_forgotten(tmp_path, model_py):
    message = _refused(tmp_path, model_py=model_py)
    assert "'model.py' failed to import" in message


def test_a_failed_reload_restores_the_module_that_was_loaded_before(tmp_path):
    good = _load(tmp_path / "good")
    name = "modelhost_archive_m_1"
    module = sys.modules[name]
    with pytest.raises(ArchiveError, match="do not fit"):
        _load(tmp_path / "bad", weights=save({}))
    assert sys.modules[name] is module
    assert good.predict({"x": np.ones((1, 4), dtype=np.float32)})["y"].tolist() == [[2.0] * 4]
    del sys.modules[name]


# -- model and manifest disagree at predict --------------------------------------------


def test_an_output_that_is_not_a_tensor_is_a_value_error_naming_it(tmp_path):
    predictor = _load(tmp_path, spec=_spec("ReturnsList"))
    with pytest.raises(ValueError, match=r"model output 'y' is a list, not a tensor"):
        predictor.predict({"x": np.ones((1, 4), dtype=np.float32)})


def test_a_mapping_without_the_manifest_output_is_a_value_error(tmp_path):
    predictor = _load(tmp_path, spec=_spec("ReturnsDict"))
    with pytest.raises(ValueError, match=r"\['not_y'\].*manifest's outputs are \['y'\]"):
        predictor.predict({"x": np.ones((1, 4), dtype=np.float32)})
