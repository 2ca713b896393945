"""write_archive and pack_model_dir: what lands in the zip, atomicity, what is refused."""

import hashlib
import os
import zipfile

import pytest
from pydantic import ValidationError

from modelhost.archive import Manifest, ModelSpec, open_archive, pack_model_dir, write_archive
from modelhost.archive.manifest import Batching, TensorSignature
from modelhost.errors import ArchiveError, ConfigError

SPEC = ModelSpec(
    runtime="onnx",
    task="classification",
    inputs=(TensorSignature(name="x", dtype="float32", shape=(-1, 1, 8, 8)),),
    outputs=(TensorSignature(name="logits", dtype="float32", shape=(-1, 3)),),
    labels=("a", "b", "c"),
    batching=Batching(max_batch_size=4, max_batch_delay_ms=1.0, max_queue=16),
    runtime_config={"model_file": "model.onnx"},
    metrics={"accuracy": 0.97},
)
CONTENTS = {"model.onnx": b"\x08\x07" + bytes(300), "sub/vocab.txt": b"a\nb\nc\n"}


def _files(root):
    paths = {}
    for name, data in CONTENTS.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths[name] = path
    return paths


def _model_dir(root, spec_json=None):
    _files(root)
    (root / "modelspec.json").write_text(spec_json or SPEC.model_dump_json())
    return root


# -- write_archive ---------------------------------------------------------------------


def test_write_archive_lists_every_file_with_its_digest_and_size(tmp_path):
    manifest = write_archive(
        SPEC, _files(tmp_path / "src"), name="digits", version="1.0-rc_2", out=tmp_path / "a.mh"
    )
    assert manifest.name == "digits"
    assert manifest.version == "1.0-rc_2"
    assert manifest.format_version == 1
    assert {k: (v.sha256, v.size) for k, v in manifest.files.items()} == {
        name: (hashlib.sha256(data).hexdigest(), len(data)) for name, data in CONTENTS.items()
    }
    assert ModelSpec(**manifest.model_dump(include=set(ModelSpec.model_fields))) == SPEC


def test_written_zip_holds_the_manifest_and_the_files_only(tmp_path):
    out = tmp_path / "a.mh"
    manifest = write_archive(SPEC, _files(tmp_path / "src"), name="m", version="1", out=out)
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["manifest.json", "model.onnx", "sub/vocab.txt"]
        assert Manifest.model_validate_json(zf.read("manifest.json")) == manifest
        for name, data in CONTENTS.items():
            assert zf.read(name) == data


def test_write_archive_creates_the_output_directory(tmp_path):
    out = tmp_path / "deep" / "er" / "a.mh"
    write_archive(SPEC, _files(tmp_path / "src"), name="m", version="1", out=out)
    assert zipfile.is_zipfile(out)


def test_write_archive_leaves_no_temporary_file(tmp_path):
    files = _files(tmp_path / "src")
    out_dir = tmp_path / "out"
    write_archive(SPEC, files, name="m", version="1", out=out_dir / "a.mh")
    write_archive(SPEC, files, name="m", version="2", out=out_dir / "a.mh")
    assert os.listdir(out_dir) == ["a.mh"]
    assert open_archive(out_dir / "a.mh", tmp_path / "into").manifest.version == "2"


def test_write_archive_failing_at_the_rename_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "out" / "a.mh"
    out.mkdir(parents=True)  # a directory where the archive should go: the rename fails
    with pytest.raises(OSError, match=r"a\.mh"):
        write_archive(SPEC, _files(tmp_path / "src"), name="m", version="1", out=out)
    assert os.listdir(out.parent) == ["a.mh"]
    assert out.is_dir()


def test_write_archive_with_no_files_writes_a_manifest_only_archive(tmp_path):
    out = tmp_path / "empty.mh"
    manifest = write_archive(SPEC, {}, name="m", version="1", out=out)
    assert manifest.files == {}
    assert open_archive(out, tmp_path / "into").manifest == manifest


def test_write_archive_refuses_manifest_json_as_a_member(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    out = tmp_path / "out" / "a.mh"
    with pytest.raises(ArchiveError, match=r"manifest\.json is reserved"):
        write_archive(
            SPEC, {"manifest.json": tmp_path / "manifest.json"}, name="m", version="1", out=out
        )
    assert not out.parent.exists()


@pytest.mark.parametrize("member", ["../x", "/abs", "a\\b", "a//b", ""])
def test_write_archive_refuses_unsafe_member_names(tmp_path, member):
    (tmp_path / "f").write_bytes(b"1")
    with pytest.raises(ArchiveError) as info:
        write_archive(SPEC, {member: tmp_path / "f"}, name="m", version="1", out=tmp_path / "a.mh")
    assert repr(member) in str(info.value)
    assert not (tmp_path / "a.mh").exists()


@pytest.mark.parametrize(
    ("name", "version", "field"),
    [
        ("", "1", "name"),
        ("-lead", "1", "name"),
        ("has space", "1", "name"),
        ("a/b", "1", "name"),
        ("x" * 129, "1", "name"),
        ("é", "1", "name"),
        ("m", "", "version"),
        ("m", "../1", "version"),
        ("m", "1 0", "version"),
        ("m", ".1", "version"),
    ],
)
def test_write_archive_refuses_a_bad_name_or_version(tmp_path, name, version, field):
    out = tmp_path / "a.mh"
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        write_archive(SPEC, _files(tmp_path / "src"), name=name, version=version, out=out)
    assert not out.exists()


@pytest.mark.parametrize("name", ["m", "digits", "A9", "x" * 128, "v1.2.3-rc_1"])
def test_write_archive_accepts_good_names(tmp_path, name):
    manifest = write_archive(SPEC, {}, name=name, version=name, out=tmp_path / "a.mh")
    assert (manifest.name, manifest.version) == (name, name)


# -- manifest and spec validation ------------------------------------------------------


@pytest.mark.parametrize("shape", [(), (0,), (-2,), (-1, 0), (4, -3)])
def test_tensor_signature_refuses_bad_shapes(shape):
    with pytest.raises(ValidationError, match="shape"):
        TensorSignature(name="x", dtype="float32", shape=shape)


@pytest.mark.parametrize("shape", [(-1,), (1,), (-1, 1, 28, 28), (-1, -1)])
def test_tensor_signature_accepts_good_shapes(shape):
    assert TensorSignature(name="x", dtype="float32", shape=shape).shape == shape


def test_model_spec_refuses_unknown_fields_and_empty_signatures():
    doc = SPEC.model_dump()
    with pytest.raises(ValidationError, match="surprise"):
        ModelSpec(**doc, surprise=1)
    with pytest.raises(ValidationError, match="inputs"):
        ModelSpec(**{**doc, "inputs": ()})


# -- pack_model_dir --------------------------------------------------------------------


def test_pack_model_dir_round_trips_through_open_archive(tmp_path):
    model_dir = _model_dir(tmp_path / "model")
    out = tmp_path / "m.mh"
    manifest = pack_model_dir(model_dir, name="m", version="3", out=out)
    assert set(manifest.files) == {"model.onnx", "sub/vocab.txt"}
    assert manifest.labels == SPEC.labels
    assert manifest.batching == SPEC.batching
    opened = open_archive(out, tmp_path / "into")
    assert opened.manifest == manifest
    for name, data in CONTENTS.items():
        assert (opened.root / name).read_bytes() == data
    assert not (opened.root / "modelspec.json").exists()


@pytest.mark.parametrize("target", ["model.onnx", "sub"])
def test_pack_model_dir_refuses_a_symlink(tmp_path, target):
    model_dir = _model_dir(tmp_path / "model")
    (model_dir / "link").symlink_to(model_dir / target)
    with pytest.raises(ConfigError, match="is a link") as info:
        pack_model_dir(model_dir, name="m", version="1", out=tmp_path / "m.mh")
    assert str(model_dir / "link") in str(info.value)
    assert not (tmp_path / "m.mh").exists()


def test_pack_model_dir_refuses_a_dir_without_modelspec(tmp_path):
    model_dir = tmp_path / "model"
    _files(model_dir)
    with pytest.raises(ConfigError, match=r"modelspec\.json"):
        pack_model_dir(model_dir, name="m", version="1", out=tmp_path / "m.mh")


def test_pack_model_dir_refuses_a_missing_dir(tmp_path):
    with pytest.raises(ConfigError, match="not a directory"):
        pack_model_dir(tmp_path / "nope", name="m", version="1", out=tmp_path / "m.mh")


@pytest.mark.parametrize(
    ("spec_json", "field"),
    [
        ('{"runtime": "Tensor Flow", "inputs": [], "outputs": []}', "runtime"),
        (SPEC.model_dump_json().replace('"float32"', '"float8"', 1), "inputs.0.dtype"),
        ("not json", "modelspec.json"),
    ],
)
def test_pack_model_dir_refuses_an_invalid_modelspec(tmp_path, spec_json, field):
    model_dir = _model_dir(tmp_path / "model", spec_json)
    with pytest.raises(ConfigError) as info:
        pack_model_dir(model_dir, name="m", version="1", out=tmp_path / "m.mh")
    assert field in str(info.value)
    assert "modelspec.json" in str(info.value)


def test_pack_model_dir_refuses_a_bad_name(tmp_path):
    with pytest.raises(ConfigError, match=r"^name: "):
        pack_model_dir(
            _model_dir(tmp_path / "model"), name="../m", version="1", out=tmp_path / "m.mh"
        )


@pytest.mark.parametrize(
    ("name", "version", "field"), [("m\n", "1", "name"), ("m", "1\n", "version")]
)
def test_write_archive_refuses_a_trailing_newline_in_name_or_version(
    tmp_path, name, version, field
):
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        write_archive(SPEC, {}, name=name, version=version, out=tmp_path / "a.mh")
