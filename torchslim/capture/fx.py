"""Graph capture with torch.fx that degrades gracefully (the fallback when torch.export
cannot capture a model: see ``torchslim.capture``).

Real models contain submodules fx cannot trace (data-dependent ``if``, calls into numpy,
...). Instead of failing, ``trace`` marks the innermost submodule that was being traced
when the error happened as a leaf (called as one opaque module) and tries again; such
leaves stay in float. Only a failure in the root ``forward`` itself is fatal.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from torch import fx, nn

from torchslim.errors import UnsupportedModelError

__all__ = ["trace", "FallbackTracer", "UntraceableLeaf", "node_module", "is_tensor_node",
           "one_line"]

logger = logging.getLogger(__name__)


class UntraceableLeaf(str):
    """Name of a submodule kept opaque, with ``.reason`` (why fx could not trace it)."""

    reason: str

    def __new__(cls, name: str, reason: str) -> UntraceableLeaf:
        obj = super().__new__(cls, name)
        obj.reason = reason
        return obj


class FallbackTracer(fx.Tracer):
    """A tracer with extra leaves, which remembers where the last trace failed."""

    def __init__(self, leaves: Iterable[str] = ()) -> None:
        super().__init__()
        self.leaves = set(leaves)
        self.failed_in: str | None = None  # innermost module path of the last failure

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaves:
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        name = self.path_of_module(m)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            # The innermost module raises first; outer frames must not overwrite it.
            if self.failed_in is None:
                self.failed_in = name
            raise


def trace(model: nn.Module, *, leaves: Iterable[str] = (), warn: bool = True
          ) -> tuple[fx.GraphModule, list[UntraceableLeaf]]:
    """``(graph module, untraceable leaves)``; each leaf is also reported by a warning
    (``warn=False``: by the log only, for a caller that captures the leaf another way).

    ``leaves`` are module names to keep opaque from the start (e.g. a skipped block).
    The graph module shares ``model``'s submodules: pass a copy to change it freely.
    """
    forced = set(leaves)
    untraceable: list[UntraceableLeaf] = []
    while True:
        tracer = FallbackTracer(forced | set(untraceable))
        try:
            graph = tracer.trace(model)
        except Exception as e:  # fx raises TraceError, TypeError, RuntimeError, ...
            reason = one_line(e)
            name = tracer.failed_in
            if not name or name in tracer.leaves:
                raise UnsupportedModelError(
                    f"cannot trace {type(model).__name__}: {reason}; mark the offending "
                    "submodule with skip=[...] to keep it in float") from e
            leaf = UntraceableLeaf(name, reason)
            untraceable.append(leaf)
            # A warning (not only a log line): a float block changes speed and accuracy, and
            # the user should see it even with logging unconfigured. Also in the record.
            if warn:
                warnings.warn(f"kept in float: {name} (cannot trace: {reason})", stacklevel=2)
            logger.info("fx: %s traced as a leaf (%s)", name, reason)
            continue
        root_name = type(model).__name__
        return fx.GraphModule(tracer.root, graph, root_name), untraceable


def one_line(e: BaseException) -> str:
    """``Type: first line of the message``, at most 200 characters."""
    text = str(e).strip().splitlines()
    first = text[0] if text else type(e).__name__
    return f"{type(e).__name__}: {first}"[:200]


def node_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The module a ``call_module`` node calls, else None."""
    if node.op != "call_module":
        return None
    return gm.get_submodule(str(node.target))


def is_tensor_node(arg: Any) -> bool:
    """Whether ``arg`` is a graph value (not a constant); fx does not know dtypes, so any
    node that is not a ``size()`` / ``dim()`` query counts as a tensor."""
    if not isinstance(arg, fx.Node):
        return False
    return not (arg.op == "call_method" and arg.target in ("size", "dim", "numel"))

