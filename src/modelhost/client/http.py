"""Sync and async clients sharing every decision through pure functions.

    >>> with Client("http://127.0.0.1:8080") as c:          # doctest: +SKIP
    ...     c.predict_image("digits", Path("7.png").read_bytes())["predictions"][0]["label"]
    '7'

Errors come back as the server's exception class (``ModelNotFound``, ``InvalidInput``...),
rebuilt from the ``code`` in the error body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from modelhost.errors import ModelhostError, Overloaded, error_class_for_code

_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP call, fully described before it is sent."""

    method: str
    path: str
    content: bytes | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def model_path(model: str, version: str | None) -> str:
    """``/v1/models/{model}[/versions/{version}]`` with both parts URL-quoted."""
    base = f"/v1/models/{quote(model, safe='')}"
    return base if version is None else f"{base}/versions/{quote(version, safe='')}"


def predict_image_call(model: str, data: bytes, content_type: str, version: str | None) -> Call:
    """POST raw image bytes to the native predict route."""
    return Call("POST", f"{model_path(model, version)}:predict", content=data,
                headers={"Content-Type": content_type})  # fmt: skip


def predict_instances_call(model: str, instances: list[Any], version: str | None) -> Call:
    """POST ``{"instances": [...]}`` to the native predict route."""
    return Call("POST", f"{model_path(model, version)}:predict", json={"instances": instances})


def infer_v2_call(model: str, body: dict[str, Any], version: str | None) -> Call:
    """POST an Open Inference Protocol v2 request body."""
    base = f"/v2/models/{quote(model, safe='')}"
    if version is not None:
        base += f"/versions/{quote(version, safe='')}"
    return Call("POST", f"{base}/infer", json=body)


def image_content_type(path: Path) -> str:
    """Content-Type for an image file by its suffix.

    Raises:
        ValueError: not .png, .jpg or .jpeg.
    """
    try:
        return _IMAGE_TYPES[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"{path}: only .png, .jpg and .jpeg images can be sent") from None


def parse(response: httpx.Response) -> Any:
    """The JSON answer of a successful response.

    Raises:
        ModelhostError subclass: rebuilt from the error body's ``code``.
    """
    if response.is_success:
        return response.json()
    message, code = response.text or response.reason_phrase, ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        message, code = str(body.get("error", message)), str(body.get("code", ""))
    cls = error_class_for_code(code)
    if cls is Overloaded:
        raise Overloaded(message, retry_after_s(response.headers.get("Retry-After")))
    if cls is ModelhostError:
        raise ModelhostError(f"HTTP {response.status_code}: {message}")
    raise cls(message)


def retry_after_s(value: str | None) -> float:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date (1 when absent)."""
    if value is None:
        return 1.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 1.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class Client:
    """Blocking client. Use as a context manager or call :meth:`close`."""

    def __init__(self, url: str, *, timeout_s: float = 30.0, token: str | None = None) -> None:
        self._http = httpx.Client(base_url=url, timeout=timeout_s, headers=_headers(token))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(self, call: Call) -> Any:
        """Send one :class:`Call`; return its JSON answer or raise the server's error."""
        response = self._http.request(
            call.method, call.path, content=call.content, json=call.json, headers=call.headers
        )
        return parse(response)

    def predict_image(
        self, model: str, data: bytes, content_type: str = "image/png", version: str | None = None
    ) -> Any:
        """Classify one image (PNG or JPEG bytes)."""
        return self.send(predict_image_call(model, data, content_type, version))

    def predict_instances(
        self, model: str, instances: list[Any], version: str | None = None
    ) -> Any:
        """Predict a batch of JSON instances."""
        return self.send(predict_instances_call(model, instances, version))

    def infer_v2(self, model: str, body: dict[str, Any], version: str | None = None) -> Any:
        """Send an Open Inference Protocol v2 request."""
        return self.send(infer_v2_call(model, body, version))

    def ready(self) -> bool:
        """Whether the server reports ready."""
        return self._http.get("/v2/health/ready").status_code == 200


class AsyncClient:
    """Asynchronous client with the same methods as :class:`Client`."""

    def __init__(self, url: str, *, timeout_s: float = 30.0, token: str | None = None) -> None:
        self._http = httpx.AsyncClient(base_url=url, timeout=timeout_s, headers=_headers(token))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def send(self, call: Call) -> Any:
        """Send one :class:`Call`; return its JSON answer or raise the server's error."""
        response = await self._http.request(
            call.method, call.path, content=call.content, json=call.json, headers=call.headers
        )
        return parse(response)

    async def predict_image(
        self, model: str, data: bytes, content_type: str = "image/png", version: str | None = None
    ) -> Any:
        """Classify one image (PNG or JPEG bytes)."""
        return await self.send(predict_image_call(model, data, content_type, version))

    async def predict_instances(
        self, model: str, instances: list[Any], version: str | None = None
    ) -> Any:
        """Predict a batch of JSON instances."""
        return await self.send(predict_instances_call(model, instances, version))

    async def infer_v2(self, model: str, body: dict[str, Any], version: str | None = None) -> Any:
        """Send an Open Inference Protocol v2 request."""
        return await self.send(infer_v2_call(model, body, version))

    async def ready(self) -> bool:
        """Whether the server reports ready."""
        return (await self._http.get("/v2/health/ready")).status_code == 200
