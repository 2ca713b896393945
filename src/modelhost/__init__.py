"""modelhost: train, pack, serve and scale AI models."""

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
