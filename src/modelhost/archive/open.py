"""Open an archive: refuse unsafe members, extract, verify every digest.

archive.mh ─► sha256 ─► member checks ─► manifest.json ─► extract + sha256 ─► OpenedArchive
   (one handle: the     (names, links,    (pydantic; every   (streamed; size and digest
    bytes hashed are     sizes, count)     file listed)       must match the manifest)
    the bytes read)

Whatever goes wrong, the caller gets an ``ArchiveError`` naming the archive or the member
(``InsufficientStorage`` when the extracted files cannot be written), and ``into`` is left
as it was given: absent, or empty.
"""

from __future__ import annotations

import errno
import hashlib
import io
import lzma
import os
import shutil
import stat
import struct
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from modelhost.archive.manifest import MANIFEST_NAME, Manifest
from modelhost.archive.paths import check_member_name
from modelhost.errors import ArchiveError, InsufficientStorage

_CHUNK_BYTES = 1024 * 1024
_MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# A file the task codec keeps in memory (a tokenizer): large vocabularies run to ~35 MiB.
MAX_CODEC_FILE_BYTES = 64 * 1024 * 1024

# What zipfile and its decompressors raise on malformed input: bad CRC or headers
# (BadZipFile), broken deflate/lzma/bzip2 streams (zlib.error, LZMAError, OSError, EOFError),
# unsupported compression methods (NotImplementedError), truncated or lying headers
# (struct.error, ValueError, EOFError, OverflowError), undecodable names (UnicodeDecodeError).
_ZIP_ERRORS: tuple[type[Exception], ...] = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    struct.error,
    ValueError,
    OverflowError,
    OSError,
    RuntimeError,
)
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    """Size limits applied while opening an archive."""

    max_member_bytes: int = 4 * 1024**3
    max_total_bytes: int = 16 * 1024**3
    max_members: int = 10_000


@dataclass(frozen=True, slots=True)
class OpenedArchive:
    """A verified archive extracted under ``root``; ``sha256`` is the archive file's;
    ``codec_files`` the verified bytes of the files its task codec reads
    (``Manifest.codec_files``)."""

    manifest: Manifest
    root: Path
    sha256: str
    path: Path
    codec_files: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ArchiveHead:
    """What :func:`read_manifest` reads of an archive without extracting it."""

    manifest: Manifest
    sha256: str
    codec_files: Mapping[str, bytes]


class _WriteFailed(Exception):
    """An extracted file could not be written (disk full, permissions): not the archive's fault."""

    def __init__(self, dest: Path, exc: OSError) -> None:
        super().__init__(f"{dest}: {exc.strerror or exc}")
        self.dest = dest
        self.exc = exc


def open_archive(path: Path, into: Path, limits: ArchiveLimits | None = None) -> OpenedArchive:
    """Verify ``path`` and extract its files into the empty or new directory ``into``.

    The archive is hashed and read through one open file handle, so ``sha256`` is the digest
    of the bytes that were extracted; an archive rewritten while it is opened is refused.
    Nothing in the archive is executed or unpickled here.

    Args:
        path: the ``.mh`` file.
        into: where the files go; created if absent, must be empty if present. On any
            failure every file and directory this call made is removed again.
        limits: member count and size limits (bytes); defaults to :class:`ArchiveLimits`.

    Returns:
        The verified manifest, ``into``, the archive's sha256 and ``path``.

    Raises:
        ArchiveError: not a regular file or not a zip; a corrupt member (bad CRC, broken
            compressed stream, unknown compression method, truncated); a member with an
            unsafe name, a link, too large or not listed in the manifest; a missing,
            malformed or mismatching manifest; a file whose size or sha256 differs from the
            manifest (tampered); ``into`` not empty; the archive changed while being read.
        InsufficientStorage: the extracted files could not be written under ``into``.

    Example:
        >>> opened = open_archive(Path("digits.mh"), Path("/tmp/digits"))  # doctest: +SKIP
        >>> opened.manifest.runtime  # doctest: +SKIP
        'torch'
    """
    limits = limits or ArchiveLimits()
    if into.exists() and (not into.is_dir() or any(into.iterdir())):
        raise ArchiveError(f"{into} is not an empty directory; extract into a new one")
    created = _created_root(into)
    try:
        head = _read(path, limits, into)
    except _WriteFailed as exc:
        _remove_created(into, created)
        reason = "no space left" if exc.exc.errno in _DISK_FULL else "cannot write"
        raise InsufficientStorage(
            f"{reason} to extract the archive: {exc}; free disk space or choose another "
            "directory, then retry"
        ) from exc.exc
    except BaseException:
        _remove_created(into, created)
        raise
    return OpenedArchive(head.manifest, into, head.sha256, path, head.codec_files)


def read_manifest(path: Path, limits: ArchiveLimits | None = None) -> ArchiveHead:
    """The manifest and sha256 of an archive, checked as :func:`open_archive` checks them,
    and the verified bytes of its codec files, without extracting anything: for a process
    that serves a model another process loaded from the same bytes (compare the sha256
    with that process's).

    Raises:
        ArchiveError: as :func:`open_archive`, but only the codec files' digests are read.
    """
    return _read(path, limits or ArchiveLimits(), None)


def _read(path: Path, limits: ArchiveLimits, into: Path | None) -> ArchiveHead:
    """Hash, check and (``into`` given) extract and verify ``path`` through one handle."""
    with _open_regular(path) as fh:
        before = os.fstat(fh.fileno())
        archive_sha = _stream_sha256(fh, path)
        fh.seek(0)
        try:
            zf = zipfile.ZipFile(fh)
        except _ZIP_ERRORS as exc:
            raise ArchiveError(f"{path}: not a modelhost archive (not a zip file): {exc}") from exc
        with zf:
            infos = _checked_members(zf, limits)
            manifest = _read_manifest(zf, infos, path)
            if into is not None:
                _make_dir(into)
                for name, entry in manifest.files.items():
                    _extract_verified(zf, infos[name], into / name, entry.sha256, entry.size)
            codec_files = {
                name: _read_codec_file(zf, infos[name], manifest) for name in manifest.codec_files()
            }
        after = os.fstat(fh.fileno())
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise ArchiveError(f"{path} changed while it was being opened; open it again")
    return ArchiveHead(manifest, archive_sha, codec_files)


def _read_codec_file(zf: zipfile.ZipFile, info: zipfile.ZipInfo, manifest: Manifest) -> bytes:
    """A codec file's bytes, verified against the manifest (read again from the zip, so
    the bytes kept are the bytes hashed)."""
    entry = manifest.files[info.filename]
    if entry.size > MAX_CODEC_FILE_BYTES:
        raise ArchiveError(
            f"{info.filename!r} is {entry.size} bytes; a file the codec reads (a tokenizer) "
            f"may be at most {MAX_CODEC_FILE_BYTES // 1024**2} MiB"
        )
    _check_declared_size(info, entry.size)
    buffer = io.BytesIO()
    digest, read = _copy_member(zf, info, buffer, Path(info.filename), entry.size)
    _check_copied(info, entry.sha256, entry.size, digest, read)
    return buffer.getvalue()


def _open_regular(path: Path) -> IO[bytes]:
    # O_NONBLOCK: opening a FIFO planted under the archive's name must not hang the caller.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise ArchiveError(f"{path}: no such archive file") from exc
    except OSError as exc:
        raise ArchiveError(f"{path}: cannot open the archive: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ArchiveError(f"{path}: not a regular file; an archive is a .mh file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _stream_sha256(fh: IO[bytes], path: Path) -> str:
    sha = hashlib.sha256()
    try:
        while chunk := fh.read(_CHUNK_BYTES):
            sha.update(chunk)
    except OSError as exc:
        raise ArchiveError(f"{path}: cannot read the archive: {exc.strerror or exc}") from exc
    return sha.hexdigest()


def _checked_members(zf: zipfile.ZipFile, limits: ArchiveLimits) -> dict[str, zipfile.ZipInfo]:
    infos: dict[str, zipfile.ZipInfo] = {}
    total = 0
    members = zf.infolist()
    if len(members) > limits.max_members:
        raise ArchiveError(f"archive has {len(members)} members; the limit is {limits.max_members}")
    for info in members:
        raw = info.filename
        is_dir = raw.endswith("/")
        name = check_member_name(raw[:-1] if is_dir else raw)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise ArchiveError(f"archive member {name!r} is a symbolic link; refusing to open")
        if is_dir:
            continue
        if info.flag_bits & 0x1:
            raise ArchiveError(f"archive member {name!r} is encrypted; refusing to open")
        if info.file_size > limits.max_member_bytes:
            raise ArchiveError(
                f"archive member {name!r} is {info.file_size} bytes; the limit is "
                f"{limits.max_member_bytes} (max_archive_member_bytes)"
            )
        total += info.file_size
        if total > limits.max_total_bytes:
            raise ArchiveError(
                f"archive members add up to more than {limits.max_total_bytes} bytes "
                f"at {name!r} (max_archive_total_bytes)"
            )
        if name in infos:
            raise ArchiveError(f"archive member {name!r} appears twice; refusing to open")
        infos[name] = info
    return infos


def _read_manifest(zf: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], path: Path) -> Manifest:
    info = infos.get(MANIFEST_NAME)
    if info is None:
        raise ArchiveError(f"{path}: no {MANIFEST_NAME} inside; not a modelhost archive")
    if info.file_size > _MAX_MANIFEST_BYTES:
        raise ArchiveError(f"{MANIFEST_NAME} is {info.file_size} bytes; the limit is 4 MiB")
    try:
        with zf.open(info) as fh:
            raw = fh.read(_MAX_MANIFEST_BYTES + 1)
    except _ZIP_ERRORS as exc:
        raise ArchiveError(f"{MANIFEST_NAME} is corrupt in {path}: {exc}") from exc
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(part) for part in err["loc"]) or "manifest"
        raise ArchiveError(f"{MANIFEST_NAME}: field {field}: {err['msg']}") from exc
    for name in manifest.files:
        check_member_name(name)
        if name not in infos:
            raise ArchiveError(
                f"{name!r} is listed in {MANIFEST_NAME} but missing from the archive"
            )
    for name in infos:
        if name != MANIFEST_NAME and name not in manifest.files:
            raise ArchiveError(f"archive member {name!r} is not listed in {MANIFEST_NAME}")
    for name in manifest.files:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in manifest.files:
                raise ArchiveError(
                    f"{parent!r} is both a file and the directory of {name!r} in "
                    f"{MANIFEST_NAME}; rename one of them"
                )
    return manifest


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _WriteFailed(path, exc) from exc


def _created_root(into: Path) -> Path | None:
    """The outermost directory opening will create for ``into``; None if ``into`` exists."""
    if into.exists():
        return None
    top = into
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    return top


def _remove_created(into: Path, created: Path | None) -> None:
    """Undo what opening wrote: remove what it created, or empty ``into`` if it existed."""
    if created is not None:
        if created.is_dir():
            shutil.rmtree(created)
        return
    for child in into.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _check_declared_size(info: zipfile.ZipInfo, size: int) -> None:
    if info.file_size != size:
        raise ArchiveError(
            f"{info.filename!r} is {info.file_size} bytes but {MANIFEST_NAME} says {size}; "
            "the archive was modified"
        )


def _check_copied(info: zipfile.ZipInfo, sha256: str, size: int, digest: str, written: int) -> None:
    if written != size:
        raise ArchiveError(
            f"{info.filename!r} holds {written} bytes but {MANIFEST_NAME} says {size}; "
            "the archive is truncated or was modified"
        )
    if digest != sha256:
        raise ArchiveError(
            f"sha256 of {info.filename!r} does not match {MANIFEST_NAME}; "
            "the archive was modified or corrupted"
        )


def _extract_verified(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, sha256: str, size: int
) -> None:
    _check_declared_size(info, size)
    _make_dir(dest.parent)
    try:
        # Unbuffered, so that a failing write surfaces here and not again at close();
        # "x" never follows or overwrites what is already there.
        out = dest.open("xb", buffering=0)
    except OSError as exc:
        raise _WriteFailed(dest, exc) from exc
    with out:
        digest, written = _copy_member(zf, info, out, dest, size)
    _check_copied(info, sha256, size, digest, written)


def _copy_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: IO[bytes], dest: Path, size: int
) -> tuple[str, int]:
    """Inflate ``info`` into ``out``, at most ``size`` bytes; return its sha256 and length."""
    sha = hashlib.sha256()
    written = 0
    try:
        src = zf.open(info)
    except _ZIP_ERRORS as exc:
        raise ArchiveError(f"archive member {info.filename!r} is corrupt: {exc}") from exc
    with src:
        while True:
            try:
                chunk = src.read(_CHUNK_BYTES)
            except _ZIP_ERRORS as exc:
                raise ArchiveError(f"archive member {info.filename!r} is corrupt: {exc}") from exc
            if not chunk:
                return sha.hexdigest(), written
            written += len(chunk)
            if written > size:
                raise ArchiveError(f"{info.filename!r} inflates past its declared size")
            sha.update(chunk)
            view = memoryview(chunk)
            try:
                while view:
                    view = view[out.write(view) or 0 :]
            except OSError as exc:
                raise _WriteFailed(dest, exc) from exc
