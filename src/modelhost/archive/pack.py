"""Write archives: a manifest with the sha256 of every file, then the files."""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from modelhost.archive.manifest import MANIFEST_NAME, FileEntry, Manifest, ModelSpec
from modelhost.archive.paths import check_member_name
from modelhost.errors import ArchiveError, ConfigError

SPEC_NAME = "modelspec.json"
_CHUNK_BYTES = 1024 * 1024


def _digest(path: Path) -> FileEntry:
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK_BYTES):
            sha.update(chunk)
            size += len(chunk)
    return FileEntry(sha256=sha.hexdigest(), size=size)


def write_archive(
    spec: ModelSpec, files: dict[str, Path], *, name: str, version: str, out: Path
) -> Manifest:
    """Write ``out`` (a ``.mh`` zip) holding ``manifest.json`` and ``files``.

    Args:
        spec: everything the manifest says of the model but its identity.
        files: member name inside the archive -> file on disk.
        name, version: the model's identity (letters, digits, ``.``, ``_``, ``-``).
        out: destination; written to a temporary name first, then renamed, so a crash
            never leaves a half-written archive under ``out``.

    Returns:
        The manifest written.

    Raises:
        ConfigError: bad name or version. ArchiveError: unsafe member names.
    """
    entries = {check_member_name(member): _digest(path) for member, path in files.items()}
    if MANIFEST_NAME in entries:
        raise ArchiveError(f"{MANIFEST_NAME} is reserved; rename that file")
    try:
        manifest = Manifest(**spec.model_dump(), name=name, version=version, files=entries)
    except ValidationError as exc:
        raise ConfigError(_first_error(exc)) from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST_NAME, manifest.model_dump_json(indent=2))
            for member in sorted(files):
                zf.write(files[member], arcname=member)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return manifest


def pack_model_dir(
    model_dir: Path,
    *,
    name: str,
    version: str,
    out: Path,
    check: Callable[[ModelSpec], object] | None = None,
) -> Manifest:
    """Pack a model directory (as written by ``modelhost train``) into an archive.

    The directory holds ``modelspec.json`` (a :class:`ModelSpec`) and the model files;
    every regular file in it except the spec goes into the archive. ``check`` is called
    with the spec before anything is written (the runtimes' ``check_spec``: this layer
    knows no runtime).

    Raises:
        ConfigError: no such directory, no or invalid ``modelspec.json``, or a link in it.
        ArchiveError: refused by ``check``.
    """
    spec_path = model_dir / SPEC_NAME
    if not model_dir.is_dir():
        raise ConfigError(f"{model_dir} is not a directory")
    if not spec_path.is_file():
        raise ConfigError(f"{model_dir} has no {SPEC_NAME}; train a model into it first")
    try:
        spec = ModelSpec.model_validate_json(spec_path.read_bytes())
    except ValidationError as exc:
        raise ConfigError(f"{spec_path}: {_first_error(exc)}") from exc
    if check is not None:
        check(spec)
    files: dict[str, Path] = {}
    for path in sorted(model_dir.rglob("*")):
        if path.is_symlink():
            raise ConfigError(f"{path} is a link; archives hold regular files only")
        if path.is_file() and path != spec_path:
            files[path.relative_to(model_dir).as_posix()] = path
    return write_archive(spec, files, name=name, version=version, out=out)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    field = ".".join(str(part) for part in err["loc"]) or "manifest"
    return f"{field}: {err['msg']}"
