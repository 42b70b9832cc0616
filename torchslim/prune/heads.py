"""Structured pruning of Hugging Face transformers by whole attention heads and MLP
intermediate channels, with the config updated so the model saves, reloads and exports.

>>> model = tiny_model("bert")  # 4 heads of 16, MLP 128
>>> result = prune_heads_(model, HeadPruneConfig(heads=0.5, mlp=0.5))
>>> result.layers[0].heads_removed, result.mac_ratio(seq=128)
([0, 3], 0.5)

Every layer loses the same number of heads and channels, so one config describes it;
``HeadPruneConfig(macs=0.5)`` instead removes half the attention + MLP MACs where they
matter least, layer by layer (``torchslim.prune.head_allocation``), and each layer keeps
its own head count and width (``load_pretrained`` restores them).
A head goes with its q, k and v rows and its o columns; a channel with its up (and
gate) row and its down column. With grouped-query attention (``kv_heads < heads``)
``gqa="groups"`` removes whole KV groups: one KV head with the query heads that read
it, so k and v shrink too; ``gqa="queries"`` keeps every KV head and removes the same
number of query heads from each group. Both leave a valid attention (every group the
same size).

The pruned model is checked before it is returned: its output on one batch must equal
the original's with the same heads' o columns and the same channels' down columns
zeroed, which holds only if whole heads and channels were removed and every head count
the forward reads was updated. On any failure the model is left exactly as it was.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from torchslim._record import update_
from torchslim.errors import ConfigError, UnsupportedModelError
from torchslim.prune.attention import (TransformerLayer, ancestors, common_parent, find_layers,
                                       head_shape, in_out)
from torchslim.prune.guard import ModelSnapshot
from torchslim.prune.head_allocation import LayerCounts, global_counts
from torchslim.prune.head_config import GQA_MODES, HeadPruneConfig, HeadPruneResult, LayerPruning
from torchslim.prune.head_importance import DATA_IMPORTANCE, HEAD_IMPORTANCE, batches_of
from torchslim.transformers.persist import note_attributes_, note_build_config_

__all__ = ["GQA_MODES", "HeadPruneConfig", "HeadPruneResult", "LayerPruning", "prune_heads_"]

logger = logging.getLogger(__name__)

# attributes an attention or MLP module may keep its sizes in: set to the new count when
# they hold the old one, and recorded for load_pretrained
_HEAD_COUNTS = ("num_heads", "num_attention_heads", "n_head", "n_heads", "num_attn_heads")
_KV_COUNTS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_kv_head")
_GROUP_COUNTS = ("num_key_value_groups", "num_kv_groups", "n_rep")
_Q_WIDTHS = ("all_head_size", "split_size")  # heads * head_dim
_HEAD_SIZES = ("head_dim", "attention_head_size", "head_size")  # unchanged, recorded
_MLP_WIDTHS = ("intermediate_size", "ffn_dim", "n_inner")
_CONFIG_WIDTHS = ("intermediate_size", "n_inner", "ffn_dim", "d_ff", "ffn_hidden_size")


def _tolerance(dtype: torch.dtype) -> float:
    """Relative max error allowed between the pruned output and the masked original: the
    sums only run in another order, so float32 agrees to ~1e-6; half types to their eps."""
    return max(1e-4, 10 * torch.finfo(dtype).eps)


def _count(share: float, total: int, what: str, option: str) -> int:
    """How many of ``total`` to remove for ``share`` (rounded to the nearest)."""
    k = math.floor(share * total + 0.5)
    if k >= total:
        raise ConfigError(f"{option}={share} would remove all {total} {what} of every layer; "
                          f"ask for less than {(total - 0.5) / total:.2f}")
    if share > 0 and k == 0:
        logger.warning("%s=%s of %d %s rounds to none: nothing of them is removed",
                       option, share, total, what)
    return k


def _keep(scores: Tensor, remove: int) -> tuple[list[int], list[int]]:
    """(kept, removed) indices, the ``remove`` lowest scores going (ties: the later)."""
    order = sorted(range(len(scores)), key=lambda i: (float(scores[i]), -i))
    return sorted(order[remove:]), sorted(order[:remove])


def _uniform_counts(layers: list[TransformerLayer], config: HeadPruneConfig
                    ) -> list[LayerCounts]:
    """The same share of every layer: KV groups (or query heads per group) and channels."""
    out = []
    for layer in layers:
        units = channels = 0
        if (a := layer.attention) is not None and config.heads:
            r = a.group
            if config.gqa == "groups" or r == 1:
                what = "heads" if r == 1 else f"KV groups ({r} query heads each)"
                units = _count(config.heads, a.kv_heads, what, "heads")
            else:
                units = _count(config.heads, r, "query heads per KV group", "heads")
        if layer.mlp is not None and config.mlp:
            channels = _count(config.mlp, layer.mlp.width, "MLP channels", "mlp")
        out.append(LayerCounts(units=units, channels=channels))
    return out


def _plan(layer: TransformerLayer, scores: tuple[Tensor, Tensor, Tensor], counts: LayerCounts,
          gqa: str) -> LayerPruning:
    """Which heads and channels go: the ``counts`` least important of the layer."""
    q, kv, ch = scores
    heads = list(range(len(q)))
    kv_kept, kv_removed, kept, removed = list(range(len(kv))), [], heads, []
    if (a := layer.attention) is not None and counts.units:
        r = a.group
        if gqa == "groups" or r == 1:
            units = torch.stack([q[g * r:(g + 1) * r].sum() + kv[g] for g in range(a.kv_heads)])
            kv_kept, kv_removed = _keep(units, counts.units)
            kept = [g * r + j for g in kv_kept for j in range(r)]
        else:
            kept = [g * r + j for g in range(a.kv_heads)
                    for j in _keep(q[g * r:(g + 1) * r], counts.units)[0]]
        removed = [h for h in heads if h not in kept]
    channels = list(range(len(ch)))
    ch_kept, ch_removed = channels, []
    if layer.mlp is not None and counts.channels:
        ch_kept, ch_removed = _keep(ch, counts.channels)
    return LayerPruning(layer.name, kept, removed, kv_kept, kv_removed, ch_kept, ch_removed)


def _counts(hf: nn.Module, layers: list[TransformerLayer], scores: list[Any],
            config: HeadPruneConfig) -> list[LayerCounts]:
    if config.macs is None:
        return _uniform_counts(layers, config)
    heads = [layer.attention.heads if layer.attention else 0 for layer in layers]
    _, shapes = _projection_sizes(hf, layers, heads)
    total = sum(w + 2 * h * config.seq * d for w, h, d in shapes)  # per token
    return global_counts(hf, layers, scores, share=config.macs, seq=config.seq, gqa=config.gqa,
                         min_heads=config.min_heads, min_mlp=config.min_mlp, total_macs=total)


def _rows(heads: list[int], head_dim: int, offset: int = 0) -> list[int]:
    return [offset + h * head_dim + i for h in heads for i in range(head_dim)]


def _keep_out_(module: nn.Module, idx: list[int]) -> None:
    """Keep only output features ``idx`` of a Linear or Conv1D (weight ``(in, out)``)."""
    index = torch.tensor(idx, device=module.weight.device)
    linear = isinstance(module, nn.Linear)
    w = module.weight.detach().index_select(0 if linear else 1, index).clone()
    module.weight = nn.Parameter(w, requires_grad=module.weight.requires_grad)
    if getattr(module, "bias", None) is not None:
        module.bias = nn.Parameter(module.bias.detach()[index].clone(),
                                   requires_grad=module.bias.requires_grad)
    if linear:
        module.out_features = len(idx)
    else:
        module.nf = len(idx)


def _keep_in_(module: nn.Module, idx: list[int]) -> None:
    """Keep only input features ``idx`` of a Linear or Conv1D."""
    index = torch.tensor(idx, device=module.weight.device)
    linear = isinstance(module, nn.Linear)
    w = module.weight.detach().index_select(1 if linear else 0, index).clone()
    module.weight = nn.Parameter(w, requires_grad=module.weight.requires_grad)
    if linear:
        module.in_features = len(idx)
    else:
        module.nx = len(idx)


def _rewrite_(hf: nn.Module, layer: TransformerLayer, plan: LayerPruning) -> None:
    if (a := layer.attention) is not None and plan.heads_removed:
        q_rows = _rows(plan.heads_kept, a.head_dim)
        kv_rows = _rows(plan.kv_heads_kept, a.head_dim)
        if len(a.qkv) == 1:  # fused [q | k | v]
            q_width, kv_width = a.heads * a.head_dim, a.kv_heads * a.head_dim
            _keep_out_(hf.get_submodule(a.qkv[0]), q_rows + [q_width + i for i in kv_rows]
                       + [q_width + kv_width + i for i in kv_rows])
        else:
            q, k, v = (hf.get_submodule(n) for n in a.qkv)
            _keep_out_(q, q_rows)
            if plan.kv_heads_removed:
                _keep_out_(k, kv_rows)
                _keep_out_(v, kv_rows)
        _keep_in_(hf.get_submodule(a.o), q_rows)
    if (m := layer.mlp) is not None and plan.channels_removed:
        for name in m.up:
            _keep_out_(hf.get_submodule(name), plan.channels_kept)
        _keep_in_(hf.get_submodule(m.down), plan.channels_kept)


def _note_sizes_(hf: nn.Module, layer: TransformerLayer, plan: LayerPruning) -> None:
    """Give the layer's attention and MLP modules their new head counts and widths (the
    attributes that held the old ones) and record them for ``load_pretrained``."""
    changes: dict[str, dict[str, int]] = {}

    def visit(names: list[str], table: dict[tuple[str, ...], tuple[int, int]]) -> None:
        for name in dict.fromkeys(names):
            module = hf.get_submodule(name)
            for attrs, (old, new) in table.items():
                for attr in attrs:
                    value = module.__dict__.get(attr)
                    if isinstance(value, int) and not isinstance(value, bool) and value == old:
                        changes.setdefault(name, {})[attr] = new

    if (a := layer.attention) is not None:
        heads, kv = len(plan.heads_kept), len(plan.kv_heads_kept)
        visit([p for n in (*a.qkv, a.o) for p in ancestors(layer.name, n)], {
            _HEAD_COUNTS: (a.heads, heads), _KV_COUNTS: (a.kv_heads, kv),
            _GROUP_COUNTS: (a.group, heads // kv), _Q_WIDTHS: (a.heads * a.head_dim,
                                                              heads * a.head_dim),
            _HEAD_SIZES: (a.head_dim, a.head_dim)})
    if (m := layer.mlp) is not None:
        visit([p for n in (*m.up, m.down) for p in ancestors(layer.name, n)],
              {_MLP_WIDTHS: (m.width, len(plan.channels_kept))})
    for name, attrs in changes.items():
        note_attributes_(hf, name, **attrs)


def _update_config_(hf: nn.Module, layers: list[TransformerLayer],
                    plans: list[LayerPruning]) -> None:
    """The config says what every layer now has; the values it had are recorded so
    ``load_pretrained`` builds the architecture as it was before resizing it. When layers
    differ (``macs=``), a config entry holds the largest count and each module keeps its
    own (its attributes, recorded for ``load_pretrained``)."""
    config = hf.config
    hidden, heads, kv, head_dim = head_shape(config)
    new: dict[str, Any] = {}
    pairs = list(zip(layers, plans))
    if any(layer.attention for layer in layers):
        new["num_attention_heads"] = max(len(p.heads_kept) for layer, p in pairs
                                         if layer.attention)
        if getattr(config, "num_key_value_heads", None) is not None:
            new["num_key_value_heads"] = max(len(p.kv_heads_kept) for layer, p in pairs
                                             if layer.attention)
    mlp = next((layer.mlp for layer in layers if layer.mlp), None)
    if mlp is not None:
        width = max(len(p.channels_kept) for layer, p in pairs if layer.mlp)
        keys = [k for k in _CONFIG_WIDTHS if hasattr(config, k)
                and getattr(config, k) in (mlp.width, None)]
        new.update({k: width for k in keys})
    note_build_config_(hf, **{k: getattr(config, k) for k in new})
    for key, value in new.items():
        setattr(config, key, value)
    if getattr(config, "head_dim", None) is None and hidden // new.get(
            "num_attention_heads", heads) != head_dim:
        config.head_dim = head_dim  # hidden / heads no longer gives it


def _first_tensor(out: Any) -> Tensor:
    return (out if isinstance(out, Tensor) else out[0]).detach()


def _output(hf: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
    with torch.no_grad():
        return _first_tensor(hf(**inputs))


def _masked_output(hf: nn.Module, layers: list[TransformerLayer], plans: list[LayerPruning],
                   inputs: dict[str, Tensor]) -> Tensor:
    """The original model's output with the removed heads' o columns and the removed
    channels' down columns zeroed (in place for one forward, then put back)."""
    saved = []
    with torch.no_grad():
        for layer, plan in zip(layers, plans):
            cols: list[tuple[str, list[int]]] = []
            if layer.attention is not None and plan.heads_removed:
                cols.append((layer.attention.o, _rows(plan.heads_removed,
                                                      layer.attention.head_dim)))
            if layer.mlp is not None and plan.channels_removed:
                cols.append((layer.mlp.down, plan.channels_removed))
            for name, idx in cols:
                module = hf.get_submodule(name)
                saved.append((module.weight, module.weight.detach().clone()))
                view = module.weight if isinstance(module, nn.Linear) else module.weight.t()
                view[:, idx] = 0
        try:
            return _output(hf, inputs)
        finally:
            for weight, value in saved:
                weight.copy_(value)


def _projection_sizes(hf: nn.Module, layers: list[TransformerLayer],
                      heads: list[int]) -> tuple[int, list[tuple[int, int, int]]]:
    """(parameters, per layer (weight elements, heads, head_dim)) of attention + MLP."""
    params, shapes = 0, []
    for layer, n in zip(layers, heads):
        names = [*(layer.attention.qkv + (layer.attention.o,) if layer.attention else ()),
                 *((*layer.mlp.up, layer.mlp.down) if layer.mlp else ())]
        modules = [hf.get_submodule(name) for name in names]
        params += sum(p.numel() for m in modules for p in m.parameters(recurse=False))
        weights = sum(math.prod(in_out(m)) for m in modules)
        shapes.append((weights, n, layer.attention.head_dim if layer.attention else 0))
    return params, shapes


def _check_recognised(hf: nn.Module, layers: list[TransformerLayer],
                      config: HeadPruneConfig) -> None:
    for layer in layers:
        if config.prunes_heads and layer.attention is None:
            start = len(layer.calls) - (1 + len(layer.mlp.up) if layer.mlp else 0)
            holder = common_parent(layer.name, list(layer.calls[:start]) or [layer.name])
            raise UnsupportedModelError(
                f"{type(hf.get_submodule(holder)).__name__} in {layer.name} is not an attention "
                f"prune_heads_ recognises: {layer.why}; pass heads=0 to prune only the MLP")
        if config.prunes_mlp and layer.mlp is None:
            raise UnsupportedModelError(
                f"{type(hf.get_submodule(layer.name)).__name__} {layer.name} has no MLP "
                f"prune_heads_ recognises: {layer.why}; pass mlp=0 to prune only the heads")


def _inputs(hf: nn.Module, example_inputs: Any, batches: list[Any]) -> dict[str, Tensor]:
    from torchslim.transformers.inputs import example_inputs as make_example

    device = next(hf.parameters()).device
    if example_inputs is None:
        example_inputs = batches[0][0] if batches else make_example(hf)
    if not isinstance(example_inputs, dict):
        raise ConfigError(f"example_inputs must be a dict of the model's inputs (input_ids, "
                          f"attention_mask, ...), got {type(example_inputs).__name__}; "
                          "torchslim.transformers.example_inputs(model) makes one")
    return {k: v.to(device) for k, v in example_inputs.items()}


def prune_heads_(model: nn.Module, config: HeadPruneConfig | None = None, *,
                 data: Iterable[Any] | None = None,
                 example_inputs: dict[str, Tensor] | None = None) -> HeadPruneResult:
    """Remove attention heads and MLP channels from ``model`` (a transformers model or a
    ``TextModel``) in place; returns what each layer kept and lost, also logged.

    ``data`` yields batches of the model's inputs or ``(inputs, target)`` pairs
    (``torchslim.transformers.text_batches``) for the ``taylor`` and ``activation``
    importances. ``example_inputs`` (default: the first batch, else random ids) drives
    the one forward that finds the blocks and the check of the result.
    """
    from torchslim.transformers.model import unwrap

    config = config or HeadPruneConfig()
    hf = unwrap(model)
    if getattr(hf, "config", None) is None:
        raise UnsupportedModelError(f"{type(hf).__name__} has no transformers config; "
                                    "prune_heads_ takes Hugging Face models (prune others with "
                                    "prune_channels_)")
    importance = config.importance if config.importance != "auto" else (
        "activation" if data is not None else "l2")
    if importance in DATA_IMPORTANCE and data is None:
        raise ConfigError(f"importance={importance!r} needs data=: batches of the model's "
                          "inputs (torchslim.transformers.text_batches)")
    device = next(hf.parameters()).device
    batches = batches_of(data, config.batches, device) if data is not None else []
    inputs = _inputs(hf, example_inputs, batches)
    layers = find_layers(hf, inputs)
    _check_recognised(hf, layers, config)
    was_training = hf.training
    hf.eval()
    try:
        scores = HEAD_IMPORTANCE.get(importance)(hf, layers, batches)
        counts = _counts(hf, layers, scores, config)
        plans = [_plan(layer, s, c, config.gqa) for layer, s, c in zip(layers, scores, counts)]
        result = _apply_(hf, layers, plans, inputs, importance, config.allocation)
    finally:
        hf.train(was_training)
    update_(hf, reshaped=True)
    if model is not hf:
        update_(model, reshaped=True)
    for line in result.describe().splitlines():
        logger.info("prune_heads_ %s: %s", type(hf).__name__, line)
    if config.macs is not None and result.mac_ratio(config.seq) > 1 - config.macs + 1e-9:
        logger.warning("prune_heads_: macs=%s asked for %.1f%% of the attention+MLP MACs, the "
                       "floors (min_heads=%d, min_mlp=%s) stop at %.1f%% (at %d tokens); "
                       "lower them to remove more", config.macs, 100 * (1 - config.macs),
                       config.min_heads, config.min_mlp,
                       100 * result.mac_ratio(config.seq), config.seq)
    return result


def _apply_(hf: nn.Module, layers: list[TransformerLayer], plans: list[LayerPruning],
            inputs: dict[str, Tensor], importance: str, allocation: str) -> HeadPruneResult:
    """Rewrite, update sizes and config, check against the masked original; undo all of
    it on any failure."""
    before_heads = [layer.attention.heads if layer.attention else 0 for layer in layers]
    params0, shapes0 = _projection_sizes(hf, layers, before_heads)
    reference = _masked_output(hf, layers, plans, inputs)
    snapshot, config_state = ModelSnapshot(hf), copy.deepcopy(hf.config.__dict__)
    try:
        for layer, plan in zip(layers, plans):
            _rewrite_(hf, layer, plan)
            _note_sizes_(hf, layer, plan)
        _update_config_(hf, layers, plans)
        err = _relative_error(_output(hf, inputs), reference)
    except Exception as e:
        _restore(hf, snapshot, config_state)
        first = str(e).splitlines()[0] if str(e) else ""
        raise UnsupportedModelError(_not_pruned(hf, layers, f"its forward fails once they are "
                                                f"removed ({type(e).__name__}: {first})")) from e
    if err > _tolerance(reference.dtype):
        _restore(hf, snapshot, config_state)
        raise UnsupportedModelError(_not_pruned(hf, layers, f"its output differs from the "
                                                f"original's with them masked (relative "
                                                f"{err:.2g})"))
    after_heads = [len(p.heads_kept) for p in plans]
    params1, shapes1 = _projection_sizes(hf, layers, after_heads)
    return HeadPruneResult(plans, importance, params0, params1, shapes0, shapes1, allocation)


def _relative_error(out: Tensor, ref: Tensor) -> float:
    if out.shape != ref.shape:
        return math.inf
    out, ref = out.double(), ref.double()
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-6))


def _restore(hf: nn.Module, snapshot: ModelSnapshot, config_state: dict[str, Any]) -> None:
    snapshot.restore()
    hf.config.__dict__.clear()
    hf.config.__dict__.update(config_state)


def _not_pruned(hf: nn.Module, layers: list[TransformerLayer], what: str) -> str:
    """The one-line error for a rewrite the check refused, naming the attention class."""
    layer = next((layer for layer in layers if layer.attention), layers[0])
    names = [*layer.attention.qkv, layer.attention.o] if layer.attention else [layer.name]
    cls = type(hf.get_submodule(common_parent(layer.name, names))).__name__
    return (f"{cls}: heads and channels not removed, {what}; it keeps a head count or head "
            f"layout prune_heads_ does not know (it updates {', '.join(_HEAD_COUNTS[:2])}, "
            f"{', '.join(_Q_WIDTHS)}, ... and reads (..., heads, head_dim) views in q, k, v "
            "order); pass heads=0 to prune only the MLP")
