"""``quantize_llm``: one entry point for every method; the registry picks the algorithm."""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from torchslim._progress import track
from torchslim._record import Quantization, update_
from torchslim.errors import ConfigError, UnsupportedModelError
from torchslim.llm.algorithms import ALGORITHMS, replace_linear
from torchslim.llm.calibrate import calibrate_layers, decoder_layers
from torchslim.llm.config import LLMQuantConfig
from torchslim.llm.data import calibration_batches
from torchslim.llm.groups import find_scale_groups
from torchslim.llm.qlinear import QuantEmbedding, W8A8Linear, WeightOnlyLinear, encode_weight
from torchslim.llm.scaling import ScaleGroup, is_linear, relative
from torchslim.quant.config import check_skip, matches, weight_only_spec
from torchslim.transformers.linears import conv1d_to_linear_

logger = logging.getLogger(__name__)

__all__ = ["quantize_llm", "quantize_llm_", "quantized_layers", "weight_sqnr"]

Calibration = Sequence[str] | Tensor


def _shared_copy(model: nn.Module) -> nn.Module:
    """A copy of the module tree that shares every tensor with ``model``: the algorithms
    replace tensors and modules and never write into them, so ``model`` stays intact and
    the copy costs no extra weight memory."""
    memo: dict[int, Any] = {id(t): t for t in itertools.chain(model.parameters(),
                                                                model.buffers())}
    return copy.deepcopy(model, memo)


def _calibration_ids(calibration: Calibration | None, tokenizer: Any,
                     cfg: LLMQuantConfig) -> Tensor:
    if calibration is None:
        raise ConfigError(f"method={cfg.method!r} needs calibration text: pass "
                          "calibration=[texts] (with tokenizer=) or a (n, seq_len) id tensor")
    if isinstance(calibration, Tensor):
        if calibration.dim() != 2 or calibration.dtype not in (torch.int64, torch.int32):
            raise ConfigError(f"calibration ids must be an integer (n, seq_len) tensor; got "
                              f"{calibration.dtype} {tuple(calibration.shape)}")
        return calibration.long()
    if isinstance(calibration, str):
        calibration = [calibration]
    if tokenizer is None:
        raise ConfigError("calibration texts need tokenizer=...; or pass token ids")
    return calibration_batches(tokenizer, list(calibration), n_samples=cfg.n_samples,
                               seq_len=cfg.seq_len)


def _quantize_head_(model: nn.Module, skip: tuple[str, ...]) -> None:
    """int8 per-row weight-only output projection; a tied input embedding reads the same
    integer table through ``QuantEmbedding``."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not nn.Linear:
        return
    name = next(n for n, m in model.named_modules() if m is head)
    if any(matches(p, name) for p in skip):
        return
    spec = weight_only_spec(bits=8, group_size=None, symmetric=True)
    # in blocks of rows, so the 49152 x 576 table never needs full-size temporaries
    parts = [encode_weight(rows, spec) for rows in head.weight.detach().split(4096)]
    codes, scales, zeros = (torch.cat(t) for t in zip(*parts, strict=True))
    qhead = WeightOnlyLinear.from_codes(head, codes, scales, zeros, bits=8, group_size=None)
    embed = model.get_input_embeddings()
    tied = isinstance(embed, nn.Embedding) and embed.weight is head.weight
    replace_linear(model, name, qhead)
    if tied:
        embed_name = next(n for n, m in model.named_modules() if m is embed)
        replace_linear(model, embed_name, QuantEmbedding(qhead, embed.padding_idx))


def quantize_llm(model: nn.Module, config: LLMQuantConfig | None = None, *,
                 calibration: Calibration | None = None, tokenizer: Any = None) -> nn.Module:
    """A quantized copy of the causal LM ``model`` (``model`` itself is left unchanged).

    ``calibration``: texts (tokenized with ``tokenizer`` into ``config.n_samples`` random
    windows of ``config.seq_len`` tokens) or an ``(n, seq_len)`` tensor of token ids;
    needed by gptq, awq and smoothquant. Calibration runs layer by layer. The copy shares
    the float tensors it keeps with ``model``, so memory grows by the quantized layers
    only; ``quantize_llm_`` frees the float weights as it goes instead.
    """
    _check_model(model)
    return _quantize_(_shared_copy(model), config or LLMQuantConfig(),
                      calibration=calibration, tokenizer=tokenizer)


def quantize_llm_(model: nn.Module, config: LLMQuantConfig | None = None, *,
                  calibration: Calibration | None = None, tokenizer: Any = None) -> nn.Module:
    """``quantize_llm`` in place: each Linear of ``model`` is replaced by its quantized
    layer as calibration reaches it, so its float weight is freed at once and peak memory
    stays near the float model's size. Returns ``model``."""
    _check_model(model)
    return _quantize_(model, config or LLMQuantConfig(), calibration=calibration,
                      tokenizer=tokenizer)


def _quantize_(new: nn.Module, cfg: LLMQuantConfig, *, calibration: Calibration | None,
               tokenizer: Any) -> nn.Module:
    skip = check_skip(new, cfg.skip)
    algorithm = ALGORITHMS[cfg.method]
    new.eval()
    conv1d_to_linear_(new, requires_grad=False)
    new_layers = decoder_layers(new)
    prefix = next(n for n, m in new.named_modules() if m is new_layers)
    ids = _calibration_ids(calibration, tokenizer, cfg) if cfg.needs_calibration else None
    groups, notes = _scale_groups(new, cfg, ids) if algorithm.uses_groups else ([], [])

    def skipped(name: str) -> bool:
        return any(matches(p, name) for p in skip)

    def apply(p: str, layer: nn.Module, stats: dict) -> None:
        algorithm.apply(layer, stats, cfg, lambda n: skipped(f"{p}.{n}"), relative(groups, p))

    with torch.no_grad():
        if ids is not None:
            calibrate_layers(new, ids, needs=algorithm.needs, skip=skipped,
                             batch_size=cfg.batch_size, max_rows=cfg.awq_tokens, apply=apply)
        else:
            for i, layer in enumerate(track(new_layers, description="quantizing layers",
                                            total=len(new_layers))):
                apply(f"{prefix}.{i}", layer, {})
        if cfg.lm_head:
            _quantize_head_(new, skip)
    update_(new, quantization=Quantization(
        config=cfg, quantized=tuple(quantized_layers(new)),
        scale_groups=tuple(g.describe() for g in groups), notes=tuple(notes)))
    logger.info("%s: %d Linear layers quantized", cfg.label, len(quantized_layers(new)))
    return new


def _scale_groups(model: nn.Module, cfg: LLMQuantConfig, ids: Tensor | None
                  ) -> tuple[list[ScaleGroup], list[str]]:
    """The scale groups AWQ / SmoothQuant fold through, found on the model's graph (on two
    calibration windows); a warning and a note when there are none."""
    if ids is None:
        return [], []
    sample = {"input_ids": ids[:2], "attention_mask": torch.ones_like(ids[:2])}
    groups = find_scale_groups(model, sample)
    if groups:
        logger.info("%s: scales folded through %d groups found on the graph", cfg.method,
                    len(groups))
        return groups, []
    note = (f"{cfg.method} found no LayerNorm/RMSNorm -> Linear or Linear -> Linear group "
            f"in {type(model).__name__}'s graph to fold scales through; "
            + ("its Linears are quantized without smoothing" if cfg.method == "smoothquant"
               else "only the clipping search and rounding ran"))
    logger.warning("%s", note)
    return [], [note]


def _check_model(model: nn.Module) -> None:
    layers = decoder_layers(model)
    if not any(is_linear(m) for m in layers.modules()):
        raise UnsupportedModelError(f"{type(model).__name__}'s decoder layers hold no nn.Linear "
                                    "to quantize")


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules()
            if isinstance(m, (WeightOnlyLinear, W8A8Linear))}


def weight_sqnr(model: nn.Module) -> dict[str, float]:
    """Per quantized layer: SQNR (dB) of its integer weight against the float weight it
    replaced (after any AWQ / SmoothQuant scaling)."""
    return {n: round(m.sqnr_db, 2) for n, m in quantized_layers(model).items()
            if getattr(m, "sqnr_db", None) is not None}
