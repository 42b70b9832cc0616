"""Perplexity bookkeeping and greedy decoding with a KV cache."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from torchslim.errors import ConfigError
from torchslim.llm import LLMQuantConfig, quantize_llm
from torchslim.llm.evaluate import (decode_rounds, decode_speed, greedy_decode, median,
                                    model_nbytes, perplexity)


def test_perplexity_with_one_window_is_exp_of_cross_entropy(tiny_llama) -> None:
    ids = torch.randint(0, 128, (40,))
    with torch.no_grad():
        logits = tiny_llama(ids[None]).logits[0, :-1]
    expected = math.exp(float(F.cross_entropy(logits, ids[1:])))
    r = perplexity(tiny_llama, ids, window=64, stride=64)
    assert r.tokens == 39 and r.ppl == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("window,stride,scored", [
    (16, 8, 49), (16, 5, 49),
    (16, 16, 46)])  # disjoint windows: a window's first token has no context, is not scored
def test_sliding_window_scores_every_token_once(tiny_llama, window, stride, scored) -> None:
    ids = torch.randint(0, 128, (50,))
    r = perplexity(tiny_llama, ids, window=window, stride=stride)
    assert r.tokens == scored and r.window == window and 1 < r.ppl < 1000


def test_perplexity_rejects_bad_arguments(tiny_llama) -> None:
    with pytest.raises(ConfigError):
        perplexity(tiny_llama, torch.randint(0, 128, (20,)), window=8, stride=9)
    with pytest.raises(ConfigError):
        perplexity(tiny_llama, torch.randint(0, 128, (2, 20)))


def test_greedy_decode_with_cache_matches_full_recompute(tiny_llama) -> None:
    prompt = torch.randint(0, 128, (2, 6))
    tokens, seconds = greedy_decode(tiny_llama, prompt, 5)
    assert tokens.shape == (2, 5) and seconds > 0
    seq = prompt
    with torch.no_grad():
        for _ in range(5):
            nxt = tiny_llama(seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(tokens, seq[:, 6:])


def test_decode_speed_reports_every_model_and_batch(tiny_llama) -> None:
    q = quantize_llm(tiny_llama, LLMQuantConfig(method="rtn", bits=4, group_size=64))
    speed = decode_speed({"fp32": tiny_llama, "int4": q}, torch.randint(0, 128, (5,)),
                         batch_sizes=(1, 2), new_tokens=3, rounds=1, pause_s=0.0, threads=1)
    assert set(speed) == {"fp32", "int4"} and all(v > 0 for s in speed.values() for v in s.values())
    assert model_nbytes(q) < model_nbytes(tiny_llama)


def test_decode_rounds_keeps_every_round(tiny_llama) -> None:
    rounds = decode_rounds({"a": tiny_llama, "b": tiny_llama}, torch.randint(0, 128, (5,)),
                           batch_sizes=(1, 3), new_tokens=3, rounds=3, pause_s=0.0, threads=1)
    assert {n: {b: len(v) for b, v in per.items()} for n, per in rounds.items()} == {
        "a": {1: 3, 3: 3}, "b": {1: 3, 3: 3}}
    assert median([3.0, 1.0, 2.0]) == 2.0 and median([4.0, 1.0, 2.0, 3.0]) == 2.5
