"""open_archive and check_member_name against real and hand-crafted hostile archives."""

import hashlib
import stat
import zipfile

import orjson
import pytest

from modelhost.archive import ArchiveLimits, ModelSpec, open_archive, write_archive
from modelhost.archive.manifest import TensorSignature
from modelhost.archive.paths import check_member_name
from modelhost.errors import ArchiveError
from support.hostile_archives import manifest_json, raw_zip

SPEC = ModelSpec(
    runtime="onnx",
    inputs=(TensorSignature(name="x", dtype="float32", shape=(-1, 4)),),
    outputs=(TensorSignature(name="y", dtype="float32", shape=(-1, 2)),),
    labels=("cat", "dog"),
)
FILES = {
    "model.onnx": bytes(range(256)) * 4,
    "extra/labels.txt": b"cat\ndog\n",
}
UNSAFE_NAMES = [
    "../evil.py",
    "a/../../x",
    "/etc/passwd",
    "C:\\x",
    "C:x",
    "a\\b",
    "a//b",
    "./a",
    "a/./b",
    "a\x01b",
    "x" * 256,
]


def _manifest_json(listing, /, **changes):
    """manifest.json bytes listing ``listing`` (name -> bytes) for SPEC, fields replaced."""
    return manifest_json(listing, spec=SPEC, **changes)


def _archive(tmp_path, listed=None, members=None, manifest=None):
    """A zip with manifest.json listing ``listed`` and holding ``members`` (default FILES)."""
    listed = FILES if listed is None else listed
    members = list(FILES.items()) if members is None else members
    manifest = _manifest_json(listed) if manifest is None else manifest
    return raw_zip(tmp_path / "hostile.mh", [("manifest.json", manifest), *members])


def _open_error(path, tmp_path, limits=None):
    with pytest.raises(ArchiveError) as info:
        open_archive(path, tmp_path / "into", limits)
    return str(info.value)


def _write_good(tmp_path):
    src = tmp_path / "src"
    paths = {}
    for name, data in FILES.items():
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths[name] = path
    out = tmp_path / "good.mh"
    manifest = write_archive(SPEC, paths, name="m", version="1", out=out)
    return out, manifest


# -- round trip ------------------------------------------------------------------------


def test_round_trip_gives_the_written_manifest_and_identical_files(tmp_path):
    out, written = _write_good(tmp_path)
    opened = open_archive(out, tmp_path / "into")
    assert opened.manifest == written
    assert opened.root == tmp_path / "into"
    assert opened.path == out
    assert opened.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    for name, data in FILES.items():
        assert (opened.root / name).read_bytes() == data
    extracted = {p.relative_to(opened.root).as_posix() for p in opened.root.rglob("*")}
    assert extracted == {"model.onnx", "extra", "extra/labels.txt"}


def test_hand_made_archive_with_directory_entries_opens(tmp_path):
    members = [("extra/", b""), *FILES.items()]
    opened = open_archive(_archive(tmp_path, members=members), tmp_path / "into")
    assert set(opened.manifest.files) == set(FILES)
    assert (opened.root / "extra" / "labels.txt").read_bytes() == FILES["extra/labels.txt"]


def test_limits_at_exactly_the_largest_member_still_open(tmp_path):
    path = _archive(tmp_path)
    largest = max(info.file_size for info in zipfile.ZipFile(path).infolist())
    limits = ArchiveLimits(max_member_bytes=largest, max_members=3)
    opened = open_archive(path, tmp_path / "into", limits)
    assert (opened.root / "model.onnx").read_bytes() == FILES["model.onnx"]


# -- tampering -------------------------------------------------------------------------


def test_changed_file_bytes_are_caught_by_sha256(tmp_path):
    tampered = bytearray(FILES["model.onnx"])
    tampered[10] ^= 0xFF
    members = [("model.onnx", bytes(tampered)), ("extra/labels.txt", FILES["extra/labels.txt"])]
    message = _open_error(_archive(tmp_path, members=members), tmp_path)
    assert "sha256" in message
    assert "modified" in message
    assert "'model.onnx'" in message
    assert not (tmp_path / "into" / "model.onnx").exists()


def test_changed_file_size_is_caught(tmp_path):
    members = [("model.onnx", FILES["model.onnx"] + b"!"), ("extra/labels.txt", b"cat\ndog\n")]
    message = _open_error(_archive(tmp_path, members=members), tmp_path)
    assert "'model.onnx'" in message
    assert f"{len(FILES['model.onnx']) + 1} bytes" in message
    assert "modified" in message


def test_tampered_copy_of_a_written_archive_is_refused(tmp_path):
    out, _ = _write_good(tmp_path)
    with zipfile.ZipFile(out) as zf:
        manifest = zf.read("manifest.json")
    evil = raw_zip(
        tmp_path / "evil.mh",
        [
            ("manifest.json", manifest),
            ("extra/labels.txt", b"cat\nowl\n"),
            ("model.onnx", FILES["model.onnx"]),
        ],
    )
    message = _open_error(evil, tmp_path)
    assert "sha256 of 'extra/labels.txt'" in message


# -- unsafe member names ---------------------------------------------------------------


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_unsafe_zip_member_name_is_refused(tmp_path, name):
    members = [*FILES.items(), (zipfile.ZipInfo(name), b"pwned")]
    message = _open_error(_archive(tmp_path, members=members), tmp_path)
    assert repr(name) in message
    assert not (tmp_path / "into").exists()


def test_unsafe_directory_member_is_refused(tmp_path):
    members = [*FILES.items(), ("../outside/", b"")]
    message = _open_error(_archive(tmp_path, members=members), tmp_path)
    assert "'../outside'" in message
    assert "path traversal" in message


def test_empty_zip_member_name_is_refused(tmp_path):
    members = [*FILES.items(), (zipfile.ZipInfo(""), b"pwned")]
    message = _open_error(_archive(tmp_path, members=members), tmp_path)
    assert "''" in message


@pytest.mark.parametrize("name", [*UNSAFE_NAMES, "", "a/"])
def test_unsafe_name_listed_in_the_manifest_is_refused(tmp_path, name):
    listed = {**FILES, name: b"pwned"}
    message = _open_error(_archive(tmp_path, listed=listed), tmp_path)
    assert repr(name) in message
    assert not (tmp_path / "into").exists()


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "empty"),
        ("x" * 256, "longer than 255"),
        ("a\nb", "control characters"),
        ("a\x00", "control characters"),
        ("/abs", "absolute"),
        ("a\\b", "backslashes"),
        ("C:/x", "absolute"),
        ("../x", "path traversal"),
        ("a/../x", "path traversal"),
        ("a/", "empty"),
        ("a//b", "empty"),
        (".", "'.'"),
        ("a/./b", "'.'"),
        ("a\x7fb", "control characters"),
        ("w\udc80.bin", "lone surrogates"),
        ("é" * 128, "over 255 UTF-8 bytes"),
        ("dir/" + "日" * 86, "over 255 UTF-8 bytes"),
    ],
)
def test_check_member_name_refuses(name, problem):
    with pytest.raises(ArchiveError, match=problem) as info:
        check_member_name(name)
    assert repr(name) in str(info.value)


@pytest.mark.parametrize(
    "name",
    ["a", "model.onnx", "dir/sub/w.bin", "a..b", ".hidden", "x" * 255, "ünïcode.txt", "é" * 127],
)
def test_check_member_name_accepts(name):
    assert check_member_name(name) == name


# -- links, encryption, limits ---------------------------------------------------------


def test_symlink_member_is_refused(tmp_path):
    link = zipfile.ZipInfo("model.onnx")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    members = [(link, b"/etc/passwd"), ("extra/labels.txt", FILES["extra/labels.txt"])]
    message = _open_error(_archive(tmp_path, members=members), tmp_path)
    assert "'model.onnx'" in message
    assert "symbolic link" in message
    assert not (tmp_path / "into").exists()


def test_encrypted_member_is_refused(tmp_path):
    path = _archive(tmp_path)
    with zipfile.ZipFile(path) as zf:
        start = zf.start_dir
    raw = bytearray(path.read_bytes())
    central = raw.find(b"PK\x01\x02", start)  # first central record: manifest.json
    central = raw.find(b"PK\x01\x02", central + 4)  # second: model.onnx
    raw[central + 8] |= 0x01  # general purpose flag bit 0: encrypted
    path.write_bytes(bytes(raw))
    message = _open_error(path, tmp_path)
    assert "'model.onnx'" in message
    assert "encrypted" in message


def test_member_over_max_member_bytes_is_refused(tmp_path):
    limit = len(FILES["model.onnx"]) - 1
    message = _open_error(_archive(tmp_path), tmp_path, ArchiveLimits(max_member_bytes=limit))
    assert "'model.onnx'" in message
    assert f"limit is {limit}" in message


def test_members_over_max_total_bytes_are_refused(tmp_path):
    manifest = _manifest_json({"a": b"1" * 60, "b": b"2" * 60})
    path = raw_zip(
        tmp_path / "big.mh", [("manifest.json", manifest), ("a", b"1" * 60), ("b", b"2" * 60)]
    )
    limits = ArchiveLimits(max_total_bytes=len(manifest) + 100)
    message = _open_error(path, tmp_path, limits)
    assert "at 'b'" in message
    assert "max_archive_total_bytes" in message


def test_too_many_members_are_refused(tmp_path):
    message = _open_error(_archive(tmp_path), tmp_path, ArchiveLimits(max_members=2))
    assert "3 members" in message
    assert "limit is 2" in message


def test_duplicate_member_names_are_refused(tmp_path):
    # raw_zip writes the duplicate as it is (zipfile's own warning about it is silenced)
    path = _archive(tmp_path, members=[*FILES.items(), ("model.onnx", FILES["model.onnx"])])
    message = _open_error(path, tmp_path)
    assert "'model.onnx'" in message
    assert "twice" in message


# -- manifest and listing --------------------------------------------------------------


def test_unlisted_member_is_refused(tmp_path):
    members = [*FILES.items(), ("extra.py", b"import os")]
    message = _open_error(_archive(tmp_path, members=members), tmp_path)
    assert "'extra.py'" in message
    assert "not listed" in message


def test_listed_but_missing_file_is_refused(tmp_path):
    listed = {**FILES, "weights.bin": b"\0" * 8}
    message = _open_error(_archive(tmp_path, listed=listed), tmp_path)
    assert "'weights.bin'" in message
    assert "missing" in message


def test_no_manifest_is_refused(tmp_path):
    path = raw_zip(tmp_path / "bare.mh", list(FILES.items()))
    message = _open_error(path, tmp_path)
    assert "manifest.json" in message
    assert "bare.mh" in message


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "bad name!"}, "field name:"),
        ({"version": "../1"}, "field version:"),
        ({"inputs": []}, "field inputs:"),
        ({"inputs": [{"name": "x", "dtype": "complex64", "shape": [-1]}]}, "inputs.0.dtype"),
        ({"outputs": [{"name": "y", "dtype": "float32", "shape": [0]}]}, "outputs.0.shape"),
        ({"runtime": "Tensor Flow"}, "field runtime:"),
        ({"format_version": 2}, "field format_version:"),
        ({"files": {"a": {"sha256": "nothex", "size": 1}}}, "files.a.sha256"),
        ({"files": {"a": {"sha256": "0" * 64, "size": -1}}}, "files.a.size"),
        ({"surprise": 1}, "field surprise:"),
    ],
)
def test_manifest_with_a_bad_field_names_it(tmp_path, changes, field):
    path = _archive(tmp_path, manifest=_manifest_json(FILES, **changes))
    message = _open_error(path, tmp_path)
    assert message.startswith("manifest.json: ")
    assert field in message


def test_manifest_missing_a_field_names_it(tmp_path):
    doc = orjson.loads(_manifest_json(FILES))
    del doc["name"]
    message = _open_error(_archive(tmp_path, manifest=orjson.dumps(doc)), tmp_path)
    assert "field name:" in message


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b"", "é".encode("latin-1")])
def test_manifest_that_is_not_a_json_object_is_refused(tmp_path, raw):
    message = _open_error(_archive(tmp_path, manifest=raw), tmp_path)
    assert message.startswith("manifest.json: ")


def test_oversized_manifest_is_refused(tmp_path):
    manifest = _manifest_json(FILES) + b" " * (4 * 1024 * 1024)
    message = _open_error(_archive(tmp_path, manifest=manifest), tmp_path)
    assert "manifest.json" in message
    assert "4 MiB" in message


def test_file_and_directory_with_the_same_name_is_an_archive_error(tmp_path):
    files = {"a": b"1", "a/b": b"2"}
    path = raw_zip(
        tmp_path / "clash.mh", [("manifest.json", _manifest_json(files)), *files.items()]
    )
    message = _open_error(path, tmp_path)
    assert "'a/b'" in message


# -- not an archive --------------------------------------------------------------------


def test_non_zip_file_is_refused(tmp_path):
    path = tmp_path / "model.mh"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not a zip at all")
    message = _open_error(path, tmp_path)
    assert "model.mh" in message
    assert "not a zip" in message


def test_missing_path_is_refused(tmp_path):
    message = _open_error(tmp_path / "nope.mh", tmp_path)
    assert "nope.mh" in message
    assert "no such archive file" in message


def test_directory_path_is_refused(tmp_path):
    (tmp_path / "dir.mh").mkdir()
    message = _open_error(tmp_path / "dir.mh", tmp_path)
    assert "dir.mh" in message
