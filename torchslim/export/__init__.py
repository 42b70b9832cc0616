"""Artifacts a runtime can load."""

from torchslim.export.onnx import export_onnx

__all__ = ["export_onnx"]
