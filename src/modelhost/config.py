"""Settings: the only reader of the environment (prefix ``MODELHOST_``).

Every setting appears once, typed, with a default, a unit and a one-line description. CLI
flags override it by constructing ``Settings(**overrides)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
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
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "warning", description="uvicorn log level"
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    torch_threads: int = Field(
        0,
        ge=0,
        description="torch intra-op threads, set once at start (0 = auto: the cores "
        "left after the event loop's, shared by the instances)",
    )
    onnx_intra_op_threads: int = Field(
        0, ge=0, description="onnxruntime intra-op threads per session (0 = all cores)"
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
