"""What the serving core knows of each loaded version: plain, frozen records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from modelhost.archive.manifest import Manifest
from modelhost.serving.policy import BatchPolicy
from modelhost.types import ModelRef, TensorSpec


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What frontends may know of a loaded model version (all computed at load)."""

    name: str
    version: str
    manifest: Manifest
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    platform: str
    device: str
    instances: int
    policy: BatchPolicy
    load_s: float
    warmup_s: float
    sha256: str = ""
    scheduler: str = "dynamic"
    # Verified bytes of the archive files its task codec reads (Manifest.codec_files).
    codec_files: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ArchiveSource:
    """What to load: an archive, optionally under another identity (the registry's number).

    ``default``: True makes it the name's default version; False only when the name has no
    default yet (the first version loaded of a name is its default). ``sha256``: the
    archive's digest as the registry recorded it; loading refuses any other bytes.
    """

    path: Path
    ref: ModelRef | None = None
    default: bool = False
    origin: str = "file"  # "file", "registry" or "upload": only registry ones are restorable
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class VersionState:
    """How one loaded version is served now (what a restart must restore)."""

    name: str
    version: str
    origin: str
    is_default: bool
    weight: float
    instances: int


@dataclass(frozen=True, slots=True)
class VersionLoad:
    """How busy one loaded version is now (management reads)."""

    instances: int
    queue_depth: int
    in_flight: int
