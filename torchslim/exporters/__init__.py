"""Artifacts a runtime can load."""

from torchslim.exporters.onnx import export_onnx
from torchslim.exporters.openvino import export_openvino  # imports openvino only when called
from torchslim.exporters.qdq import export_qdq
from torchslim.exporters.dynamic import export_dynamic
from torchslim.exporters.weight_only import export_weight_only
from torchslim.exporters.api import WRITERS, export, is_quantized

__all__ = ["WRITERS", "export", "export_onnx", "export_openvino", "export_qdq", "is_quantized",
           "export_dynamic", "export_weight_only"]
