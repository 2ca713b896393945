"""Values that cross package lines: frozen, slotted dataclasses with numpy payloads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named tensor of a model signature; ``-1`` in ``shape`` marks a dynamic dim."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A model name and, optionally, a version (``None`` = the default version)."""

    name: str
    version: str | None = None

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}:{self.version}"


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A decoded inference request (the model that answers it is resolved beforehand).

    ``inputs`` maps input names to arrays whose first axis is the batch axis and whose
    dtype already is the signature's; ``deadline_s`` is on the ``time.monotonic`` clock.
    """

    inputs: Mapping[str, np.ndarray]
    deadline_s: float
    id: str | None = None

    @property
    def batch_size(self) -> int:
        """Number of items (rows along axis 0) this request carries."""
        return int(next(iter(self.inputs.values())).shape[0])


@dataclass(frozen=True, slots=True)
class InferResult:
    """The answer to one :class:`InferRequest`: outputs sliced back to its own rows."""

    model_name: str
    model_version: str
    outputs: Mapping[str, np.ndarray]
    queue_s: float = 0.0
    compute_s: float = 0.0
    batch_size: int = 1
    id: str | None = field(default=None)
