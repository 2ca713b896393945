"""The Keras path end to end: ``modelhost train digits-cnn --framework keras`` (a real .h5),
``modelhost pack``, ``modelhost serve`` (no --trust-code: Keras files are data), then the
example PNGs and tensors over HTTP; and a Keras file with a Lambda layer refused by
``pack-keras`` in one error line."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelhost.archive import open_archive
from modelhost.archive.manifest import ModelSpec
from modelhost.runtimes.base import LoadOptions
from modelhost.train.data import load_digits_split
from support.cli import mh, one_error_line
from support.paths import EXAMPLE_IMAGES
from support.server import ServerProcess, running_server

pytest.importorskip("h5py")
# Through modelhost, which picks the torch backend before Keras is first imported.
keras_runtime = pytest.importorskip("modelhost.runtimes.keras")
pytestmark = pytest.mark.slow

INFER = "/v2/models/kdigits/infer"


@pytest.fixture(scope="module")
def keras_server(keras_digits_archive: Path):
    with running_server(keras_digits_archive) as srv:  # no --trust-code
        yield srv


def test_training_writes_an_h5_and_a_spec_that_reaches_the_accuracy_bar(keras_digits_dir):
    model_dir, output = keras_digits_dir
    assert {p.name for p in model_dir.iterdir()} == {
        "cnn_model.h5", "modelspec.json", "metrics.json", "training_curve.png",
    }  # fmt: skip
    assert "epoch  15/15" in output
    assert "digits-cnn (keras): test accuracy" in output
    spec = ModelSpec.model_validate_json((model_dir / "modelspec.json").read_text())
    assert (spec.runtime, spec.task, spec.runtime_config) == (
        "keras", "classification", {"file": "cnn_model.h5"},
    )  # fmt: skip
    assert [(s.name, s.shape) for s in spec.inputs] == [("image", (-1, 1, 28, 28))]
    assert [(s.name, s.shape) for s in spec.outputs] == [("probabilities", (-1, 10))]
    assert spec.preprocessing is not None
    assert spec.preprocessing.width == 28
    assert spec.postprocessing is not None
    assert spec.postprocessing.softmax is False
    assert spec.metrics["test_accuracy"] > 0.95
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 15
    assert len(metrics["history"]["test_accuracy"]) == 15


def test_the_packed_model_reproduces_the_test_accuracy(keras_digits_archive, tmp_path):
    opened = open_archive(keras_digits_archive, tmp_path / "opened")
    predictor = keras_runtime.RUNTIME.load(opened.root, opened.manifest, LoadOptions("cpu"))
    split = load_digits_split(seed=0)
    probabilities = predictor.predict({"image": split.x_test})["probabilities"]
    accuracy = float((probabilities.argmax(1) == split.y_test).mean())
    assert accuracy == pytest.approx(opened.manifest.metrics["test_accuracy"], abs=1e-6)


def test_the_example_pngs_are_classified_right(keras_server: ServerProcess, example_images):
    assert "runtime=keras" in "".join(keras_server.output)
    for label, png in example_images.items():
        r = httpx.post(
            f"{keras_server.url}/v1/models/kdigits:predict",
            content=png,
            headers={"Content-Type": "image/png"},
        )
        assert r.status_code == 200, r.text
        (prediction,) = r.json()["predictions"]
        assert prediction["label"] == label
        assert 0.5 < prediction["score"] <= 1.0
        assert next(p["label"] for p in prediction["top_k"]) == label


def test_cli_predict_prints_the_digit(keras_server: ServerProcess):
    image = EXAMPLE_IMAGES / "digit_3.png"  # the README's example
    done = mh("predict", "--url", keras_server.url, "--model", "kdigits", str(image))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().split(": ")[1].startswith("3 ")


def test_kserve_v2_metadata_and_tensors(keras_server: ServerProcess):
    meta = httpx.get(f"{keras_server.url}/v2/models/kdigits").json()
    assert meta["platform"] == "keras"
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    split = load_digits_split(seed=0)
    x, y = split.x_test[:4], split.y_test[:4]
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [4, 1, 28, 28],
                        "data": x.ravel().tolist()}]}  # fmt: skip
    r = httpx.post(keras_server.url + INFER, json=body)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert (out["name"], out["shape"]) == ("probabilities", [4, 10])
    probabilities = np.array(out["data"]).reshape(4, 10)
    assert probabilities.argmax(1).tolist() == y.tolist()
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("shape", [[1, 784], [1, 28, 28, 1], [1, 1, 28]])
def test_wrong_shapes_over_v2_are_a_400_naming_the_input(keras_server: ServerProcess, shape):
    size = int(np.prod(shape))
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": shape,
                        "data": [0.5] * size}]}  # fmt: skip
    r = httpx.post(keras_server.url + INFER, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "invalid_input"
    assert (
        f"inputs[0].shape {shape} does not match the signature [-1, 1, 28, 28] of input "
        "'image'" in r.json()["error"]
    )
    assert httpx.get(f"{keras_server.url}/v2/models/kdigits/ready").json()["ready"] is True


def test_pack_keras_packs_the_trained_file_with_the_same_signature(keras_digits_dir, tmp_path):
    model_dir, _ = keras_digits_dir
    archive = tmp_path / "k.mh"
    done = mh("pack-keras", str(model_dir / "cnn_model.h5"), "--name", "k", "--version", "1",
              "--out", str(archive), "--labels", ",".join(map(str, range(10))))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "classification; image [-1, 1, 28, 28] -> probabilities" in done.stdout
    manifest = open_archive(archive, tmp_path / "opened").manifest
    trained = ModelSpec.model_validate_json((model_dir / "modelspec.json").read_text())
    assert (manifest.inputs, manifest.outputs, manifest.labels) == (
        trained.inputs, trained.outputs, trained.labels,
    )  # fmt: skip


def test_pack_keras_refuses_a_file_with_a_lambda_layer_in_one_line(tmp_path):
    keras = keras_runtime.keras
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Lambda(lambda x: x + 1, name="shift"),
         keras.layers.Dense(2)], name="evil",
    )  # fmt: skip
    model.save(tmp_path / "evil.h5")
    out = tmp_path / "evil.mh"
    line = one_error_line(mh("pack-keras", str(tmp_path / "evil.h5"), "--name", "evil",
                             "--version", "1", "--out", str(out)))  # fmt: skip
    assert line.startswith("error: evil.h5: layer 'shift' (Lambda) inside 'evil' is refused")
    assert "Python code of the file's author" in line
    assert not out.exists()


def test_train_refuses_an_unknown_framework_in_one_line(tmp_path):
    line = one_error_line(mh("train", "digits-cnn", "--framework", "tensorflow",
                             "--out", str(tmp_path / "x")))  # fmt: skip
    assert line == "error: --framework 'tensorflow' is not supported; use torch or keras"


def test_a_channels_last_tutorial_model_packs_with_image_and_answers_pngs(tmp_path, example_images):
    """The Keras tutorial as users write it: Input((28, 28, 1)), fit on x / 255, saved with
    model.save('cnn_model.h5'); pack-keras --image makes PNG requests work."""
    keras = keras_runtime.keras
    split = load_digits_split(seed=0)
    x_train = split.x_train.transpose(0, 2, 3, 1)  # the recipe's (N, 1, 28, 28) as NHWC
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 3, activation="relu", name="conv"),
        keras.layers.MaxPooling2D(2, name="pool"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(10, activation="softmax", name="classes"),
    ], name="tutorial")  # fmt: skip
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x_train, split.y_train, epochs=4, batch_size=64, verbose=0)
    model.save(tmp_path / "cnn_model.h5")
    archive = tmp_path / "tutorial.mh"
    done = mh("pack-keras", str(tmp_path / "cnn_model.h5"), "--name", "tutorial",
              "--version", "1", "--out", str(archive), "--image",
              "--labels", ",".join(str(d) for d in range(10)))  # fmt: skip
    assert done.returncode == 0, done.stderr
    opened = open_archive(archive, tmp_path / "opened")
    prep = opened.manifest.preprocessing
    assert prep is not None
    assert (prep.kind, prep.layout, prep.width, prep.height) == ("image", "hwc", 28, 28)
    predictor = keras_runtime.RUNTIME.load(opened.root, opened.manifest, LoadOptions("cpu"))
    from modelhost.codecs.images import decode_image

    with running_server(archive) as srv:
        answers = {
            label: httpx.post(
                f"{srv.url}/v1/models/tutorial:predict",
                content=png,
                headers={"Content-Type": "image/png"},
            )
            for label, png in example_images.items()
        }
    right = 0
    for label, r in answers.items():
        assert r.status_code == 200, r.text
        (answer,) = r.json()["predictions"]
        pixels = decode_image(example_images[label], prep)[np.newaxis]
        expected = predictor.predict({opened.manifest.inputs[0].name: pixels})
        probabilities = next(iter(expected.values()))[0]
        assert answer["label"] == str(int(probabilities.argmax()))
        assert answer["score"] == pytest.approx(float(probabilities.max()), abs=1e-5)
        right += answer["label"] == label
    assert right >= 8  # a few epochs of a small CNN: most of the ten examples
    flat = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")], name="flat")
    flat.save(tmp_path / "flat.h5")
    line = one_error_line(
        mh(
            "pack-keras",
            str(tmp_path / "flat.h5"),
            "--name",
            "t",
            "--version",
            "1",
            "--out",
            str(tmp_path / "x.mh"),
            "--image",
        )
    )
    assert "an image model takes one input of (batch, height, width, 1 or 3)" in line
