"""Archive blobs, content-addressed by sha256, behind one small interface."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

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

        A crash midway leaves at most a temporary file, never a partial blob under its name.
        """
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        sha = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir)
        try:
            with source.open("rb") as src, os.fdopen(fd, "wb") as dst:
                while chunk := src.read(_CHUNK_BYTES):
                    sha.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            digest = sha.hexdigest()
            final = self.path(digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp_name, final)
            return digest
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)

    def clean_temporary(self) -> None:
        """Remove temporary files left by interrupted puts."""
        shutil.rmtree(self.root / "tmp", ignore_errors=True)
