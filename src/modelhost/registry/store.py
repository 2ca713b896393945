"""Archive blobs, content-addressed by sha256, behind one small interface."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Protocol

from modelhost.registry.faults import storage_error

_CHUNK_BYTES = 1024 * 1024


class ArtifactStore(Protocol):
    """Where archives live: ``put`` a file, ``path`` of a digest, ``exists``."""

    def put(self, source: Path) -> str: ...

    def path(self, sha256: str) -> Path: ...

    def exists(self, sha256: str) -> bool: ...


class LocalArtifactStore:
    """Blobs under ``root/objects/ab/abcdef...``; written to a temp file, then renamed."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        """Where the blob with this digest lives (whether or not it exists)."""
        return self.root / "objects" / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put(self, source: Path) -> str:
        """Copy ``source`` in and return its sha256; storing the same bytes twice is a no-op.

        A crash midway leaves at most a temporary file, never a partial blob under its name;
        a failed write (a full disk, a refused write) leaves nothing at all.

        Raises:
            InsufficientStorage: the store could not be written (disk full, quota, read-only,
                permissions), naming the path. An unreadable ``source`` raises its OSError.
        """
        with source.open("rb") as src:  # the caller's file: its errors are its own
            tmp_dir = self.root / "tmp"
            try:
                tmp_dir.mkdir(parents=True, exist_ok=True)
                fd, tmp_name = tempfile.mkstemp(dir=tmp_dir)
            except OSError as exc:
                raise storage_error(exc, "write the artifact store at", tmp_dir) from exc
            try:
                return self._copy_in(src, fd, tmp_name)
            finally:
                if os.path.exists(tmp_name):
                    os.unlink(tmp_name)

    def _copy_in(self, src: BinaryIO, fd: int, tmp_name: str) -> str:
        sha = hashlib.sha256()
        reading = False
        try:
            with os.fdopen(fd, "wb") as dst:
                while True:
                    reading = True
                    chunk = src.read(_CHUNK_BYTES)
                    reading = False
                    if not chunk:
                        break
                    sha.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            final = self.path(sha.hexdigest())
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp_name, final)
        except OSError as exc:
            if reading:
                raise  # reading the source failed: not a fault of the store
            raise storage_error(exc, "write the artifact store at", self.root) from exc
        return sha.hexdigest()

    def clean_temporary(self) -> None:
        """Remove temporary files left by interrupted puts."""
        shutil.rmtree(self.root / "tmp", ignore_errors=True)
