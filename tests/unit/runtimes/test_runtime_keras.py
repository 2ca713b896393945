"""The keras runtime over real model files built and saved here (``.keras`` and ``.h5``):
pack-keras's spec, predictions equal to Keras's own, and every file that would run code of
its author refused at pack and at load, naming the layer."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from modelhost.archive import open_archive, write_archive
from modelhost.archive.manifest import ModelSpec
from modelhost.errors import ArchiveError, ConfigError
from modelhost.runtimes.base import LoadOptions
from modelhost.runtimes.registry import check_packable

h5py = pytest.importorskip("h5py")
# Through modelhost, which picks the torch backend before Keras is first imported.
keras = pytest.importorskip("modelhost.runtimes.keras").keras

from modelhost.runtimes.keras import RUNTIME, spec_of_keras_file  # noqa: E402
from modelhost.runtimes.keras_files import check_keras_file  # noqa: E402

SUFFIXES = (".keras", ".h5")
LAMBDA = r"layer 'double' \(Lambda\).* is refused: its function is Python code"


def classifier():
    return keras.Sequential(
        [
            keras.Input((4,), name="features"),
            keras.layers.Dense(8, activation="relu", name="hidden"),
            keras.layers.Dense(3, activation="softmax", name="probabilities"),
        ],
        name="tiny",
    )


def two_in_two_out():
    image = keras.Input((3,), name="image")
    extra = keras.Input((2,), name="extra")
    joined = keras.layers.Concatenate()([image, extra])
    scores = keras.layers.Dense(4, name="scores")(joined)
    value = keras.layers.Dense(1, name="value")(image)
    return keras.Model([image, extra], [scores, value], name="two")


def with_lambda(nested: bool):
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2, name="double")], name="inner"
    )
    if not nested:
        return inner
    x = keras.Input((4,))
    return keras.Model(x, keras.layers.Dense(2)(inner(x)), name="outer")


def save(model, path: Path) -> Path:
    model.save(path)
    return path


def archive_of(spec: ModelSpec, files: dict[str, Path], tmp: Path):
    write_archive(spec, files, name="m", version="1", out=tmp / "m.mh")
    return open_archive(tmp / "m.mh", tmp / "opened")


def rewrite_config(path: Path, change) -> Path:
    """Rewrite the model config of a saved file with ``change(config)`` (in place)."""
    if path.suffix == ".keras":
        with zipfile.ZipFile(path) as zf:
            members = {name: zf.read(name) for name in zf.namelist()}
        config = json.loads(members["config.json"])
        change(config)
        members["config.json"] = json.dumps(config).encode()
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    else:
        with h5py.File(path, "r+") as f:
            config = json.loads(f.attrs["model_config"])
            change(config)
            f.attrs["model_config"] = json.dumps(config)
    return path


def first_dense(config) -> dict:
    return next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Dense")


@pytest.fixture(scope="module")
def tiny() -> dict[str, object]:
    return {"classifier": classifier(), "two": two_in_two_out()}


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_classifier_loads_and_predicts_as_keras_does(tiny, tmp_path, suffix):
    model = tiny["classifier"]
    spec, files = spec_of_keras_file(
        save(model, tmp_path / f"tiny{suffix}"), labels=("a", "b", "c")
    )
    assert (spec.runtime, spec.task, spec.labels) == ("keras", "classification", ("a", "b", "c"))
    assert [(s.name, s.dtype, s.shape) for s in spec.inputs] == [("features", "float32", (-1, 4))]
    assert [(s.name, s.shape) for s in spec.outputs] == [("probabilities", (-1, 3))]
    assert spec.postprocessing is not None
    assert spec.postprocessing.softmax is False
    assert spec.runtime_config == {"file": f"tiny{suffix}"}
    opened = archive_of(spec, files, tmp_path)
    predictor = RUNTIME.load(opened.root, opened.manifest, LoadOptions(device="cpu"))
    x = np.random.default_rng(0).random((5, 4), dtype=np.float32)
    got = predictor.predict({"features": x})["probabilities"]
    np.testing.assert_allclose(got, model.predict_on_batch(x), atol=1e-6)
    assert got.dtype == np.float32
    assert predictor.device == "cpu"


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_two_inputs_and_two_outputs_keep_the_models_names_and_order(tiny, tmp_path, suffix):
    model = tiny["two"]
    spec, files = spec_of_keras_file(save(model, tmp_path / f"two{suffix}"))
    assert spec.task == "generic"
    assert spec.postprocessing is None
    assert [s.name for s in spec.inputs] == ["image", "extra"]
    assert [s.name for s in spec.outputs] == ["scores", "value"]
    opened = archive_of(spec, files, tmp_path)
    predictor = RUNTIME.load(opened.root, opened.manifest, LoadOptions(device="cpu"))
    rng = np.random.default_rng(1)
    batch = {"image": rng.random((2, 3), np.float32), "extra": rng.random((2, 2), np.float32)}
    # a read-only input (np.frombuffer of a request body) is served too
    batch["image"] = np.frombuffer(batch["image"].tobytes(), np.float32).reshape(2, 3)
    got = predictor.predict(batch)
    expected = model.predict_on_batch([batch["image"], batch["extra"]])
    np.testing.assert_allclose(got["scores"], expected[0], atol=1e-6)
    np.testing.assert_allclose(got["value"], expected[1], atol=1e-6)


def test_labels_must_fit_a_classifier(tiny, tmp_path):
    path = save(tiny["classifier"], tmp_path / "tiny.keras")
    with pytest.raises(ConfigError, match=r"lists 2 labels but tiny\.keras has 3 classes"):
        spec_of_keras_file(path, labels=("a", "b"))
    two = save(tiny["two"], tmp_path / "two.keras")
    with pytest.raises(ConfigError, match="is no classifier"):
        spec_of_keras_file(two, labels=("a",))


def test_a_manifest_that_names_other_inputs_is_refused_at_load(tiny, tmp_path):
    spec, files = spec_of_keras_file(save(tiny["classifier"], tmp_path / "tiny.keras"))
    renamed = spec.inputs[0].model_copy(update={"name": "pixels"})
    opened = archive_of(spec.model_copy(update={"inputs": (renamed,)}), files, tmp_path)
    with pytest.raises(ArchiveError, match=r"inputs \['pixels'\] are not the Keras model's"):
        RUNTIME.load(opened.root, opened.manifest, LoadOptions(device="cpu"))


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("nested", [False, True], ids=["top", "nested"])
def test_a_lambda_layer_is_refused_at_pack_naming_it(tmp_path, suffix, nested):
    path = save(with_lambda(nested), tmp_path / f"lambda{suffix}")
    with pytest.raises(ArchiveError, match=LAMBDA) as info:
        spec_of_keras_file(path)
    assert ("inside 'outer' > 'inner'" if nested else "inside 'inner'") in str(info.value)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_lambda_layer_is_refused_at_load_and_by_pack_of_a_model_dir(tiny, tmp_path, suffix):
    # A hand-written spec names a Lambda model: `modelhost pack` and every load refuse it.
    spec, _ = spec_of_keras_file(save(tiny["classifier"], tmp_path / f"tiny{suffix}"))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    evil = save(with_lambda(nested=True), model_dir / f"tiny{suffix}")
    with pytest.raises(ArchiveError, match=LAMBDA):
        check_packable(spec, model_dir)
    opened = archive_of(spec, {evil.name: evil}, tmp_path)
    with pytest.raises(ArchiveError, match=LAMBDA):
        RUNTIME.load(opened.root, opened.manifest, LoadOptions(device="cpu"))


def tfsm_layer(config) -> None:
    config["config"]["layers"].insert(1, {
        "module": "keras.layers", "class_name": "TFSMLayer", "registered_name": None,
        "config": {"name": "saved", "filepath": "/srv/other/saved_model", "trainable": False},
    })  # fmt: skip


def custom_module(config) -> None:
    first_dense(config).update(module="mypackage.layers", class_name="Dense")


def registered_custom(config) -> None:
    first_dense(config).update(class_name="mine>Twice", registered_name="mine>Twice")


def foreign_function(config) -> None:
    first_dense(config)["config"]["activation"] = {
        "module": "os", "class_name": "function", "config": "system", "registered_name": None,
    }  # fmt: skip


def keras_utility(config) -> None:
    first_dense(config)["config"]["activation"] = {
        "module": "keras.config", "class_name": "function",
        "config": "enable_unsafe_deserialization", "registered_name": None,
    }  # fmt: skip


def python_lambda(config) -> None:
    first_dense(config)["config"]["kernel_initializer"] = {
        "class_name": "__lambda__", "config": {"value": "4wEAAAAAAAAA"},
    }  # fmt: skip


REFUSALS = [
    (tfsm_layer, r"layer 'saved' \(TFSMLayer\) inside 'tiny' is refused: it loads a TensorFlow"),
    (custom_module, r"layer 'hidden' \(Dense\) inside 'tiny' is a custom class \(module "
     r"'mypackage.layers'\)"),
    (registered_custom, r"is a custom class \(registered as 'mine>Twice'\)"),
    (foreign_function, r"function 'system' of module 'os' inside 'tiny' > 'hidden' is refused"),
    (keras_utility, r"function 'enable_unsafe_deserialization' of module 'keras.config'"),
    (python_lambda, r"a Python lambda \(bytecode\) inside 'tiny' > 'hidden' is refused"),
]  # fmt: skip


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize(("change", "message"), REFUSALS, ids=[r[0].__name__ for r in REFUSALS])
def test_configs_naming_code_or_custom_classes_are_refused(tiny, tmp_path, suffix, change, message):
    path = rewrite_config(save(tiny["classifier"], tmp_path / f"tiny{suffix}"), change)
    with pytest.raises(ArchiveError, match=message):
        check_keras_file(path)


def test_the_compile_config_is_not_read_as_keras_never_builds_it(tiny, tmp_path):
    path = save(tiny["classifier"], tmp_path / "tiny.keras")
    custom_loss = {"module": "builtins", "class_name": "function", "config": "my_loss"}
    rewrite_config(path, lambda config: config.update(compile_config={"loss": custom_loss}))
    spec, _ = spec_of_keras_file(path)
    assert spec.task == "classification"


def test_files_that_are_no_keras_models_are_refused(tiny, tmp_path):
    weights = tmp_path / "tiny.weights.h5"
    tiny["classifier"].save_weights(weights)
    with pytest.raises(ArchiveError, match=r"holds no model config \(weights only\?\)"):
        check_keras_file(weights)
    (tmp_path / "fake.keras").write_bytes(b"not a zip")
    with pytest.raises(ArchiveError, match=r"fake.keras is not a readable .keras \(zip\) file"):
        check_keras_file(tmp_path / "fake.keras")
    (tmp_path / "fake.h5").write_bytes(b"not hdf5")
    with pytest.raises(ArchiveError, match=r"fake\.h5 is not a readable HDF5 file"):
        check_keras_file(tmp_path / "fake.h5")
    with pytest.raises(ArchiveError, match=r"model\.pt is not a Keras model file"):
        check_keras_file(tmp_path / "model.pt")
    with pytest.raises(ConfigError, match="is not a file"):
        spec_of_keras_file(tmp_path / "missing.keras")


def test_an_unknown_builtin_name_does_not_load_and_says_why(tiny, tmp_path):
    path = save(tiny["classifier"], tmp_path / "tiny.h5")
    rewrite_config(path, lambda config: first_dense(config).update(class_name="NoSuchLayer"))
    with pytest.raises(
        ArchiveError, match=r"tiny\.h5: Keras cannot build the model: .*NoSuchLayer"
    ):
        spec_of_keras_file(path)


def test_pack_checks_a_keras_model_dir_without_importing_keras_or_torch(tiny, tmp_path):
    spec, _ = spec_of_keras_file(save(tiny["classifier"], tmp_path / "tiny.h5"))
    (tmp_path / "modelspec.json").write_text(spec.model_dump_json())
    save(with_lambda(nested=False), tmp_path / "tiny.h5")
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from modelhost.archive.manifest import ModelSpec\n"
        "from modelhost.errors import ArchiveError\n"
        "from modelhost.runtimes.registry import check_packable\n"
        f"model_dir = Path({str(tmp_path)!r})\n"
        "spec = ModelSpec.model_validate_json((model_dir / 'modelspec.json').read_text())\n"
        "try:\n"
        "    check_packable(spec, model_dir)\n"
        "except ArchiveError as exc:\n"
        "    print(exc)\n"
        "print(sorted(m for m in ('keras', 'torch') if m in sys.modules))\n"
    )
    refusal, imported = run_python(script).stdout.strip().splitlines()
    assert refusal.startswith("tiny.h5: layer 'double' (Lambda) inside 'inner' is refused")
    assert imported == "[]"


def run_python(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False,
        env={"PATH": "", **env},
    )  # fmt: skip


def test_keras_runs_on_torch_unless_told_otherwise_and_another_backend_is_refused():
    script = (
        "from modelhost.runtimes.registry import get_runtime\n"
        "from modelhost.errors import ConfigError\n"
        "import os\n"
        "try:\n"
        "    get_runtime('keras')\n"
        "except ConfigError as exc:\n"
        "    print('refused:', exc)\n"
        "else:\n"
        "    import keras\n"
        "    print('backend:', keras.backend.backend(), os.environ['KERAS_BACKEND'])\n"
    )
    assert run_python(script).stdout.strip() == "backend: torch torch"
    # Refused before Keras is imported: it would import that backend's framework.
    refused = run_python(script, KERAS_BACKEND="jax").stdout.strip()
    assert refused == (
        "refused: KERAS_BACKEND is 'jax'; modelhost runs Keras on 'torch' only: unset "
        "KERAS_BACKEND or set it to torch"
    )
