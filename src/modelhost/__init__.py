"""modelhost: train, pack, serve and scale AI models.

The public names are imported on first use (a module ``__getattr__``, PEP 562), so
``import modelhost.client`` loads neither numpy nor any server dependency: the SDK installs
and imports alone. ``from modelhost import InferRequest`` works as an ordinary import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelhost.errors import (
        ArchiveError,
        DeadlineExceeded,
        InvalidInput,
        ModelhostError,
        ModelNotFound,
        Overloaded,
    )
    from modelhost.types import InferRequest, InferResult, ModelRef, TensorSpec

__version__ = "0.1.0"

# Each public name, by the module that defines it.
_MODULE_OF = {
    "ArchiveError": "modelhost.errors",
    "DeadlineExceeded": "modelhost.errors",
    "InferRequest": "modelhost.types",
    "InferResult": "modelhost.types",
    "InvalidInput": "modelhost.errors",
    "ModelNotFound": "modelhost.errors",
    "ModelRef": "modelhost.types",
    "ModelhostError": "modelhost.errors",
    "Overloaded": "modelhost.errors",
    "TensorSpec": "modelhost.types",
}

__all__ = [
    "ArchiveError",
    "DeadlineExceeded",
    "InferRequest",
    "InferResult",
    "InvalidInput",
    "ModelNotFound",
    "ModelRef",
    "ModelhostError",
    "Overloaded",
    "TensorSpec",
    "__version__",
]


def __getattr__(name: str) -> object:
    """Import a public name from its module on first access, then keep it here."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
