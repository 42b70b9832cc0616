"""``bench/llm_quant.py --decode-only``: decode speed of fp32 and saved artifacts, alone.

fp32 (the GGUF dequantized, as in the full benchmark) and each method's artifact, reloaded
from ``--artifacts/<method>`` (built with ``quantize_llm_`` and saved first where missing),
decode greedily from a fixed 32-token Emma prompt at batch 1 and 8, all timed in ONE loop
that visits them in turn for ``--rounds`` rounds (DESIGN.md). Reported per model and batch:
the median tokens/s, every round's figure, and the median of the per-round ratios over
fp32 (the rounds of all models ran within seconds of each other, so those ratios cancel
most of the machine's drift). The load on the machine is recorded before and after.

    .venv/bin/python bench/llm_quant.py --decode-only --methods gptq-int4-g64,rtn-int4-g64,rtn-int8-pc
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any

import torch

from _common import step, trim_heap, write_results
from _llm import CALIB_BOOKS, MODEL, OURS, gguf_path, machine_load

from torchslim.llm import LLMQuantConfig
from torchslim.llm.api import quantize_llm_
from torchslim.llm.data import calibration_batches, load_austen, token_slice
from torchslim.llm.evaluate import decode_rounds, greedy_decode, median, model_nbytes
from torchslim.llm.model import QUANT_MANIFEST, load_causal_lm, save_quantized

logger = logging.getLogger("bench")


def _build(method: str, args: argparse.Namespace) -> float:
    """Quantize a fresh fp32 load in place and save it; the seconds it took."""
    model, tokenizer = load_causal_lm(gguf_path())
    cfg = LLMQuantConfig(**OURS[method], n_samples=args.calib_samples, seq_len=args.seq_len)
    calib = None
    if cfg.needs_calibration:
        books = load_austen(books=CALIB_BOOKS)
        calib = calibration_batches(tokenizer, [books[b] for b in CALIB_BOOKS],
                                    n_samples=args.calib_samples, seq_len=args.seq_len)
    torch.set_num_threads(args.work_threads)
    t0 = time.perf_counter()
    quantize_llm_(model, cfg, calibration=calib)
    seconds = time.perf_counter() - t0
    save_quantized(model, args.artifacts / method, tokenizer=tokenizer)
    del model
    trim_heap()
    return seconds


def decode_only(args: argparse.Namespace, methods: list[str]) -> int:
    load_before = machine_load()
    fp32, tokenizer = load_causal_lm(gguf_path())
    prompt = token_slice(tokenizer, load_austen(books=("emma",))["emma"], start=0, length=32)
    models: dict[str, torch.nn.Module] = {"fp32": fp32}
    rows: dict[str, dict[str, Any]] = {"fp32": {"model": MODEL, "method": "fp32",
                                                "runtime": "torch", "bytes": model_nbytes(fp32),
                                                "error": None}}
    for method in methods:
        row = rows[method] = {"model": MODEL, "method": method, "runtime": "torch",
                              "error": None}
        try:
            if method not in OURS:
                raise ValueError("--decode-only times torchslim artifacts; run the full "
                                 "benchmark for the torchao peers")
            if not (args.artifacts / method / QUANT_MANIFEST).is_file():
                with step(f"building {method} (no artifact under {args.artifacts})"):
                    row["built_seconds"] = round(_build(method, args), 1)
            model, _ = load_causal_lm(args.artifacts / method, with_tokenizer=False)
            row.update(bytes=model_nbytes(model), artifact=str(args.artifacts / method))
            greedy_decode(model, prompt.reshape(1, -1).expand(8, -1), 2)  # runs at all?
            models[method] = model
        except Exception as e:  # a failing artifact is a row with its error, never a crash
            from _common import one_line

            row["error"] = one_line(e)
            logger.warning("%s failed: %s", method, row["error"])
    torch.set_num_threads(args.threads)
    with step(f"decode speed of {len(models)} models, {args.rounds} rounds, interleaved"):
        figures = decode_rounds(models, prompt, batch_sizes=(1, 8), new_tokens=args.new_tokens,
                                rounds=args.rounds, threads=args.threads)
    for name, per_batch in figures.items():
        row = rows[name]
        for b, values in per_batch.items():
            base = figures["fp32"][b]
            row[f"tok_s_b{b}"] = round(median(values), 2)
            row[f"speedup_b{b}"] = round(median(values) / median(base), 3)
            row[f"speedup_b{b}_paired"] = round(median([v / f for v, f in zip(values, base)]), 3)
            row[f"rounds_tok_s_b{b}"] = [round(v, 2) for v in values]
    ordered = [rows[m] for m in ["fp32", *methods] if m in rows]
    write_results(args.out, "llm_decode", args.threads, ordered, settings={
        "runtime": "torch eager, CPU; int4/int8 layers call the packed CPU kernels at decode "
                   "sizes", "decode_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "prompt_tokens": 32, "new_tokens": args.new_tokens, "rounds": args.rounds,
        "batch_sizes": [1, 8], "greedy": True, "kv_cache": True,
        "speedup": "median tok/s over fp32's median; _paired: median of per-round ratios",
        "load": {"before": load_before, "after": machine_load()}})
    for r in ordered:
        if r["error"]:
            print(f"{r['method']:>16}: error: {r['error']}")
        else:
            print(f"{r['method']:>16}: b1 {r['tok_s_b1']:7.2f} tok/s ({r['speedup_b1']:.2f}x, "
                  f"paired {r['speedup_b1_paired']:.2f}x)   b8 {r['tok_s_b8']:7.2f} tok/s "
                  f"({r['speedup_b8']:.2f}x, paired {r['speedup_b8_paired']:.2f}x)")
    return 0
