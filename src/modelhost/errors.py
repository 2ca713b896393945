"""The one error tree of modelhost.

Every error carries an HTTP ``status`` and a stable ``code``. Frontends map the tree to
their protocol's error shape in one place; the client re-raises the same class from the
``code`` in a response body (see :func:`error_class_for_code`).
"""

from __future__ import annotations


class ModelhostError(Exception):
    """Root of every error modelhost raises on purpose."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ModelhostError):
    """The request does not fit the model's signature or the wire format."""

    status = 400
    code = "invalid_input"


class ModelNotFound(ModelhostError):
    """No model (or version) of that name is loaded."""

    status = 404
    code = "model_not_found"


class PayloadTooLarge(ModelhostError):
    """The request body is over the configured limit."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ModelhostError):
    """The Content-Type is not one the route accepts."""

    status = 415
    code = "unsupported_media_type"


class Unauthorized(ModelhostError):
    """No or a wrong bearer token."""

    status = 401
    code = "unauthorized"


class Overloaded(ModelhostError):
    """The model's queue is full; retry after ``retry_after_s``."""

    status = 503
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelNotReady(ModelhostError):
    """The model exists but cannot take requests now (loading or draining)."""

    status = 503
    code = "model_not_ready"


class DeadlineExceeded(ModelhostError):
    """The request was not answered before its deadline."""

    status = 504
    code = "deadline_exceeded"


class InferenceFailed(ModelhostError):
    """The model raised while computing a batch."""

    status = 500
    code = "inference_failed"


class ArchiveError(ModelhostError):
    """An archive is malformed, tampered with or unsafe to open."""

    status = 400
    code = "archive_error"


class ConfigError(ModelhostError):
    """A setting or a command-line argument is invalid."""

    status = 400
    code = "config_error"


class HeadersTooLarge(ModelhostError):
    """The request line and headers are over ``max_header_bytes`` or ``max_headers``."""

    status = 431
    code = "headers_too_large"


class RequestTimeout(ModelhostError):
    """The client was too slow sending its headers or body (the connection is closed)."""

    status = 408
    code = "request_timeout"


class UntrustedCode(ModelhostError):
    """The archive's format executes code and the server was not told to trust it."""

    status = 403
    code = "untrusted_code"


class Conflict(ModelhostError):
    """The change contradicts what is already there (e.g. the same name:version, other bytes)."""

    status = 409
    code = "conflict"


class RegistryUnavailable(ModelhostError):
    """The registry database cannot be reached, is locked, or refused the change."""

    status = 503
    code = "registry_unavailable"


class InsufficientStorage(ModelhostError):
    """The disk is full (or a write was refused): nothing was kept."""

    status = 507
    code = "insufficient_storage"


_BY_CODE: dict[str, type[ModelhostError]] = {
    cls.code: cls
    for cls in (
        ModelhostError,
        InvalidInput,
        ModelNotFound,
        PayloadTooLarge,
        UnsupportedMediaType,
        Unauthorized,
        Overloaded,
        ModelNotReady,
        DeadlineExceeded,
        InferenceFailed,
        ArchiveError,
        ConfigError,
        HeadersTooLarge,
        RequestTimeout,
        UntrustedCode,
        Conflict,
        RegistryUnavailable,
        InsufficientStorage,
    )
}


def error_class_for_code(code: str) -> type[ModelhostError]:
    """Return the error class for a stable ``code`` (the root class when unknown)."""
    return _BY_CODE.get(code, ModelhostError)
