"""Perplexity with a sliding window, and greedy-decoding speed measured side by side.

Perplexity: ``exp(mean NLL)`` over the tokens of a fixed text. Windows of ``window``
tokens start every ``stride`` tokens; each window scores only the tokens the previous one
did not (so every token after the first is scored once, with at least
``window - stride`` tokens of context once the first window is full).

Decode speed: greedy decoding with a KV cache from a fixed prompt for a fixed number of new
tokens; tokens/s counts only the steps after the prompt's prefill. Several models are
timed in one loop that visits them in turn (A B C, B C A, ...), with a pause and an
untimed warm-up at each switch, and the median over rounds is reported (DESIGN.md).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchslim._progress import track
from torchslim.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["perplexity", "PerplexityResult", "greedy_decode", "decode_rounds", "decode_speed",
           "median", "model_nbytes"]


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    tokens: int  # tokens scored
    window: int
    stride: int


@torch.no_grad()
def perplexity(model: nn.Module, ids: Tensor, *, window: int = 512, stride: int = 256,
               threads: int | None = None) -> PerplexityResult:
    """Sliding-window perplexity of ``model`` on the 1-D token ids ``ids``."""
    if ids.dim() != 1 or ids.numel() < 2:
        raise ConfigError(f"ids must be a 1-D tensor of at least 2 tokens; got {tuple(ids.shape)}")
    if not 0 < stride <= window:
        raise ConfigError(f"stride={stride} must be in (0, window={window}]")
    if threads is not None:
        torch.set_num_threads(threads)
    model.eval()
    total_nll, scored, prev_end = 0.0, 0, 0
    starts = list(range(0, max(ids.numel() - 1, 1), stride))
    for begin in track(starts, description="perplexity", total=len(starts)):
        end = min(begin + window, ids.numel())
        chunk = ids[begin:end].unsqueeze(0)  # (1, T)
        logits = model(input_ids=chunk, use_cache=False).logits[0, :-1].float()  # (T-1, V)
        targets = chunk[0, 1:]
        new = end - max(prev_end, begin + 1)  # targets this window scores for the first time
        if new > 0:
            total_nll += float(F.cross_entropy(logits[-new:], targets[-new:], reduction="sum"))
            scored += new
        prev_end = end
        if end == ids.numel():
            break
    nll = total_nll / scored
    return PerplexityResult(ppl=math.exp(nll), nll=nll, tokens=scored, window=window,
                            stride=stride)


@torch.no_grad()
def greedy_decode(model: nn.Module, prompt: Tensor, new_tokens: int) -> tuple[Tensor, float]:
    """``(generated ids (B, new_tokens), seconds of the decode steps)``: prefill the prompt
    ``(B, P)`` with a KV cache, then ``new_tokens - 1`` single-token steps."""
    from transformers import DynamicCache

    cache = DynamicCache()
    out = model(input_ids=prompt, past_key_values=cache, use_cache=True)
    token = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
    generated = [token]
    t0 = time.perf_counter()
    for _ in range(new_tokens - 1):
        out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        generated.append(token)
    return torch.cat(generated, dim=1), time.perf_counter() - t0


def decode_rounds(models: Mapping[str, nn.Module], prompt: Tensor, *,
                  batch_sizes: Sequence[int] = (1, 8), new_tokens: int = 32, rounds: int = 5,
                  threads: int = 2, pause_s: float = 0.2, warmup_tokens: int = 4
                  ) -> dict[str, dict[int, list[float]]]:
    """Decode tokens/s of every round ``{name: {batch: [round 0, round 1, ...]}}``, all
    models timed in one interleaved loop. ``prompt`` is ``(P,)``; batch ``b`` repeats it
    ``b`` times. Round ``r`` of every model ran within seconds of the others', so
    per-round ratios cancel most of the machine's drift."""
    if new_tokens < 2:
        raise ConfigError(f"new_tokens={new_tokens} must be at least 2")
    torch.set_num_threads(threads)
    names = list(models)
    figures: dict[str, dict[int, list[float]]] = {n: {b: [] for b in batch_sizes} for n in names}
    for r in range(rounds):
        shift = r % len(names)
        for b in batch_sizes:
            batch = prompt.reshape(1, -1).expand(b, -1).contiguous()
            for name in names[shift:] + names[:shift]:
                time.sleep(pause_s)
                greedy_decode(models[name], batch, warmup_tokens)
                _, seconds = greedy_decode(models[name], batch, new_tokens)
                figures[name][b].append(b * (new_tokens - 1) / seconds)
        logger.info("decode timing round %d/%d done", r + 1, rounds)
    return figures


def decode_speed(models: Mapping[str, nn.Module], prompt: Tensor, *,
                 batch_sizes: Sequence[int] = (1, 8), new_tokens: int = 32, rounds: int = 5,
                 threads: int = 2, pause_s: float = 0.2, warmup_tokens: int = 4
                 ) -> dict[str, dict[int, float]]:
    """Median decode tokens/s ``{name: {batch: median over rounds}}`` (see
    ``decode_rounds``)."""
    figures = decode_rounds(models, prompt, batch_sizes=batch_sizes, new_tokens=new_tokens,
                            rounds=rounds, threads=threads, pause_s=pause_s,
                            warmup_tokens=warmup_tokens)
    return {n: {b: round(median(v), 2) for b, v in per.items()} for n, per in figures.items()}


def median(values: Sequence[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def model_nbytes(model: nn.Module) -> int:
    """Bytes of the tensors the model keeps in its state dict, a tied tensor counted once
    (what ``save_quantized`` writes, without the file headers)."""
    seen, total = set(), 0
    for t in model.state_dict().values():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total
