"""The scheduler seam: chosen by name, unknown names refused with the known ones listed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelhost.archive.manifest import ModelSpec
from modelhost.errors import ArchiveError
from modelhost.serving.batcher import build
from modelhost.serving.scheduler import scheduler_factory, scheduler_names


def test_dynamic_is_the_request_batcher():
    assert scheduler_names() == ["dynamic"]
    assert scheduler_factory("dynamic") is build


@pytest.mark.parametrize("name", ["continuous", "Dynamic", "dynamic ", ""])
def test_unknown_names_are_refused_naming_the_known_ones(name):
    with pytest.raises(ArchiveError, match=r"is not one of this server's: dynamic"):
        scheduler_factory(name)


@pytest.mark.parametrize("name", ["", "Dynamic", "dy-namic", "d" * 33, "dyn\u0430mic", "1x"])
def test_a_manifest_names_a_scheduler_in_plain_lowercase(name):
    spec = {"runtime": "onnx", "inputs": [{"name": "x", "dtype": "float32", "shape": [-1]}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": [-1]}]}  # fmt: skip
    assert ModelSpec.model_validate(spec).scheduler == "dynamic"
    with pytest.raises(ValidationError, match="scheduler"):
        ModelSpec.model_validate(spec | {"scheduler": name})
