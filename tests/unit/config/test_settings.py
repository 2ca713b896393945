"""Settings: defaults, environment overrides, validation, typo detection."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelhost.config import Settings, unknown_env_settings
from modelhost.runtimes import LoadOptions


def test_defaults_are_safe() -> None:
    s = Settings()
    assert s.host == "127.0.0.1"
    assert s.port == 8080
    assert s.max_body_bytes == 16 * 1024 * 1024


def test_environment_overrides_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELHOST_MAX_QUEUE", "7")
    monkeypatch.setenv("MODELHOST_REQUEST_TIMEOUT_S", "0.5")
    s = Settings()
    assert s.max_queue == 7
    assert s.request_timeout_s == 0.5
    monkeypatch.setenv("MODELHOST_PORT", "70000")
    with pytest.raises(ValidationError, match="port"):
        Settings()


def test_onnx_runtime_settings_default_to_the_load_options_defaults() -> None:
    s, options = Settings(), LoadOptions()
    assert (s.onnx_inter_op_threads, s.onnx_allow_spinning) == (1, False)
    assert (options.onnx_inter_op_threads, options.onnx_allow_spinning) == (1, False)


def test_onnx_runtime_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELHOST_ONNX_INTER_OP_THREADS", "0")
    monkeypatch.setenv("MODELHOST_ONNX_ALLOW_SPINNING", "1")
    s = Settings()
    assert (s.onnx_inter_op_threads, s.onnx_allow_spinning) == (0, True)
    monkeypatch.setenv("MODELHOST_ONNX_INTER_OP_THREADS", "-1")
    with pytest.raises(ValidationError, match="onnx_inter_op_threads"):
        Settings()


def test_unknown_modelhost_variables_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELHOST_MAX_QUEUEE", "3")
    monkeypatch.setenv("MODELHOST_MAX_QUEUE", "3")
    monkeypatch.setenv("OTHER_THING", "1")
    assert unknown_env_settings() == ["MODELHOST_MAX_QUEUEE"]
