"""Artifacts a runtime can load."""

from torchslim.export.onnx import export_onnx
from torchslim.export.openvino import export_openvino  # imports openvino only when called
from torchslim.export.qdq import export_qdq

__all__ = ["export_onnx", "export_openvino", "export_qdq"]
