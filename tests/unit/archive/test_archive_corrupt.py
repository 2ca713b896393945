"""open_archive on corrupt zips and unwritable targets: an ArchiveError naming the member,
and nothing left behind in the target directory."""

import os
import subprocess
import sys
import textwrap
import zipfile

import pytest

from modelhost.archive import open_archive
from modelhost.errors import ArchiveError
from support.hostile_archives import (
    FILES,
    MISDECLARED_METHODS,
    UNSUPPORTED_METHODS,
    flip_member_bytes,
    manifest_json,
    member_data_span,
    patch_member,
    raw_zip,
    valid_archive,
)

MEMBERS = ["manifest.json", "model.onnx", "extra/labels.txt"]


def _refused(path, into):
    """Open ``path`` into ``into``; return the ArchiveError message; check nothing is left."""
    existed = into.exists()
    with pytest.raises(ArchiveError) as info:
        open_archive(path, into)
    if existed:
        assert list(into.iterdir()) == []
    else:
        assert not into.exists()
    return str(info.value)


# -- corrupt members -------------------------------------------------------------------


@pytest.mark.parametrize("member", MEMBERS)
def test_member_with_a_wrong_crc_is_refused_naming_it(tmp_path, member):
    path = patch_member(valid_archive(tmp_path), member, crc=0xDEADBEEF)
    message = _refused(path, tmp_path / "into")
    assert repr(member) in message or member in message
    assert "CRC" in message or "corrupt" in message


@pytest.mark.parametrize("member", MEMBERS)
@pytest.mark.parametrize("at", [0.0, 0.3, 0.7, 1.0])
def test_member_with_a_broken_deflate_stream_is_refused_naming_it(tmp_path, member, at):
    path = flip_member_bytes(valid_archive(tmp_path), member, at=at)
    message = _refused(path, tmp_path / "into")
    assert member in message


@pytest.mark.parametrize("member", MEMBERS)
@pytest.mark.parametrize("method", UNSUPPORTED_METHODS)
def test_member_with_an_unsupported_compression_method_is_refused(tmp_path, member, method):
    path = patch_member(valid_archive(tmp_path), member, method=method)
    message = _refused(path, tmp_path / "into")
    assert member in message
    assert "corrupt" in message


@pytest.mark.parametrize("member", MEMBERS)
@pytest.mark.parametrize("method", MISDECLARED_METHODS)
def test_member_whose_data_is_not_in_its_declared_method_is_refused(tmp_path, member, method):
    # Stored (uncompressed) members declared as bzip2, lzma or deflate.
    listing = dict(FILES)
    members = [("manifest.json", manifest_json(listing)), *listing.items()]
    path = raw_zip(tmp_path / "stored.mh", members, compression=zipfile.ZIP_STORED)
    message = _refused(patch_member(path, member, method=method), tmp_path / "into")
    assert member in message


@pytest.mark.parametrize("member", MEMBERS)
@pytest.mark.parametrize("field", ["compress_size", "file_size"])
@pytest.mark.parametrize("value", [0, 1, 0xFFFFFFFE])
def test_member_with_lying_sizes_in_its_headers_is_refused_or_yields_verified_bytes(
    tmp_path, member, field, value
):
    # A deflate stream ends by itself, so an over-large compress_size may still give the
    # right bytes: then the sha256 check has verified them. Anything else is refused.
    path = patch_member(valid_archive(tmp_path), member, **{field: value})
    into = tmp_path / "into"
    try:
        opened = open_archive(path, into)
    except ArchiveError:
        assert not into.exists()
    else:
        assert (field, value) == ("compress_size", 0xFFFFFFFE)
        for name, data in FILES.items():
            assert (opened.root / name).read_bytes() == data


def test_truncated_archive_is_refused_at_every_cut(tmp_path):
    whole = valid_archive(tmp_path).read_bytes()
    cut_path = tmp_path / "cut.mh"
    for cut in range(0, len(whole), max(1, len(whole) // 97)):
        cut_path.write_bytes(whole[:cut])
        message = _refused(cut_path, tmp_path / f"into-{cut}")
        assert "cut.mh" in message or "manifest.json" in message


def test_archive_cut_inside_the_last_member_data_names_the_archive(tmp_path):
    path = valid_archive(tmp_path)
    start, end = member_data_span(path, "model.onnx")
    path.write_bytes(path.read_bytes()[: (start + end) // 2])
    assert "m.mh" in _refused(path, tmp_path / "into")


# -- manifest bytes --------------------------------------------------------------------

BAD_MANIFESTS = {
    "not utf-8": b'{"name": "\xff\xfe"}',
    "utf-16": manifest_json(FILES).decode().encode("utf-16"),
    "invalid json": b'{"name": ',
    "nested arrays": b"[" * 200_000 + b"]" * 200_000,
    "nested objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "nested in a field": manifest_json(FILES)[:-1]
    + b', "metrics": '
    + b"[" * 50_000
    + b"]" * 50_000
    + b"}",
    "huge integer": manifest_json(FILES)[:-1] + b', "metrics": {"a": 1' + b"0" * 10_000 + b"}}",
    "null bytes": b"\x00" * 1000,
    "a string": b'"manifest"',
    "duplicate keys": manifest_json(FILES)[:-1] + b', "name": "../evil"}',
}


@pytest.mark.parametrize("kind", sorted(BAD_MANIFESTS))
def test_manifest_bytes_that_are_not_a_manifest_are_refused_naming_it(tmp_path, kind):
    path = raw_zip(tmp_path / "a.mh", [("manifest.json", BAD_MANIFESTS[kind]), *FILES.items()])
    message = _refused(path, tmp_path / "into")
    assert message.startswith("manifest.json")


# -- nothing left behind ---------------------------------------------------------------


def _fails_after_the_first_file(tmp_path):
    """An archive whose first listed file extracts fine and whose second is tampered."""
    listing = {"a/first.bin": b"1" * 5000, "b/second.bin": b"2" * 5000}
    members = [
        ("manifest.json", manifest_json(listing)),
        ("a/first.bin", listing["a/first.bin"]),
        ("b/second.bin", b"3" * 5000),
    ]
    return raw_zip(tmp_path / "late.mh", members)


def test_failure_after_extracting_files_removes_a_target_it_created(tmp_path):
    message = _refused(_fails_after_the_first_file(tmp_path), tmp_path / "into")
    assert "'b/second.bin'" in message


def test_failure_removes_the_parent_directories_it_created(tmp_path):
    _refused(_fails_after_the_first_file(tmp_path), tmp_path / "new" / "deeper" / "into")
    assert not (tmp_path / "new").exists()


def test_failure_leaves_an_existing_empty_target_in_place_and_empty(tmp_path):
    into = tmp_path / "into"
    into.mkdir()
    _refused(_fails_after_the_first_file(tmp_path), into)
    assert into.is_dir()


def test_a_target_that_is_not_empty_is_refused_and_left_untouched(tmp_path):
    into = tmp_path / "into"
    into.mkdir()
    (into / "mine.txt").write_text("keep me")
    with pytest.raises(ArchiveError, match="not an empty directory") as info:
        open_archive(valid_archive(tmp_path), into)
    assert str(into) in str(info.value)
    assert [p.name for p in into.iterdir()] == ["mine.txt"]
    assert (into / "mine.txt").read_text() == "keep me"


def test_a_target_that_is_a_file_is_refused_and_left_untouched(tmp_path):
    into = tmp_path / "into"
    into.write_text("a file")
    with pytest.raises(ArchiveError, match="not an empty directory"):
        open_archive(valid_archive(tmp_path), into)
    assert into.read_text() == "a file"


def test_disk_full_while_extracting_is_insufficient_storage_and_leaves_nothing(tmp_path):
    # A real write failure: the file size limit (RLIMIT_FSIZE) of a child process makes
    # write() fail with EFBIG once an extracted file passes 1 KiB, as a full disk would.
    archive = valid_archive(tmp_path)
    into = tmp_path / "into"
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        from pathlib import Path
        from modelhost.archive import open_archive
        from modelhost.errors import InsufficientStorage
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
        try:
            open_archive(Path({str(archive)!r}), Path({str(into)!r}))
        except InsufficientStorage as exc:
            print("InsufficientStorage:", exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("InsufficientStorage: no space left to extract")
    assert "model.onnx" in done.stdout
    assert not into.exists()


# -- the archive file itself -----------------------------------------------------------


def test_a_fifo_in_place_of_the_archive_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.mh"
    os.mkfifo(fifo)
    message = _refused(fifo, tmp_path / "into")
    assert "pipe.mh" in message
    assert "not a regular file" in message


def test_the_archive_digest_is_of_the_bytes_that_were_opened(tmp_path):
    import hashlib

    path = valid_archive(tmp_path)
    opened = open_archive(path, tmp_path / "into")
    assert opened.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert {
        p.relative_to(opened.root).as_posix() for p in opened.root.rglob("*") if p.is_file()
    } == set(FILES)
