"""runtimes/registry.py: every runtime declared once, the trust table, lazy imports."""

import dataclasses
import subprocess
import sys
import typing

import pytest

from modelhost.archive.manifest import ModelSpec, Task, TensorSignature
from modelhost.errors import ArchiveError, ConfigError
from modelhost.runtimes import get_runtime, runs_code, runtime_names
from modelhost.runtimes.registry import PLATFORMS, RUNTIMES, check_spec, runtime_entry

# Which formats are code (they can execute or read files) and which are data.
TRUST = [
    ("torch", True),
    ("torchscript", True),
    ("onnx", False),
    ("transformers", False),
    ("keras", False),
    ("python", True),
]


@pytest.mark.parametrize(("name", "code"), TRUST)
def test_runs_code_says_which_formats_execute_the_archive(name, code):
    assert runs_code(name) is code


def test_every_runtime_is_declared_once_with_all_its_facts():
    assert runtime_names() == sorted(RUNTIMES)
    for name, entry in RUNTIMES.items():
        assert entry.name == name
        assert entry.module == f"modelhost.runtimes.{name}"
        assert entry.extra in ("torch", "onnx", "text", "keras", "")  # "": numpy only
        assert PLATFORMS[name] == entry.platform
    assert dict(TRUST) == {name: entry.runs_code for name, entry in RUNTIMES.items()}


def spec(runtime: str, task: str = "generic") -> ModelSpec:
    x = TensorSignature(name="x", dtype="float32", shape=(-1, 4))
    return ModelSpec(runtime=runtime, task=task, inputs=(x,), outputs=(x,))


@pytest.mark.parametrize("runtime", ["torch", "torchscript", "onnx", "keras", "python"])
@pytest.mark.parametrize("task", typing.get_args(Task))
def test_the_tensor_runtimes_serve_every_task_a_manifest_may_name(runtime, task):
    assert check_spec(spec(runtime, task)) is RUNTIMES[runtime]


@pytest.mark.parametrize("task", ["regression", "generic"])
def test_the_transformers_runtime_serves_embeddings_and_classification_only(task):
    for served in ("embedding", "classification"):
        assert check_spec(spec("transformers", served)) is RUNTIMES["transformers"]
    with pytest.raises(ArchiveError, match="it serves classification, embedding"):
        check_spec(spec("transformers", task))


@pytest.mark.parametrize("runtime", ["tensorflow", "pytorch", "torch2", "onnx_x"])
def test_a_spec_of_a_runtime_this_modelhost_lacks_is_refused_naming_the_known_ones(runtime):
    with pytest.raises(ArchiveError) as info:
        check_spec(spec(runtime))
    assert repr(runtime) in str(info.value)
    assert "keras, onnx, python, torch, torchscript, transformers" in str(info.value)


def test_a_task_a_runtime_does_not_serve_is_refused_naming_what_it_serves():
    text_only = dataclasses.replace(RUNTIMES["onnx"], tasks=frozenset({"embedding"}))
    text_only.check_task("embedding")
    refusal = r"does not serve task 'regression'; it serves embedding"
    with pytest.raises(ArchiveError, match=refusal):
        text_only.check_task("regression")


def test_platforms_are_the_kserve_strings():
    assert dict(PLATFORMS) == {
        "torch": "pytorch_eager",
        "torchscript": "pytorch_torchscript",
        "onnx": "onnx_onnxv1",
        "transformers": "transformers",
        "keras": "keras",
        "python": "python",
    }


def test_the_registry_cannot_be_changed_at_run_time():
    with pytest.raises(TypeError):
        PLATFORMS["torch"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        RUNTIMES["evil"] = RUNTIMES["onnx"]  # type: ignore[index]


@pytest.mark.parametrize("name", ["tensorflow", "", "TORCH", "torch ", "Python"])
def test_unknown_runtimes_are_a_config_error_naming_the_known_ones(name):
    for call in (runs_code, runtime_entry, get_runtime):
        with pytest.raises(ConfigError, match="unknown runtime") as info:
            call(name)
        assert repr(name) in str(info.value)
        assert "keras, onnx, python, torch, torchscript, transformers" in str(info.value)


def test_runs_code_imports_no_framework():
    script = (
        "import sys\n"
        "from modelhost.runtimes.registry import runs_code, PLATFORMS\n"
        "assert [runs_code(n) for n in ('torch', 'torchscript', 'onnx')] == [True, True, False]\n"
        "print(sorted(m for m in ('torch', 'onnxruntime', 'onnx', 'keras') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["torch", "torchscript", "onnx"])
def test_get_runtime_returns_the_runtime_of_that_name(name):
    assert get_runtime(name).name == name
