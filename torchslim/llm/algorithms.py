"""The per-layer rewrites, one per method, registered by name.

Each algorithm says which input statistics it needs and rewrites one decoder layer in
place from them; ``quantize_llm`` runs the same layer-by-layer driver for all of them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchslim.llm.calibrate import InputStats
from torchslim.llm.clip import search_qparams
from torchslim.llm.config import LLMQuantConfig
from torchslim.llm.gptq import gptq_quantize
from torchslim.llm.qlinear import W8A8Linear, WeightOnlyLinear, encode_weight, pad_columns
from torchslim.llm.scaling import ScaleGroup, fold_scales_, linear_weight
from torchslim.quant.affine import calc_qparams_for, fake_quantize

logger = logging.getLogger(__name__)

__all__ = ["LayerAlgorithm", "ALGORITHMS", "replace_linear"]

Stats = dict[str, InputStats]


Skip = Callable[[str], bool]


@dataclass(frozen=True)
class LayerAlgorithm:
    needs: frozenset[str]  # InputStats fields to gather; empty = no calibration
    # apply(layer, stats, config, skip, scale groups of the layer) rewrites the layer
    apply: Callable[[nn.Module, Stats, LLMQuantConfig, Skip, list[ScaleGroup]], None]
    uses_groups: bool = False  # folds scales through the graph's scale groups


def replace_linear(layer: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(layer.get_submodule(parent) if parent else layer, attr, new)


def _linears(layer: nn.Module, skip: Callable[[str], bool]) -> list[tuple[str, nn.Linear]]:
    return [(n, m) for n, m in layer.named_modules()
            if type(m) is nn.Linear and not skip(n)]


def _rtn_linear(linear: nn.Linear, cfg: LLMQuantConfig) -> WeightOnlyLinear:
    codes, scales, zeros = encode_weight(linear.weight.detach().float(), cfg.spec)
    return WeightOnlyLinear.from_codes(linear, codes, scales, zeros, bits=cfg.bits,
                                       group_size=cfg.group_size)


def apply_rtn(layer: nn.Module, _stats: Stats, cfg: LLMQuantConfig, skip: Skip,
              _groups: list[ScaleGroup]) -> None:
    for name, linear in _linears(layer, skip):
        replace_linear(layer, name, _rtn_linear(linear, cfg))


def apply_gptq(layer: nn.Module, stats: Stats, cfg: LLMQuantConfig, skip: Skip,
               _groups: list[ScaleGroup]) -> None:
    # Linears reading the same input share H, and GPTQ treats rows independently: q/k/v
    # (gate/up) are stacked and solved in one pass.
    by_input: dict[int, list[tuple[str, nn.Linear]]] = {}
    for name, linear in _linears(layer, skip):
        by_input.setdefault(id(stats[name].owner), []).append((name, linear))
    for members in by_input.values():
        weight = torch.cat([lin.weight.detach() for _, lin in members])  # (sum N, K)
        codes, scales, zeros = gptq_quantize(weight, stats[members[0][0]].h(), cfg.spec,
                                             block_size=cfg.block_size, damp=cfg.damp,
                                             act_order=cfg.act_order, clip=cfg.clip_search)
        start = 0
        for name, linear in members:
            rows = slice(start, start + linear.out_features)
            start += linear.out_features
            replace_linear(layer, name, WeightOnlyLinear.from_codes(
                linear, codes[rows], scales[rows], zeros[rows], bits=cfg.bits,
                group_size=cfg.group_size))


def _rounded(w: Tensor, cfg: LLMQuantConfig) -> Tensor:
    spec = cfg.spec
    padded = pad_columns(w, spec.group_size)
    scale, zero = calc_qparams_for(padded, spec)
    return fake_quantize(padded, scale, zero, spec)[:, : w.shape[1]]


def awq_search(x: Tensor, x_mean: Tensor, weights: list[Tensor], cfg: LLMQuantConfig
               ) -> tuple[Tensor, float]:
    """The scale ``s = mean|x|^alpha`` (alpha on a grid) minimising the group's output
    error ``|X W^T - (X / s) Q(W s)^T|^2`` on the sample ``x`` ``(rows, K)``."""
    w = torch.cat(weights).float()  # (sum N, K): rows are quantized independently
    ref = x @ w.t()  # (rows, sum N)
    best_err, best_s, best_alpha = float("inf"), torch.ones_like(x_mean), 0.0
    for i in range(cfg.grid):
        alpha = i / cfg.grid
        s = x_mean.clamp(min=1e-4) ** alpha
        s = s / (s.max() * s.min()).sqrt()  # keep the scales centred around 1
        err = float(((x / s) @ _rounded(w * s, cfg).t() - ref).pow(2).mean())
        if err < best_err:
            best_err, best_s, best_alpha = err, s, alpha
    return best_s, best_alpha


def apply_awq(layer: nn.Module, stats: Stats, cfg: LLMQuantConfig, skip: Skip,
              groups: list[ScaleGroup]) -> None:
    input_scale: dict[str, Tensor] = {}  # the s each Linear's input is now divided by
    for group in groups:
        if any(skip(n) or n not in stats for n in group.linears):
            continue
        first = stats[group.linears[0]]
        weights = [linear_weight(layer.get_submodule(n)) for n in group.linears]
        s, alpha = awq_search(first.sample(), first.mean_abs(), weights, cfg)
        fold_scales_(layer, group, s)
        input_scale.update(dict.fromkeys(group.linears, s))
        logger.debug("awq %s: alpha=%.2f", group.prev, alpha)
    for name, linear in _linears(layer, skip):
        if not cfg.clip_search or name not in stats:
            replace_linear(layer, name, _rtn_linear(linear, cfg))
            continue
        x = stats[name].sample()  # (rows, K) as calibrated, before the scaling
        if name in input_scale:
            x = x / input_scale[name]
        replace_linear(layer, name, _clipped_linear(linear, cfg, x.pow(2).mean(dim=0)))


def _clipped_linear(linear: nn.Linear, cfg: LLMQuantConfig, importance: Tensor
                    ) -> WeightOnlyLinear:
    """RTN on group ranges chosen by ``search_qparams`` (AWQ's clipping search)."""
    spec = cfg.spec
    w = pad_columns(linear.weight.detach().float(), spec.group_size)  # (N, K_pad)
    n, k_pad = w.shape
    g = spec.group_size or k_pad
    imp = F.pad(importance.float(), (0, k_pad - importance.numel())).reshape(-1, g)  # (G, g)
    chan = dataclasses.replace(spec, granularity="per_channel", axis=0, group_size=None)
    s, z = search_qparams(w.reshape(-1, g), chan, imp.repeat(n, 1))  # (N * G,)
    shape = (n,) if spec.group_size is None else (n, k_pad // g)
    codes, scales, zeros = encode_weight(linear.weight.detach(), spec, s.reshape(shape),
                                         z.reshape(shape))
    return WeightOnlyLinear.from_codes(linear, codes, scales, zeros, bits=cfg.bits,
                                       group_size=cfg.group_size)


def smooth_scales(act_max: Tensor, weights: list[Tensor], alpha: float) -> Tensor:
    """SmoothQuant: ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` over the group's weights."""
    w_max = torch.cat(weights).abs().amax(dim=0).float().clamp(min=1e-5)  # (K,)
    s = act_max.clamp(min=1e-5) ** alpha / w_max ** (1 - alpha)
    return s.clamp(min=1e-5)


def apply_smoothquant(layer: nn.Module, stats: Stats, cfg: LLMQuantConfig, skip: Skip,
                      groups: list[ScaleGroup]) -> None:
    for group in groups:  # norm -> linear (the paper's) and linear -> linear groups
        if any(skip(n) or n not in stats for n in group.linears):
            continue
        weights = [linear_weight(layer.get_submodule(n)) for n in group.linears]
        act_max = stats[group.linears[0]].abs_max
        if act_max is None:
            continue
        fold_scales_(layer, group, smooth_scales(act_max, weights, cfg.alpha))
    for name, linear in _linears(layer, skip):
        replace_linear(layer, name, W8A8Linear.from_float(linear))


ALGORITHMS: dict[str, LayerAlgorithm] = {
    "rtn": LayerAlgorithm(frozenset(), apply_rtn),
    "gptq": LayerAlgorithm(frozenset({"hessian"}), apply_gptq),
    "awq": LayerAlgorithm(frozenset({"absmean", "sample"}), apply_awq, uses_groups=True),
    "smoothquant": LayerAlgorithm(frozenset({"absmax"}), apply_smoothquant, uses_groups=True),
}
