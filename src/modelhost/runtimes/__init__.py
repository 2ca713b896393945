"""Runtimes: one module per framework; each turns a model directory into a Predictor."""

from modelhost.runtimes.base import LoadOptions, Predictor, Runtime
from modelhost.runtimes.registry import get_runtime, runs_code, runtime_names

__all__ = ["LoadOptions", "Predictor", "Runtime", "get_runtime", "runs_code", "runtime_names"]
