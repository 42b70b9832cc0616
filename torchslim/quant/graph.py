"""fx tracing with untraceable submodules kept as float leaves; it lives in
``torchslim.capture.fx`` (the graph-capture layer) and is re-exported here."""

from torchslim.capture.fx import (FallbackTracer, UntraceableLeaf, is_tensor_node, node_module,
                                  trace)

__all__ = ["trace", "FallbackTracer", "UntraceableLeaf", "node_module", "is_tensor_node"]
