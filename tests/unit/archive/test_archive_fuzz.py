"""Property-based tests of open_archive: a verified archive or an ArchiveError, never
anything else, and nothing left behind on failure.

Archives are generated (member names, contents, compression methods, manifests that lie
about sizes and digests), then their bytes are mutated (flipped, cut, inserted). The example
counts keep the default run to a few seconds; raise them with ``--hypothesis-profile``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelhost.archive import OpenedArchive, open_archive, write_archive
from modelhost.archive.open import ArchiveHead, read_manifest
from modelhost.errors import ArchiveError
from support.hostile_archives import SPEC, manifest_json, raw_zip

# Hostile archives are built with duplicate member names on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
COMPRESSIONS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)

# Member names: mostly safe path parts, sometimes hostile ones.
_PART = st.one_of(
    st.text(alphabet="abcdefghij0123456789._-", min_size=1, max_size=12),
    st.sampled_from(["..", ".", "", "manifest.json", "con", "a" * 300, "é" * 130, "\x00", "\\"]),
)
_NAME = st.lists(_PART, min_size=1, max_size=4).map("/".join)
_FILES = st.dictionaries(_NAME, st.binary(max_size=2048), max_size=5)


@st.composite
def _mutations(draw: st.DrawFn) -> list[tuple[str, float, bytes]]:
    """Byte edits: (kind, position as a fraction of the file, bytes)."""
    edit = st.tuples(
        st.sampled_from(["flip", "cut", "insert", "overwrite"]),
        st.floats(min_value=0.0, max_value=1.0),
        st.binary(min_size=1, max_size=16),
    )
    return draw(st.lists(edit, min_size=1, max_size=4))


def _mutate(raw: bytes, edits: list[tuple[str, float, bytes]]) -> bytes:
    data = bytearray(raw)
    for kind, where, payload in edits:
        at = min(int(where * len(data)), max(len(data) - 1, 0))
        if kind == "flip" and data:
            data[at] ^= payload[0] or 0xFF
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = payload
        elif kind == "overwrite":
            data[at : at + len(payload)] = payload
    return bytes(data)


def _check_outcome(path: Path, into: Path) -> OpenedArchive | None:
    """The property: a verified archive, or an ArchiveError with ``into`` left absent;
    read_manifest (no extraction) also gives a manifest or an ArchiveError, the same
    manifest and digest when the archive opens."""
    peeked: ArchiveHead | None = None
    peek_refused = ""
    try:
        peeked = read_manifest(path)
    except ArchiveError as exc:
        peek_refused = str(exc) or "an ArchiveError without a message"
    assert peeked is not None or peek_refused != "an ArchiveError without a message"
    refused: ArchiveError | None = None
    try:
        opened = open_archive(path, into)
    except ArchiveError as exc:
        refused = exc
    if refused is not None:
        assert str(refused), "an ArchiveError must say what is wrong"
        assert not into.exists(), sorted(p.name for p in into.rglob("*"))
        return None
    for name, entry in opened.manifest.files.items():
        data = (into / name).read_bytes()
        assert len(data) == entry.size
        assert hashlib.sha256(data).hexdigest() == entry.sha256
    on_disk = {p.relative_to(into).as_posix() for p in into.rglob("*") if p.is_file()}
    assert on_disk == set(opened.manifest.files)
    assert opened.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert peeked == ArchiveHead(opened.manifest, opened.sha256, opened.codec_files)
    return opened


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _fresh(workdir: Path) -> Path:
    here = workdir / uuid.uuid4().hex
    here.mkdir()
    return here


@FUZZ
@given(
    files=st.dictionaries(
        st.lists(st.text(alphabet="abcxyz019._-", min_size=1, max_size=8), min_size=1, max_size=3)
        .map("/".join)
        .filter(lambda n: all(p not in (".", "..") for p in n.split("/"))),
        st.binary(max_size=4096),
        max_size=5,
    )
)
def test_every_archive_write_archive_makes_opens_to_the_same_files(workdir, files):
    names = sorted(files)
    if any(b.startswith(a + "/") for a in names for b in names) or "manifest.json" in files:
        return  # a name that is also a directory, or the reserved name: not writable
    here = _fresh(workdir)
    paths = {}
    for name, data in files.items():
        path = here / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths[name] = path
    out = here / "a.mh"
    written = write_archive(SPEC, paths, name="m", version="1", out=out)
    opened = _check_outcome(out, here / "into")
    assert opened is not None
    assert opened.manifest == written
    for name, data in files.items():
        assert (opened.root / name).read_bytes() == data


@FUZZ
@given(files=_FILES, compression=st.sampled_from(COMPRESSIONS), edits=_mutations())
def test_mutated_archives_open_verified_or_raise_archive_error(workdir, files, compression, edits):
    here = _fresh(workdir)
    members = [("manifest.json", manifest_json(files)), *files.items()]
    try:
        valid = raw_zip(here / "valid.mh", members, compression)
    except (ValueError, OSError):
        return  # zipfile itself refuses to write some generated names
    path = here / "mutated.mh"
    path.write_bytes(_mutate(valid.read_bytes(), edits))
    _check_outcome(path, here / "into")


@st.composite
def _lying_listing(draw: st.DrawFn) -> tuple[dict[str, bytes], dict[str, object]]:
    """Members, and a manifest ``files`` listing that lies about some of them."""
    members = draw(_FILES)
    listing: dict[str, object] = {}
    for name, data in members.items():
        size = len(data)
        sha = hashlib.sha256(data).hexdigest()
        lie = draw(st.sampled_from(["none", "size", "sha", "drop", "both"]))
        if lie in ("size", "both"):
            size = draw(st.one_of(st.integers(-2, 2**63), st.just(size + 1)))
        if lie in ("sha", "both"):
            sha = draw(st.sampled_from([hashlib.sha256(data + b"x").hexdigest(), "0" * 64, "x"]))
        if lie != "drop":
            listing[name] = {"sha256": sha, "size": size}
    extra = draw(st.dictionaries(_NAME, st.just({"sha256": "0" * 64, "size": 0}), max_size=2))
    listing.update(extra)
    return members, listing


@FUZZ
@given(case=_lying_listing(), compression=st.sampled_from(COMPRESSIONS))
def test_manifests_that_lie_about_their_files_are_refused_or_verified(workdir, case, compression):
    members, listing = case
    doc = json.loads(manifest_json({}))
    doc["files"] = listing
    here = _fresh(workdir)
    try:
        path = raw_zip(
            here / "lying.mh",
            [("manifest.json", json.dumps(doc).encode()), *members.items()],
            compression,
        )
    except (ValueError, OSError):
        return
    _check_outcome(path, here / "into")


@FUZZ
@given(raw=st.binary(max_size=4096))
def test_arbitrary_bytes_are_refused_as_not_an_archive(workdir, raw):
    here = _fresh(workdir)
    path = here / "noise.mh"
    path.write_bytes(raw)
    assert _check_outcome(path, here / "into") is None


@FUZZ
@given(manifest=st.binary(max_size=2048) | st.text(max_size=512).map(str.encode))
def test_arbitrary_manifest_bytes_are_refused_naming_the_manifest(workdir, manifest):
    here = _fresh(workdir)
    path = raw_zip(here / "m.mh", [("manifest.json", manifest)])
    with pytest.raises(ArchiveError, match=r"manifest\.json"):
        open_archive(path, here / "into")
    assert not (here / "into").exists()
