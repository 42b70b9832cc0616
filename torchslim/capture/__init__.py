"""Graph capture of any model: ``capture(model, example_inputs)`` returns graphs that see
every op (torch.export first, torch.fx as the fallback, then submodule by submodule), with
the shape and dtype of every value; ``ExampleInputs`` is the one form of a model's inputs
(a tensor, a tuple or a dict, any dtypes) that capture, quantization and export share.

>>> import torch
>>> from torchslim.capture import capture
>>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
>>> captured = capture(net, torch.randn(2, 3, 8, 8))
>>> captured.method
'export'
"""

from torchslim.capture.api import METHODS, Captured, capture, record_call_inputs
from torchslim.capture.inputs import (DynamicDims, ExampleInputs, as_example_inputs, batch_inputs,
                                      call, check_dynamic_dims, to_device)
from torchslim.capture.ops import OpKind, op_kind, node_macs
from torchslim.capture.values import ValueInfo, is_float_node, module_macs, record_values_, value_of

__all__ = ["capture", "Captured", "METHODS", "record_call_inputs", "ExampleInputs",
           "as_example_inputs", "batch_inputs", "call", "to_device", "DynamicDims",
           "check_dynamic_dims", "ValueInfo", "value_of", "is_float_node", "record_values_",
           "OpKind", "op_kind", "node_macs"]
