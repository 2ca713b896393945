"""A payload's work in steps, each priced before it runs, so the caller picks where it runs.

    step = codec.decode(body, "image/png")   # cheap: header read, limits checked, priced
    step.body_bytes, step.pixels             # what step.run() will parse / decode
    value = step.run()                       # the result, or the next priced step
    value = finish(step)                     # every step, here

A codec does only the cheap part (sniffing, headers, counting, every limit check) when it
builds a step; what costs time in proportion to the payload waits in ``run``. The HTTP layer
runs small steps inline and sends large ones to a worker pool (``api/offload.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Step(Generic[T]):
    """Work left to do for one payload and what it costs.

    Attributes:
        run: does the work; returns the result or the next step.
        body_bytes: bytes of the payload ``run`` parses (JSON, base64).
        pixels: image pixels ``run`` decodes, already charged to the request's budget.
    """

    run: Callable[[], T | Step[T]]
    body_bytes: int = 0
    pixels: int = 0


def finish(value: T | Step[T]) -> T:
    """Run ``value``'s steps one after the other in this thread; return the result.

    Raises:
        Whatever the steps raise (InvalidInput, PayloadTooLarge).
    """
    while isinstance(value, Step):
        value = value.run()
    return value
