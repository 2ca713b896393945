"""The python runtime: the archive's handler class, loaded from its file, called per batch;
every way a handler file can be broken is an ArchiveError naming it, at load."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from modelhost.archive import open_archive, pack_model_dir
from modelhost.errors import ArchiveError
from modelhost.runtimes.base import LoadOptions
from modelhost.runtimes.python import RUNTIME
from modelhost.serving.policy import BatchPolicy
from modelhost.serving.warmup import warm_up

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "handler" / "model"
POLICY = BatchPolicy(8, 0.002, 16)


def _open(tmp_path: Path, handler: str | None = None):
    model = tmp_path / "model"
    shutil.copytree(EXAMPLE, model)
    if handler is not None:
        (model / "handler.py").write_text(handler)
    pack_model_dir(model, name="sensors", version="1", out=tmp_path / "s.mh")
    return open_archive(tmp_path / "s.mh", tmp_path / "opened")


def _load(tmp_path: Path, handler: str | None = None):
    opened = _open(tmp_path, handler)
    return RUNTIME.load(opened.root, opened.manifest, LoadOptions("cpu")), opened.manifest


def test_the_example_handler_scores_rows_through_its_three_steps(tmp_path):
    predictor, manifest = _load(tmp_path)
    x = np.array([[20.0, 1013.0, 45.0, 0.5], [35.0, 990.0, 90.0, 0.9]], np.float32)
    out = predictor.predict({"x": x})
    assert out["score"].dtype == np.float32
    assert out["score"][0, 0] == 0.0  # the medians themselves
    assert out["anomalous"].tolist() == [[False], [True]]
    warm_up(predictor, manifest, POLICY, 1024**2)  # holds it to the manifest


GOOD_TAIL = "\n    def predict(self, x):\n        return x\n"


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        ("def broken(:\n", "fails to import: SyntaxError"),
        ("import no_such_module_here\n", "fails to import: ModuleNotFoundError"),
        ("raise RuntimeError('at import')\n", "fails to import: RuntimeError"),
        ("class Other:\n    pass\n", "defines no class 'Handler'"),
        ("Handler = 3\n", "defines no class 'Handler'"),
        ("class Handler:\n    def __init__(self, d):\n        pass\n", "has no predict method"),
        ("class Handler:\n    predict = 5\n", "has no predict method"),
        ("class Handler:\n    def __init__(self, d):\n        raise ValueError('no')"
         + GOOD_TAIL, "raised ValueError"),
        ("class Handler:\n    def __init__(self):\n        pass" + GOOD_TAIL, "raised TypeError"),
    ],
)  # fmt: skip
def test_a_broken_handler_file_is_refused_at_load_naming_what_is_wrong(tmp_path, handler, message):
    with pytest.raises(ArchiveError, match=message):
        _load(tmp_path, handler)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("{'score': x[:, :1].astype('float64'), 'anomalous': x[:, :1] > 0}", "is float64"),
        ("{'score': x[:, :2], 'anomalous': x[:, :1] > 0}", "has shape"),
        ("{'anomalous': x[:, :1] > 0}", "no array for output 'score'"),
        ("{'score': x[:1, :1], 'anomalous': x[:1, :1] > 0}", "has shape"),
        ("[x]", "answered a list"),
    ],
)
def test_a_handler_answering_off_its_manifest_is_refused_by_the_warm_up(tmp_path, answer, message):
    handler = (
        "import numpy as np\nclass Handler:\n    def __init__(self, d):\n        pass\n"
        f"    def predict(self, batch):\n        x = batch['x']\n        return {answer}\n"
    )
    predictor, manifest = _load(tmp_path, handler)
    with pytest.raises(ArchiveError, match=message):
        warm_up(predictor, manifest, POLICY, 1024**2)
