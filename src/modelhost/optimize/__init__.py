"""Optimize and export: torch archives -> ONNX or TorchScript archives."""
