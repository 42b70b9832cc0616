"""GPT-2's ``Conv1D`` projections as the ``nn.Linear`` layers they compute.

``transformers.pytorch_utils.Conv1D`` is ``x @ W + b`` with ``W`` stored ``(in, out)``:
a Linear by another name, which every method that matches ``nn.Linear`` (dynamic, static
and weight-only quantization, the LLM methods) would otherwise pass over. Matched by class
name, so importing this needs no ``transformers``.
"""

from __future__ import annotations

from torch import nn

__all__ = ["conv1d_layers", "conv1d_to_linear_"]


def conv1d_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every transformers ``Conv1D`` in ``model``."""
    return [(n, m) for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]


def conv1d_to_linear_(model: nn.Module, *, requires_grad: bool | None = None) -> int:
    """Replace each ``Conv1D`` by the ``nn.Linear`` it computes (weight ``(out, in)``), in
    place; the number replaced. New tensors are made: ones ``model`` shares with another
    model are not written. ``requires_grad``: of the new parameters (None: the old ones')."""
    found = conv1d_layers(model)
    for name, conv in found:
        linear = nn.Linear(conv.weight.shape[0], conv.weight.shape[1],
                           bias=conv.bias is not None, dtype=conv.weight.dtype,
                           device=conv.weight.device)
        grad = conv.weight.requires_grad if requires_grad is None else requires_grad
        linear.weight = nn.Parameter(conv.weight.detach().t().contiguous(), requires_grad=grad)
        if conv.bias is not None:
            linear.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=grad)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, linear)
    return len(found)
