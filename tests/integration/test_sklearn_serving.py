"""scikit-learn end to end: ``modelhost train credit-risk`` (a Pipeline converted to ONNX,
no pickle), ``pack``, ``serve``; the shipped example applicants as JSON records, CSV and v2
per-feature tensors (also through Triton's client) get the in-process probabilities; a
wrong or missing feature name is a 400 naming it; a regressor answers its values."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from modelhost.archive import open_archive
from modelhost.runtimes.base import LoadOptions
from support.cli import mh
from support.server import running_server

pytest.importorskip("skl2onnx")
pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "credit"
CSV = {"Content-Type": "text/csv"}


@pytest.fixture(scope="module")
def credit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("credit")
    trained = mh("train", "credit-risk", "--out", str(tmp / "model"))
    assert trained.returncode == 0, trained.stderr
    assert "credit-risk: test accuracy" in trained.stdout
    archive = tmp / "credit.mh"
    done = mh("pack", str(tmp / "model"), "--name", "credit", "--version", "1",
              "--out", str(archive))  # fmt: skip
    assert done.returncode == 0, done.stderr
    opened = open_archive(archive, tmp / "opened")
    from modelhost.runtimes.onnx import RUNTIME

    predictor = RUNTIME.load(opened.root, opened.manifest, LoadOptions("cpu"))
    with running_server(archive) as srv:
        yield srv, predictor, opened.manifest


def _rows() -> tuple[list[dict[str, float]], np.ndarray]:
    records = orjson.loads((EXAMPLES / "applicants.json").read_bytes())["instances"]
    from modelhost.train.credit import FEATURES

    matrix = np.array([[r[f] for f in FEATURES] for r in records], np.float32)
    return records, matrix


def test_records_csv_and_v2_get_the_in_process_probabilities(credit):
    srv, predictor, manifest = credit
    records, matrix = _rows()
    expected = predictor.predict({"features": matrix})["probabilities"]
    labels = manifest.labels
    as_json = httpx.post(f"{srv.url}/v1/models/credit:predict",
                         content=(EXAMPLES / "applicants.json").read_bytes(),
                         headers={"Content-Type": "application/json"})  # fmt: skip
    rows_csv = (EXAMPLES / "applicants.csv").read_bytes()
    as_csv = httpx.post(f"{srv.url}/v1/models/credit:predict", content=rows_csv, headers=CSV)
    assert as_json.status_code == 200, as_json.text
    assert as_csv.json() == as_json.json()
    for answer, row in zip(as_json.json()["predictions"], expected, strict=True):
        assert answer["label"] == labels[int(row.argmax())]
        assert answer["score"] == pytest.approx(float(row.max()), abs=1e-6)
    # The shipped examples: a solid applicant and a stretched one.
    assert [a["label"] for a in as_json.json()["predictions"]] == ["repaid", "default"]
    import tritonclient.http as triton

    client = triton.InferenceServerClient(srv.url.removeprefix("http://"))
    tensors = []
    for i, name in enumerate(record for record in records[0]):
        tensor = triton.InferInput(name, [len(records)], "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(matrix[:, i]))
        tensors.append(tensor)
    answer = client.infer("credit", tensors).as_numpy("probabilities")
    meta = client.get_model_metadata("credit")
    client.close()
    np.testing.assert_allclose(answer, expected, atol=1e-6)
    assert [i["name"] for i in meta["inputs"]] == list(records[0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: {**{k: v for k, v in r.items() if k != "income"}, "incme": 1.0},
         "names unknown features 'incme'"),
        (lambda r: {k: v for k, v in r.items() if k != "late_payments"},
         "lacks the features 'late_payments'"),
        (lambda r: {**r, "income": "lots"}, "instances[0].income must be a number"),
        (lambda r: {**r, "income": float("nan")}, None),
    ],
)  # fmt: skip
def test_a_wrong_or_missing_feature_is_a_400_naming_it(credit, change, message):
    srv, _, _ = credit
    records, _ = _rows()
    body = orjson.dumps({"instances": [change(records[0])]}, option=orjson.OPT_SERIALIZE_NUMPY)
    r = httpx.post(f"{srv.url}/v1/models/credit:predict", content=body,
                   headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 400, r.text
    if message is not None:
        assert message in r.json()["error"]


def test_bad_csv_and_wrong_v2_shapes_are_400s(credit):
    srv, _, _ = credit
    header = (EXAMPLES / "applicants.csv").read_text().splitlines()[0]
    for body, fragment in (
        (header.replace("income,", "incomes,", 1) + "\n1,2,3,4,5,6\n",
         "unknown features 'incomes'"),
        (header + "\n1,2,3\n", "row 1 has 3 cells"),
        (header + "\n1,2,3,4,5,six\n", "'six' is not a number"),
    ):  # fmt: skip
        r = httpx.post(f"{srv.url}/v1/models/credit:predict", content=body.encode(), headers=CSV)
        assert r.status_code == 400, r.text
        assert fragment in r.json()["error"]
    wrong = {"inputs": [{"name": "income", "datatype": "FP32", "shape": [1, 1], "data": [1]}]}
    r = httpx.post(f"{srv.url}/v2/models/credit/infer", json=wrong)
    assert r.status_code == 400
    assert "does not match the signature [-1]" in r.json()["error"]


def test_a_regressor_serves_one_value_per_row(tmp_path):
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from modelhost.train.sklearn_export import save_sklearn

    data = load_diabetes()
    x = data.data.astype(np.float32)
    model = make_pipeline(StandardScaler(), Ridge()).fit(x, data.target)
    save_sklearn(model, tmp_path / "model", features=data.feature_names, sample=x[:40],
                 atol=1e-3)  # fmt: skip
    archive = tmp_path / "diabetes.mh"
    done = mh("pack", str(tmp_path / "model"), "--name", "diabetes", "--version", "1",
              "--out", str(archive))  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = [dict(zip(data.feature_names, map(float, row), strict=True)) for row in x[:3]]
    with running_server(archive) as srv:
        r = httpx.post(f"{srv.url}/v1/models/diabetes:predict", json={"instances": records})
    assert r.status_code == 200, r.text
    got = np.array(r.json()["predictions"], np.float64).reshape(-1)
    np.testing.assert_allclose(got, model.predict(x[:3]), rtol=1e-4)
