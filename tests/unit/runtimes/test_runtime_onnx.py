"""The onnx runtime: tensors whose bytes would come from outside the archive are refused
before onnxruntime sees the model; external data that is an archive member loads; a
manifest that contradicts the graph is refused; thread and spin-wait options reach the
session."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph

from modelhost.archive.manifest import ModelSpec, TensorSignature
from modelhost.errors import ArchiveError
from modelhost.runtimes import LoadOptions, get_runtime, runs_code
from support.hostile_archives import HOSTILE_LOCATIONS, onnx_external_data_model, opened_archive

PLACES = ["initializer", "constant", "subgraph", "sparse"]
WEIGHTS = bytes(range(1, 17))


def _spec(file="model.onnx", dtype="uint8", shape=(16,), x="x", y="y"):
    return ModelSpec(
        runtime="onnx",
        inputs=(TensorSignature(name=x, dtype=dtype, shape=shape),),
        outputs=(TensorSignature(name=y, dtype=dtype, shape=shape),),
        runtime_config={"file": file},
    )


def _load(tmp_path, files, spec=None, options=None):
    opened = opened_archive(tmp_path, spec or _spec(), files)
    options = options or LoadOptions(device="cpu")
    return get_runtime("onnx").load(opened.root, opened.manifest, options)


def _add_model(dtype=TensorProto.FLOAT, shape=(-1, 4)):
    dims = [d if d > 0 else "batch" for d in shape]
    x = helper.make_tensor_value_info("x", dtype, dims)
    y = helper.make_tensor_value_info("y", dtype, dims)
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


# -- external data ---------------------------------------------------------------------


@pytest.mark.parametrize("location", HOSTILE_LOCATIONS)
@pytest.mark.parametrize("where", PLACES)
def test_a_tensor_reading_from_outside_the_archive_is_refused_naming_it(tmp_path, where, location):
    files = {"model.onnx": onnx_external_data_model(where, location)()}
    with pytest.raises(ArchiveError) as info:
        _load(tmp_path, files)
    message = str(info.value)
    assert message.startswith("'model.onnx': tensor 'w'")
    assert repr(location) in message
    assert "not a file of the archive" in message


@pytest.mark.parametrize("location", ["weights.bin", "./weights.bin"])
def test_external_data_that_is_an_archive_member_beside_the_model_loads(tmp_path, location):
    files = {
        "model.onnx": onnx_external_data_model("initializer", location)(),
        "weights.bin": WEIGHTS,
    }
    predictor = _load(tmp_path, files)
    out = predictor.predict({"x": np.zeros(16, dtype=np.uint8)})
    assert bytes(out["y"]) == WEIGHTS


def test_external_data_in_a_directory_below_a_model_in_a_directory_loads(tmp_path):
    files = {
        "net/model.onnx": onnx_external_data_model("initializer", "data/w.bin")(),
        "net/data/w.bin": WEIGHTS,
    }
    predictor = _load(tmp_path, files, _spec(file="net/model.onnx"))
    assert bytes(predictor.predict({"x": np.zeros(16, dtype=np.uint8)})["y"]) == WEIGHTS


def test_external_data_naming_a_member_above_the_model_directory_is_refused(tmp_path):
    # The bytes are in the archive, but onnxruntime reads only the model's own directory.
    files = {
        "net/model.onnx": onnx_external_data_model("initializer", "../w.bin")(),
        "w.bin": WEIGHTS,
    }
    with pytest.raises(ArchiveError, match=r"'net/model\.onnx'"):
        _load(tmp_path, files, _spec(file="net/model.onnx"))


def test_external_data_naming_an_archive_member_that_is_not_beside_it_is_refused(tmp_path):
    files = {"model.onnx": onnx_external_data_model("initializer", "other.bin")()}
    with pytest.raises(ArchiveError, match=r"'other\.bin', which is not a file of the archive"):
        _load(tmp_path, files)


def test_external_data_shorter_than_it_says_is_an_archive_error(tmp_path):
    files = {"model.onnx": onnx_external_data_model("initializer", "w.bin")(), "w.bin": b"12"}
    with pytest.raises(ArchiveError, match=r"'model\.onnx' is not a loadable ONNX model"):
        _load(tmp_path, files)


@pytest.mark.parametrize("location", ["/etc/passwd", "../outside.bin", "*/_ORT_MEM_ADDR_/*"])
def test_onnxruntime_itself_also_refuses_data_outside_the_model_directory(tmp_path, location):
    # What onnxruntime 1.32 does on its own, below modelhost's check: a second line of defence
    # this test watches across upgrades.
    (tmp_path / "outside.bin").write_bytes(WEIGHTS)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.onnx").write_bytes(onnx_external_data_model("initializer", location)())
    with pytest.raises(
        (Fail, InvalidGraph), match=r"(?i)external data|in-memory|not allowed|escapes"
    ):
        ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])


def test_onnx_is_data_for_the_trust_gate():
    assert runs_code("onnx") is False


# -- the model file and the signature --------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"not a protobuf \xff\xff\xff", bytes(range(256))])
def test_bytes_that_are_not_a_loadable_onnx_model_are_refused(tmp_path, raw):
    with pytest.raises(ArchiveError, match=r"'model\.onnx' is not"):
        _load(tmp_path, {"model.onnx": raw})


def test_a_model_matching_its_manifest_loads_and_predicts(tmp_path):
    predictor = _load(tmp_path, {"model.onnx": _add_model()}, _spec(dtype="float32", shape=(-1, 4)))
    out = predictor.predict({"x": np.ones((2, 4), dtype=np.float32)})
    assert out["y"].tolist() == [[2.0] * 4] * 2


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (
            _spec(dtype="float64", shape=(-1, 4)),
            "is float64 but 'model.onnx' declares tensor(float)",
        ),
        (_spec(dtype="int64", shape=(-1, 4)), "is int64 but 'model.onnx' declares tensor(float)"),
        (_spec(dtype="float32", shape=(-1,)), "declares 2 dimensions"),
        (_spec(dtype="float32", shape=(-1, 4, 1)), "declares 2 dimensions"),
        (_spec(dtype="float32", shape=(-1, 5)), "dimension 1 is 5 but 'model.onnx' fixes it to 4"),
        (
            _spec(dtype="float32", shape=(-1, 4), x="input"),
            "manifest input 'input' is not an input",
        ),
        (
            _spec(dtype="float32", shape=(-1, 4), y="logits"),
            "manifest output 'logits' is not an output",
        ),
    ],
)
def test_a_manifest_that_contradicts_the_graph_is_refused_naming_the_tensor(
    tmp_path, spec, problem
):
    with pytest.raises(ArchiveError) as info:
        _load(tmp_path, {"model.onnx": _add_model()}, spec)
    assert problem in str(info.value)


# -- session options -------------------------------------------------------------------

SPINNING_KEYS = ["session.intra_op.allow_spinning", "session.inter_op.allow_spinning"]


def _session_options(tmp_path, **options):
    """Load the Add model with ``options``, check it predicts, and read back its session's
    options."""
    predictor = _load(
        tmp_path,
        {"model.onnx": _add_model()},
        _spec(dtype="float32", shape=(-1, 4)),
        LoadOptions(device="cpu", **options),
    )
    assert predictor.predict({"x": np.ones((1, 4), dtype=np.float32)})["y"].tolist() == [[2.0] * 4]
    return predictor._session.get_session_options()


@pytest.mark.parametrize(("intra", "inter"), [(0, 0), (1, 1), (2, 4)])
def test_thread_counts_reach_the_session(tmp_path, intra, inter):
    so = _session_options(tmp_path, onnx_intra_op_threads=intra, onnx_inter_op_threads=inter)
    assert (so.intra_op_num_threads, so.inter_op_num_threads) == (intra, inter)


@pytest.mark.parametrize(("allow", "entry"), [(False, "0"), (True, "1")])
def test_spin_waiting_reaches_both_thread_pools_of_the_session(tmp_path, allow, entry):
    so = _session_options(tmp_path, onnx_allow_spinning=allow)
    assert [so.get_session_config_entry(key) for key in SPINNING_KEYS] == [entry, entry]


def test_by_default_one_inter_op_thread_and_no_spin_waiting(tmp_path):
    so = _session_options(tmp_path)
    assert so.inter_op_num_threads == 1
    assert [so.get_session_config_entry(key) for key in SPINNING_KEYS] == ["0", "0"]
