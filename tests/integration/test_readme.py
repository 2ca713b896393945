"""The README's examples run as written (against a real server)."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_readme_python_client_example(server, monkeypatch: pytest.MonkeyPatch) -> None:
    (block,) = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(block.replace("http://127.0.0.1:8080", server.url), {})
    assert out.getvalue().strip() == "7"


def test_readme_curl_line_answers_seven(server) -> None:
    (line,) = [ln for ln in README.splitlines() if "--data-binary @examples/digits" in ln]
    image = ROOT / re.search(r"@(\S+)", line).group(1)
    r = httpx.post(
        f"{server.url}/v1/models/digits:predict",
        content=image.read_bytes(),
        headers={"Content-Type": "image/png"},
    )
    assert r.json()["predictions"][0]["label"] == "7"
    # An image model's start-up hint is that curl line, with the server's URL.
    hint = f"try: curl -s -H 'Content-Type: image/png' --data-binary @IMAGE.png {server.url}"
    assert hint in "".join(server.output)


def test_makefile_demo_prints_the_same_curl_line() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "--data-binary @examples/digits/images/digit_7.png" in makefile
    assert "/v1/models/digits:predict" in makefile
    assert os.access(ROOT / ".ci" / "run", os.X_OK)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
