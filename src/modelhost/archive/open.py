"""Open an archive: refuse unsafe members, extract, verify every digest.

archive.mh ──► member checks ──► manifest.json ──► extract + sha256 ──► OpenedArchive
              (names, links,     (pydantic;         (streamed; size and
               sizes, count)      every file         digest must match
                                  listed)            the manifest)
"""

from __future__ import annotations

import hashlib
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from modelhost.archive.manifest import MANIFEST_NAME, Manifest
from modelhost.archive.paths import check_member_name
from modelhost.errors import ArchiveError

_CHUNK_BYTES = 1024 * 1024
_MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    """Size limits applied while opening an archive."""

    max_member_bytes: int = 4 * 1024**3
    max_total_bytes: int = 16 * 1024**3
    max_members: int = 10_000


@dataclass(frozen=True, slots=True)
class OpenedArchive:
    """A verified archive extracted under ``root``; ``sha256`` is the archive file's."""

    manifest: Manifest
    root: Path
    sha256: str
    path: Path


def open_archive(path: Path, into: Path, limits: ArchiveLimits | None = None) -> OpenedArchive:
    """Verify ``path`` and extract its files into the empty or new directory ``into``.

    Nothing in the archive is executed or unpickled here.

    Raises:
        ArchiveError: not a zip; a member with an unsafe name, a link, too large or not
            listed in the manifest; a missing, malformed or mismatching manifest; a file
            whose size or sha256 differs from the manifest (tampered).
    """
    limits = limits or ArchiveLimits()
    if not path.is_file():
        raise ArchiveError(f"{path}: no such archive file")
    archive_sha = _file_sha256(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"{path}: not a modelhost archive (not a zip file): {exc}") from exc
    with zf:
        infos = _checked_members(zf, limits)
        manifest = _read_manifest(zf, infos, path)
        into.mkdir(parents=True, exist_ok=True)
        for name, entry in manifest.files.items():
            _extract_verified(zf, infos[name], into / name, entry.sha256, entry.size)
    return OpenedArchive(manifest=manifest, root=into, sha256=archive_sha, path=path)


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
    with zf.open(info) as fh:
        raw = fh.read(_MAX_MANIFEST_BYTES + 1)
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
    return manifest


def _extract_verified(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, sha256: str, size: int
) -> None:
    if info.file_size != size:
        raise ArchiveError(
            f"{info.filename!r} is {info.file_size} bytes but {MANIFEST_NAME} says {size}; "
            "the archive was modified"
        )
    sha = hashlib.sha256()
    written = 0
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, dest.open("wb") as out:
            while chunk := src.read(_CHUNK_BYTES):
                written += len(chunk)
                if written > size:
                    raise ArchiveError(f"{info.filename!r} inflates past its declared size")
                sha.update(chunk)
                out.write(chunk)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"{info.filename!r} is corrupt: {exc}") from exc
    if sha.hexdigest() != sha256:
        dest.unlink(missing_ok=True)
        raise ArchiveError(
            f"sha256 of {info.filename!r} does not match {MANIFEST_NAME}; "
            "the archive was modified or corrupted"
        )


def _file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK_BYTES):
            sha.update(chunk)
    return sha.hexdigest()
