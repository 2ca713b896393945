"""Settings: the only reader of the environment (prefix ``MODELHOST_``).

Every setting appears once, typed, with a default, a unit and a one-line description. CLI
flags override it by constructing ``Settings(**overrides)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path.home() / ".modelhost"


def unknown_env_settings() -> list[str]:
    """``MODELHOST_*`` environment variables that name no setting (typos are ignored
    silently otherwise)."""
    known = {f"MODELHOST_{name.upper()}" for name in Settings.model_fields}
    return sorted(k for k in os.environ if k.startswith("MODELHOST_") and k not in known)


class Settings(BaseSettings):
    """Server, engine and archive settings; read from ``MODELHOST_*`` variables."""

    model_config = SettingsConfigDict(env_prefix="MODELHOST_", extra="forbid")

    home: Path = Field(default_factory=_default_home, description="modelhost home directory")
    db_url: str | None = Field(
        None,
        description="registry database URL (default: SQLite file registry.db in the home; "
        "shared: postgresql+psycopg://user@host/db)",
    )
    host: str = Field("127.0.0.1", description="inference HTTP bind address")
    port: int = Field(8080, ge=0, le=65535, description="inference HTTP port (0 = any free)")
    management_host: str = Field(
        "127.0.0.1", description="management API bind address (elsewhere needs --public-management)"
    )
    management_port: int = Field(
        8081, ge=-1, le=65535, description="management API port (0 = any free, -1 = off)"
    )
    public_management: bool = Field(
        False, description="allow binding the management API to a non-loopback address"
    )
    server_name: str = Field(
        "default", description="name under which the registry remembers what this server serves"
    )
    inference_token: str | None = Field(
        None, description="when set, inference routes need 'Authorization: Bearer <token>'"
    )
    trust_code: bool = Field(
        False,
        description="allow loading archives whose format executes code (torch eager "
        "model.py, TorchScript); off: such archives are refused",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "warning", description="uvicorn log level"
    )
    device: str = Field(
        "auto",
        description="auto, cpu, cuda or cuda:N",
        pattern=r"^(auto|cpu|cuda(:(0|[1-9][0-9]{0,2}))?)$",
    )
    torch_threads: int = Field(
        0,
        ge=0,
        description="torch intra-op threads, set once at start (0 = auto: the cores "
        "left after the event loop's, shared by the instances)",
    )
    onnx_intra_op_threads: int = Field(
        0, ge=0, description="onnxruntime intra-op threads per session (0 = all cores)"
    )
    onnx_inter_op_threads: int = Field(
        1,
        ge=0,
        description="onnxruntime inter-op threads per session (0 = onnxruntime's default); "
        "only a parallel-mode session uses them, and modelhost's run sequentially",
    )
    onnx_allow_spinning: bool = Field(
        False,
        description="let onnxruntime's idle pool threads spin-wait; measured on this 2-core "
        "machine, off gave +15 % throughput at concurrency 32 and cost +0.15 ms at "
        "concurrency 1: turn it on for the lowest single-request latency on dedicated cores",
    )
    instances: int = Field(1, ge=1, le=64, description="model instances per model version")
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="largest request body accepted, in bytes"
    )
    max_archive_upload_bytes: int = Field(
        2 * 1024**3, ge=1024, description="largest archive upload to the management API, bytes"
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="default deadline of one inference request, in seconds"
    )
    max_batch_size: int | None = Field(
        None, ge=1, description="override the archive's max_batch_size (items per batch)"
    )
    max_batch_delay_ms: float | None = Field(
        None, ge=0, description="override the archive's max_batch_delay_ms"
    )
    max_queue: int | None = Field(
        None, ge=1, description="override the archive's max_queue (requests waiting)"
    )
    max_archive_member_bytes: int = Field(
        4 * 1024**3, ge=1, description="largest single file inside an archive, in bytes"
    )
    max_archive_total_bytes: int = Field(
        16 * 1024**3, ge=1, description="largest sum of file sizes inside an archive, in bytes"
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, description="how long shutdown waits for accepted requests, in seconds"
    )
    # --- Limits: every one bounds memory or time; each refusal names its setting. ---
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="largest request line + headers, in bytes (431)"
    )
    max_headers: int = Field(100, ge=8, description="most header fields in one request (431)")
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="longest time from connecting (or a request's first byte) "
        "to the end of its headers, in seconds (408, connection closed)",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="longest wait for the next piece of a request body, in "
        "seconds (408, connection closed)",
    )
    max_connections: int = Field(
        1024, ge=1, description="open connections + running requests per listener (503)"
    )
    max_inflight_body_bytes: int = Field(
        256 * 1024**2,
        ge=1024,
        description="request body bytes held at once by the whole "
        "inference server (503 + Retry-After beyond)",
    )
    max_request_items: int = Field(
        1024, ge=1, description="instances (rows along the batch axis) in one request (413)"
    )
    max_request_elements: int = Field(
        8 * 1024**2, ge=1, description="decoded tensor elements in one request (413)"
    )
    max_image_pixels: int = Field(
        4096 * 4096, ge=1, description="pixels of one decoded image, width x height (413)"
    )
    max_request_pixels: int = Field(
        64 * 1024**2, ge=1, description="decoded image pixels in one request, all images (413)"
    )
    max_batch_elements: int = Field(
        16 * 1024**2,
        ge=1,
        description="tensor elements in one batch; a request joins a "
        "batch only while the sum stays under it (a request alone always runs)",
    )
    warmup_max_elements: int = Field(
        1024**2,
        ge=1,
        description="tensor elements of the largest warm-up batch at load "
        "(rows = min(max_batch_size, this / elements per item))",
    )
    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="front processes accepting HTTP on the same port (0 = auto: see README "
        "'Worker processes')",
    )
    placement: Literal["auto", "per-worker", "shared"] = Field(
        "auto",
        description="where a model lives with several workers: a copy in each worker, or one "
        "engine process per device that batches across workers (auto: shared when models "
        "may run on a GPU, else per-worker; see README 'Worker processes')",
    )
    engine_slots: int = Field(
        128,
        ge=1,
        le=4096,
        description="shared placement: requests one worker may have in the engine process at "
        "once (more get 503 + Retry-After at once)",
    )
    engine_slot_bytes: int = Field(
        1024**2,
        ge=4096,
        le=256 * 1024**2,
        description="shared placement: shared memory per slot for a request's tensors; larger "
        "ones travel in one-off segments (each worker maps slots x this in /dev/shm)",
    )
    codec_threads: int = Field(
        0,
        ge=0,
        le=64,
        description="threads that decode and encode large payloads off the event loop "
        "(0 = auto: min(4, cores))",
    )
    max_codec_queue: int = Field(
        256,
        ge=1,
        description="payloads waiting for a codec thread; more get 503 + Retry-After",
    )
    codec_offload_bytes: int = Field(
        64 * 1024,
        ge=0,
        description="bodies (and answers) larger than this decode (encode) in a codec thread; "
        "smaller ones inline, where the thread hop would cost more than the work",
    )
    codec_offload_pixels: int = Field(
        256 * 1024,
        ge=0,
        description="images declaring more pixels than this decode in a codec thread",
    )
    db_lock_timeout_s: float = Field(
        10.0,
        ge=0,
        description="how long a registry write waits for a locked database, "
        "in seconds (then 503, nothing applied)",
    )

    @field_validator("inference_token")
    @classmethod
    def _real_token(cls, value: str | None) -> str | None:
        # An empty token would make "Authorization: Bearer " (nothing) the password.
        if value is not None and (not value.strip() or not value.isprintable()):
            raise ValueError(
                "is empty, whitespace or holds control characters; unset it or give a real token"
            )
        if value is not None and (value != value.strip() or not value.isascii()):
            raise ValueError("must be ASCII without leading or trailing spaces")
        return value
