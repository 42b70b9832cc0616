"""Named intermediate layers: forward hooks that keep their outputs, and the adapters that
map a student's feature shape onto its teacher's.

An adapter is created only when the shapes differ: a 1×1 convolution for (B, C, H, W)
maps, a linear layer for (B, D) vectors. Spatial sizes are not learned: the larger map is
average-pooled to the smaller one in the loss (``losses.align_spatial``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from torchslim.errors import ConfigError, UnknownNameError

__all__ = ["FeatureTaps", "find_module", "make_adapter"]


def find_module(model: nn.Module, name: str, *, role: str = "model") -> nn.Module:
    """``model``'s submodule ``name``; an unknown name raises one line with close matches."""
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = (f"close matches: {', '.join(close)}" if close
            else f"its layers include: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}")
    raise UnknownNameError(f"the {role} ({type(model).__name__}) has no layer {name!r}; {hint}; "
                           "use a name from model.named_modules()")


class FeatureTaps:
    """Forward hooks keeping the latest output of each named layer: ``taps["layer3"]``."""

    def __init__(self, model: nn.Module, names: Iterable[str], *, role: str = "model") -> None:
        self.outputs: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []
        for name in dict.fromkeys(names):  # unique, in order
            module = find_module(model, name, role=role)
            self._handles.append(module.register_forward_hook(self._keep(name)))

    def _keep(self, name: str):  # noqa: ANN202 - a hook closure
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if not isinstance(output, Tensor):
                raise ConfigError(f"layer {name!r} returns {type(output).__name__}, not a "
                                       "tensor; pick a layer whose output is one tensor")
            self.outputs[name] = output
        return hook

    def __getitem__(self, name: str) -> Tensor:
        return self.outputs[name]

    def clear(self) -> None:
        self.outputs.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.outputs.clear()


def make_adapter(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    """The learnable map from a student feature to its teacher's channel count.

    (B, Cs, H, W) -> 1×1 conv to Ct (Identity when Cs == Ct); (B, Ds) -> linear to Dt.
    A 4-D student map hinted by a 2-D teacher vector is globally pooled first.
    """
    s_channels, t_channels = student_shape[1], teacher_shape[1]
    if len(student_shape) == 4 and len(teacher_shape) == 4:
        if s_channels == t_channels:
            return nn.Identity()
        return nn.Conv2d(s_channels, t_channels, kernel_size=1, bias=False)
    if len(teacher_shape) == 2:
        pool: list[nn.Module] = ([nn.AdaptiveAvgPool2d(1), nn.Flatten()]
                                 if len(student_shape) == 4 else [])
        if s_channels == t_channels and not pool:
            return nn.Identity()
        return nn.Sequential(*pool, nn.Linear(s_channels, t_channels))
    raise ConfigError(f"cannot hint a student feature of shape {tuple(student_shape)} with "
                           f"a teacher feature of shape {tuple(teacher_shape)}; pick layers "
                           "whose outputs are both (B, C, H, W) maps or (B, D) vectors")
