"""How much one request may make the server decode, checked before the work it bounds.

Bytes on the wire are bounded by ``max_body_bytes``; these bound what the bytes turn into:

    body ──► JSON containers ≤ max_elements   (bytes.count, before orjson builds objects)
         ──► instances / batch rows ≤ max_items
         ──► tensor elements (product of the declared shapes) ≤ max_elements
         ──► each image's header size ≤ max_image_pixels, their sum ≤ max_request_pixels
             (read from the header, before any pixel is decoded)

Every refusal is :class:`PayloadTooLarge` naming the setting (``max_request_items``, ...)
that an operator raises to allow it.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelhost.errors import PayloadTooLarge
from modelhost.types import TensorSpec

# Containers any body may hold beyond its tensors: the envelope, outputs, parameters, an id.
_ENVELOPE_CONTAINERS = 2048


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Per-request decode limits; the defaults are those of :class:`modelhost.config.Settings`.

    Attributes:
        max_items: instances (rows along the batch axis) in one request.
        max_elements: decoded tensor elements in one request, all inputs together.
        max_image_pixels: width x height of one image, read from its header.
        max_request_pixels: width x height summed over every image of one request.
    """

    max_items: int = 1024
    max_elements: int = 8 * 1024**2
    max_image_pixels: int = 4096 * 4096
    max_request_pixels: int = 64 * 1024**2

    def check_items(self, count: int, field: str) -> None:
        """Refuse more than ``max_items`` instances in ``field``."""
        if count > self.max_items:
            raise PayloadTooLarge(
                f"{field}: {count} instances are over the limit of {self.max_items} per "
                "request (max_request_items); split the request"
            )

    def check_elements(self, count: int, field: str) -> None:
        """Refuse more than ``max_elements`` decoded tensor elements in ``field``."""
        if count > self.max_elements:
            raise PayloadTooLarge(
                f"{field}: {count} tensor elements are over the limit of {self.max_elements} "
                "per request (max_request_elements); split the request"
            )

    def check_json_containers(self, body: bytes, inputs: tuple[TensorSpec, ...]) -> None:
        """Refuse a JSON body with more arrays and objects than any request within the
        limits can need for ``inputs`` (see :func:`most_json_containers`).

        Each container costs the parser ~75 bytes: a 16 MiB body of ``[[0],[0],...]``
        grew a server's peak RSS by 433 MiB before this check (measured), and 160k
        ``{"b64": ...}`` instances by 96 MiB. Counting is ``bytes.count`` in C, before
        anything is parsed; brackets inside strings count too, which only errs towards
        refusing a hostile body (the bound leaves room for a long ``id``).
        """
        containers = body.count(b"[") + body.count(b"{")
        most, setting = most_json_containers(inputs, self)
        if containers > most:
            raise PayloadTooLarge(
                f"body: {containers} JSON arrays and objects are more than the {most} that a "
                f"request for this model can hold within its limit ({setting}); split it"
            )

    def pixel_budget(self) -> PixelBudget:
        """A fresh budget for the images of one request."""
        return PixelBudget(self)


class PixelBudget:
    """The pixels one request has left to decode (mutable: one per request)."""

    __slots__ = ("_limits", "used")

    def __init__(self, limits: DecodeLimits) -> None:
        self._limits = limits
        self.used = 0

    def take(self, width: int, height: int, field: str) -> None:
        """Account for one image of ``width`` x ``height`` before it is decoded.

        Raises:
            PayloadTooLarge: the image is over ``max_image_pixels`` or the request's images
                together are over ``max_request_pixels``.
        """
        pixels = width * height
        limits = self._limits
        if pixels > limits.max_image_pixels:
            raise PayloadTooLarge(
                f"{field}: image of {width}x{height} pixels is over the limit of "
                f"{limits.max_image_pixels} pixels per image (max_image_pixels)"
            )
        if self.used + pixels > limits.max_request_pixels:
            raise PayloadTooLarge(
                f"{field}: the request's images hold over {limits.max_request_pixels} pixels "
                "(max_request_pixels); send fewer or smaller images"
            )
        self.used += pixels


def most_json_containers(inputs: tuple[TensorSpec, ...], limits: DecodeLimits) -> tuple[int, str]:
    """The most JSON arrays and objects a request within ``limits`` can need, and the
    setting that bounds it.

    One item of shape ``(d1, ..., dk)`` sent nested is ``1 + d1 + d1*d2 + ... +
    d1*...*d(k-1)`` lists, plus one object when it is ``{"b64": ...}`` or a named instance;
    a request holds at most ``max_items`` of them per input. A dynamic dimension before the
    last makes the count unbounded by items: then ``max_elements`` bounds it (one list per
    element at most, for dimensions of size one).
    """
    total = _ENVELOPE_CONTAINERS + limits.max_items  # one object per instance
    for spec in inputs:
        per_item, width = 1, 1
        for dim in spec.shape[1:-1]:
            if dim < 0:
                return _ENVELOPE_CONTAINERS + limits.max_elements * 2, "max_request_elements"
            width *= dim
            per_item += width
        total += 4 + limits.max_items * per_item
    return total, "max_request_items"
