"""A custom-handler (``python``) archive end to end: refused without ``--trust-code`` by
``serve`` and by the management API before any of its code runs (a marker its module would
write at import stays absent); served with it, warned about at start-up and audited."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from support.cli import mh, one_error_line
from support.server import running_server

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "handler"
ROWS = [[20.5, 1012.0, 47.0, 0.52], [35.0, 990.0, 90.0, 0.9]]


@pytest.fixture
def marked(tmp_path) -> tuple[Path, Path]:
    """The example handler packed with one more line at the top of its module: it writes a
    marker file when imported. (archive, marker)."""
    model = tmp_path / "model"
    shutil.copytree(EXAMPLE / "model", model)
    marker = tmp_path / "handler-code-ran"
    source = (model / "handler.py").read_text()
    future = "from __future__ import annotations\n"
    mark = f"{future}import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    (model / "handler.py").write_text(source.replace(future, mark, 1))
    archive = tmp_path / "sensors.mh"
    done = mh("pack", str(model), "--name", "sensors", "--version", "1", "--out", str(archive))
    assert done.returncode == 0, done.stderr
    return archive, marker


def test_serve_refuses_a_handler_archive_without_trust_code_before_running_it(marked):
    archive, marker = marked
    refused = mh("serve", str(archive), "--port", "0", "--management-port", "-1")
    line = one_error_line(refused)
    assert "sensors:1 is a python archive: loading it runs its author's code" in line
    assert "--trust-code" in line
    assert not marker.exists()


def test_with_trust_code_it_serves_and_says_so_at_start_up(marked):
    archive, marker = marked
    with running_server(archive, args=("--trust-code",)) as srv:
        native = httpx.post(f"{srv.url}/v1/models/sensors:predict", json={"instances": ROWS})
        v2 = httpx.post(f"{srv.url}/v2/models/sensors/infer", json={"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2, 4], "data": ROWS}
        ]})  # fmt: skip
        wrong = httpx.post(f"{srv.url}/v1/models/sensors:predict", json={"instances": [[1, 2]]})
    assert marker.read_text() == "ran"
    output = "".join(srv.output)
    assert "warning: sensors:1 runs its author's python code in this server" in output
    import hashlib

    assert hashlib.sha256(archive.read_bytes()).hexdigest() in output
    assert native.status_code == 200, native.text
    answers = native.json()["predictions"]
    assert [a["anomalous"] for a in answers] == [[False], [True]]
    assert answers[1]["score"][0] > 3.0 > answers[0]["score"][0]
    assert v2.status_code == 200, v2.text
    outputs = {o["name"]: o for o in v2.json()["outputs"]}
    np.testing.assert_allclose(
        outputs["score"]["data"], [a["score"][0] for a in answers], rtol=1e-6
    )
    assert (outputs["anomalous"]["datatype"], outputs["anomalous"]["data"]) == (
        "BOOL", [False, True],
    )  # fmt: skip
    assert wrong.status_code == 400
    assert "input 'x' wants [4]" in wrong.json()["error"]


def test_the_management_api_refuses_it_untrusted_and_audits_it_trusted(
    marked, onnx_archive, tmp_path
):
    archive, marker = marked
    upload = {"Content-Type": "application/octet-stream"}
    for trusted in (False, True):
        home = tmp_path / f"home-{trusted}"
        args = ("--home", str(home), "--management-port", "0",
                *(("--trust-code",) if trusted else ()))  # fmt: skip
        with running_server(onnx_archive, args=args) as srv:
            auth = {"Authorization": f"Bearer {srv.token_file.read_text().strip()}"}
            r = httpx.post(f"{srv.management_url}/models", content=archive.read_bytes(),
                           headers=auth | upload, timeout=60)  # fmt: skip
            served = httpx.get(f"{srv.url}/v1/models").json()["models"]
        log = mh("audit", "--home", str(home)).stdout
        if not trusted:
            assert r.status_code == 403, r.text
            assert r.json()["code"] == "untrusted_code"
            assert "--trust-code" in r.json()["error"]
            assert not marker.exists()
            assert served == ["digits"]
            assert "failed" in log
        else:
            assert r.status_code == 200, r.text
            assert marker.exists()
            assert served == ["digits", "sensors"]
            assert "runs its author's code in the server" in log
