"""Layer-by-layer calibration: memory stays near one decoder layer's worth beyond the model.

The calibration windows run through the embedding once; the hidden states entering the
first decoder layer are kept (``n_samples x seq_len x hidden`` floats). Then, for each
layer in turn: hooks on its ``nn.Linear`` inputs gather what the algorithm needs
(``InputStats``), the algorithm rewrites the layer, and the rewritten layer maps the kept
hidden states to the next layer's inputs, so each layer is calibrated on the outputs of the
already-quantized layers before it (as GPTQ and AWQ do).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from torchslim._progress import track
from torchslim.errors import UnsupportedModelError

logger = logging.getLogger(__name__)

__all__ = ["InputStats", "decoder_layers", "capture_layer_inputs", "run_layer",
           "collect_stats", "calibrate_layers"]


@dataclass
class InputStats:
    """Running statistics of one Linear's input ``x`` ``(rows, K)``."""

    needs: frozenset[str]  # subset of {"hessian", "absmean", "absmax", "sample"}
    max_rows: int = 4096  # rows kept for "sample"
    rows: int = 0
    hessian: Tensor | None = None  # (K, K): sum of x^T x (scaled to 2 X X^T / n on read)
    abs_sum: Tensor | None = None  # (K,)
    abs_max: Tensor | None = None  # (K,)
    samples: list[Tensor] = field(default_factory=list)
    sample_stride: int = 1
    shared: InputStats | None = None  # another Linear that reads the same input tensor

    def update(self, x_in: Tensor, cache: dict[str, Any]) -> None:
        x = x_in.detach().reshape(-1, x_in.shape[-1]).float()  # (rows, K)
        if "hessian" in self.needs:
            if cache.get("x") is x_in:  # q/k/v (gate/up) read one tensor: share one Hessian
                self.shared = cache["owner"]
            else:
                cache["x"], cache["owner"] = x_in, self
                xtx = x.t() @ x  # (K, K)
                self.hessian = xtx if self.hessian is None else self.hessian.add_(xtx)
        if "absmean" in self.needs:
            s = x.abs().sum(0)
            self.abs_sum = s if self.abs_sum is None else self.abs_sum + s
        if "absmax" in self.needs:
            m = x.abs().amax(0)
            self.abs_max = m if self.abs_max is None else torch.maximum(self.abs_max, m)
        if "sample" in self.needs:
            self.samples.append(x[:: self.sample_stride].clone())
        self.rows += x.shape[0]

    @property
    def owner(self) -> InputStats:
        """The stats that hold the Hessian for this input (itself unless shared)."""
        return self.shared if self.shared is not None else self

    def h(self) -> Tensor:
        """``2 X X^T / n``, GPTQ's Hessian of the squared output error."""
        owner = self.owner
        if owner.hessian is None:
            raise UnsupportedModelError("no calibration rows reached this layer")
        return owner.hessian * (2.0 / max(owner.rows, 1))

    def mean_abs(self) -> Tensor:
        assert self.abs_sum is not None
        return self.abs_sum / max(self.rows, 1)

    def sample(self) -> Tensor:
        return torch.cat(self.samples)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The repeated decoder blocks: the longest ``nn.ModuleList`` in the model."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise UnsupportedModelError(f"{type(model).__name__} has no nn.ModuleList of decoder "
                                    "layers; layer-by-layer calibration needs one")
    return max(lists, key=len)


class _Stop(Exception):
    pass


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, layers: nn.ModuleList, input_ids: Tensor, *,
                         batch_size: int, attention_mask: Tensor | None = None
                         ) -> list[tuple[Tensor, dict[str, Any]]]:
    """``[(hidden_states, layer kwargs)]`` entering ``layers[0]``, one per batch of windows
    (the model called with its attention mask, as ``TextModel`` calls it: no KV cache)."""
    from torchslim.transformers.model import TextModel

    captured: list[tuple[Tensor, dict[str, Any]]] = []

    def hook(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden.detach(), {k: v for k, v in kwargs.items()
                                           if k not in ("past_key_values", "past_key_value",
                                                        "cache")}))
        raise _Stop

    net = TextModel(model)
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, input_ids.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            try:
                net(input_ids[rows], attention_mask=mask[rows])
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


def run_layer(layer: nn.Module, hidden: Tensor, kwargs: dict[str, Any]) -> Tensor:
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


@contextmanager
def collect_stats(layer: nn.Module, needs: frozenset[str], *, skip: Callable[[str], bool],
                  max_rows: int, total_rows: int) -> Iterator[dict[str, InputStats]]:
    """Hooks on every Linear of ``layer`` (bar ``skip``) filling ``{name: InputStats}``."""
    stats: dict[str, InputStats] = {}
    handles = []
    stride = max(1, total_rows // max_rows)
    cache: dict[str, Any] = {}  # the last input seen and the stats that own its Hessian
    for name, module in layer.named_modules():
        if isinstance(module, nn.Linear) and not skip(name):
            st = stats[name] = InputStats(needs=needs, max_rows=max_rows, sample_stride=stride)
            handles.append(module.register_forward_hook(
                lambda _m, args, _out, st=st: st.update(args[0], cache)))
    try:
        yield stats
    finally:
        cache.clear()
        for h in handles:
            h.remove()


@torch.no_grad()
def calibrate_layers(model: nn.Module, input_ids: Tensor, *, needs: frozenset[str],
                     apply: Callable[[str, nn.Module, dict[str, InputStats]], None],
                     skip: Callable[[str], bool], batch_size: int, max_rows: int) -> None:
    """For each decoder layer: gather ``needs`` on its inputs, ``apply(prefix, layer,
    stats)`` (which rewrites the layer in place), then move the hidden states through the
    rewritten layer."""
    layers = decoder_layers(model)
    prefix = next(n for n, m in model.named_modules() if m is layers)
    batches = capture_layer_inputs(model, layers, input_ids, batch_size=batch_size)
    total_rows = input_ids.numel()
    for i, layer in enumerate(track(layers, description="calibrating layers",
                                    total=len(layers))):
        name = f"{prefix}.{i}"
        with collect_stats(layer, needs, skip=lambda n, p=name: skip(f"{p}.{n}"),
                           max_rows=max_rows, total_rows=total_rows) as stats:
            for hidden, kwargs in batches:
                run_layer(layer, hidden, kwargs)
        apply(name, layer, stats)
        del stats
        for j in range(len(batches)):  # in place, so one batch's old states at most coexist
            batches[j] = (run_layer(layer, *batches[j]), batches[j][1])
        logger.debug("calibrated %s", name)
