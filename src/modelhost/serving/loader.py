"""Loader: archive bytes -> verified files -> warmed-up predictors, under the trust model.

The manager decides what is served; the loader only turns one archive into predictors. It
holds the archive limits, the trust flag and the device and thread policy, so that every
load (start-up, management, scale-out, a worker process) applies the same ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from modelhost.archive.manifest import Manifest
from modelhost.archive.open import (
    ArchiveHead,
    ArchiveLimits,
    OpenedArchive,
    open_archive,
    read_manifest,
)
from modelhost.errors import UntrustedCode
from modelhost.runtimes.base import LoadOptions, Predictor
from modelhost.runtimes.registry import check_spec, get_runtime
from modelhost.serving.config import EngineConfig
from modelhost.serving.policy import BatchPolicy
from modelhost.serving.warmup import warm_up


def batch_policy(manifest: Manifest, config: EngineConfig) -> BatchPolicy:
    """The archive's batching defaults with the server's overrides applied."""
    b = manifest.batching
    delay_ms = (
        b.max_batch_delay_ms if config.max_batch_delay_ms is None else config.max_batch_delay_ms
    )
    return BatchPolicy(
        max_batch_size=config.max_batch_size or b.max_batch_size,
        max_batch_delay_s=delay_ms / 1000.0,
        max_queue=config.max_queue or b.max_queue,
        max_batch_elements=config.max_batch_elements,
        pad=dict(b.pad),
    )


def load_options(
    config: EngineConfig, manifest: Manifest | None = None, device: str = ""
) -> LoadOptions:
    """How ``manifest`` is loaded: ``device``, else the server's, else the manifest's when
    the server says auto; thread counts from ``config``."""
    chosen = device or config.device
    if chosen == "auto" and manifest is not None:
        chosen = manifest.device
    return LoadOptions(
        device=chosen,
        torch_threads=config.torch_threads,
        onnx_intra_op_threads=config.onnx_intra_op_threads,
        onnx_inter_op_threads=config.onnx_inter_op_threads,
        onnx_allow_spinning=config.onnx_allow_spinning,
    )


@dataclass(frozen=True, slots=True)
class LoadedPredictor:
    """A warmed-up predictor and what its load and warm-up took."""

    predictor: Predictor
    load_s: float
    warmup_s: float


class Loader:
    """Opens archives and loads warmed-up predictors (blocking calls: run them in threads)."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._limits = ArchiveLimits(
            max_member_bytes=config.max_archive_member_bytes,
            max_total_bytes=config.max_archive_total_bytes,
        )

    def open(self, path: Path, into: Path) -> OpenedArchive:
        """Verify and extract an archive (digests, paths, sizes). Raises ArchiveError."""
        return open_archive(path, into, self._limits)

    def read_manifest(self, path: Path) -> ArchiveHead:
        """The manifest, sha256 and codec files of an archive, without extracting it.
        Raises ArchiveError."""
        return read_manifest(path, self._limits)

    def check(self, manifest: Manifest) -> None:
        """Whether ``manifest`` may load here: a runtime of this modelhost serving its task,
        and code only with ``trust_code``.

        Raises:
            ArchiveError: unknown runtime or unserved task. UntrustedCode: the format runs
                code and ``trust_code`` is off.
        """
        if check_spec(manifest).runs_code and not self.config.trust_code:
            onnx = (
                " (or serve an ONNX archive made of it: modelhost optimize)"
                if manifest.runtime == "torch"
                else ""
            )
            raise UntrustedCode(
                f"{manifest.name}:{manifest.version} is a {manifest.runtime} archive: loading "
                "it runs its author's code in this server, with the server's rights; serve it "
                "with --trust-code (MODELHOST_TRUST_CODE=1) only if you trust its author" + onnx
            )

    def predictor(self, root: Path, manifest: Manifest, policy: BatchPolicy) -> LoadedPredictor:
        """Load one predictor of an opened archive and warm it up.

        Raises:
            ArchiveError: the model does not keep its manifest's signature. ConfigError:
                the runtime's framework is not installed.
        """
        self.check(manifest)
        runtime = get_runtime(manifest.runtime)
        start = time.perf_counter()
        predictor = runtime.load(root, manifest, load_options(self.config, manifest))
        loaded = time.perf_counter()
        warm_up(predictor, manifest, policy, self.config.warmup_max_elements)
        return LoadedPredictor(predictor, loaded - start, time.perf_counter() - loaded)
