"""Zoo sweep: torchslim on models nobody here wrote.

Every torchvision classification model (``torchvision.models.list_models``) and small
``transformers`` encoders and decoders (BERT, DistilBERT, RoBERTa, ViT, GPT-2, Llama-style;
random weights from small configs), each in a FRESH process, through:

- PTQ: ``torchslim.quantize(model, QuantConfig(), calibration=8 real samples)`` ->
  ``torchslim.export`` (QDQ ONNX) -> ONNX Runtime: success or the error;
- coverage: ``torchslim.record_of(q).coverage`` when the library records it, and always the
  ops ONNX Runtime really runs (its optimised graph): integer Conv/MatMul/Gemm against float;
- output cosine of ORT INT8 against the FP32 torch model on 8 other real samples (raw, and
  centred over the samples, since random weights make every output alike);
- ORT INT8 speed-up over ORT FP32 at batch 8, both timed in one interleaved run;
- structured pruning to half the MACs: success, MACs after, protected groups, export + ORT
  run, or the error (its type says whether it was a clear TorchslimError), and whether a
  failed prune left the model untouched.

    python bench/zoo_sweep.py                                   # every model (hours)
    python bench/zoo_sweep.py --models resnet18,bert-tiny       # a few
    python bench/zoo_sweep.py --retry-errors                    # rerun failed models

Resumable: each model's record is written to ``--work`` (default
bench/results/zoo_sweep.work/<model>.json) and a finished model is skipped on rerun; a
model that times out, exceeds the memory limit or crashes gets a record saying so (with the
stage it was in). The summary is bench/results/zoo_sweep.json (``rows``: one ``ptq`` and
one ``prune`` row per model, plus ``records`` with everything measured) and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_results  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_WORK = HERE / "results" / "zoo_sweep.work"
DEFAULT_OUT = HERE / "results" / "zoo_sweep.json"
GIB = 1 << 30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="", help="comma-separated names (default: all)")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per model")
    p.add_argument("--memory-gib", type=float, default=None,
                   help="kill a model's process above this RSS (default: 90%% of RAM)")
    p.add_argument("--timing-budget", type=float, default=60.0,
                   help="seconds for the interleaved FP32/INT8 timing of one model")
    p.add_argument("--retry-errors", action="store_true", help="rerun models with an error")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def total_memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / (1 << 20)
    return 24.0


# ------------------------------------------------------------------------- the parent

def record_path(work: Path, name: str) -> Path:
    return work / f"{name}.json"


def has_error(record: dict[str, Any]) -> bool:
    """The model failed, or one of its stages did."""
    return bool(record.get("error")) or any(
        isinstance(v, dict) and v.get("error") for v in record.values())


def finished(work: Path, name: str, retry_errors: bool) -> bool:
    path = record_path(work, name)
    if not path.is_file():
        return False
    return not (retry_errors and has_error(json.loads(path.read_text())))


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_one(name: str, args: argparse.Namespace, limit_bytes: int) -> dict[str, Any]:
    """Run ``name`` in a fresh process under the time and memory guards; its record."""
    from torchslim._io import write_json

    args.work.mkdir(parents=True, exist_ok=True)
    partial = args.work / f"{name}.partial.json"
    partial.unlink(missing_ok=True)
    log = (args.work / f"{name}.log").open("w")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--work",
           str(args.work), "--threads", str(args.threads), "--memory-gib",
           str(limit_bytes / GIB), "--timing-budget", str(args.timing_budget)]
    t0, peak, killed = time.monotonic(), 0, None
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    while proc.poll() is None:
        time.sleep(0.5)
        peak = max(peak, _rss_bytes(proc.pid))
        if time.monotonic() - t0 > args.timeout:
            killed = f"timed out after {args.timeout:.0f} s"
        elif peak > limit_bytes:
            killed = f"used more than {limit_bytes / GIB:.1f} GiB of memory"
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log.close()
    seconds = round(time.monotonic() - t0, 1)
    record = json.loads(partial.read_text()) if partial.is_file() else {"model": name}
    partial.unlink(missing_ok=True)
    if killed or proc.returncode != 0:
        stage = record.get("stage", "start")
        why = killed or f"process died with exit code {proc.returncode}: {_last_line(name, args)}"
        record["error"] = record.get("error") or f"{why} (during {stage})"
    record.update(seconds=seconds, peak_rss_bytes=peak)
    write_json(record_path(args.work, name), record)
    return record


def _last_line(name: str, args: argparse.Namespace) -> str:
    lines = (args.work / f"{name}.log").read_text(errors="replace").strip().splitlines()
    return lines[-1][:200] if lines else "no output"


def rows_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The DESIGN.md rows of one model (``ptq`` and ``prune``), with the sweep's extras."""
    ptq, prune, speed = record.get("ptq") or {}, record.get("prune") or {}, record.get("speed") or {}
    error = record.get("error")
    base = {"model": record["model"], "runtime": "onnxruntime", "top1": None,
            "p50_ms_b1": None, "p50_ms_b32": None, "speedup_b32": None,
            "family": record.get("family"), "kind": record.get("kind")}
    ptq_row = {**base, "method": "ptq", "agreement": ptq.get("agreement"),
               "bytes": ptq.get("bytes"), "seconds": ptq.get("seconds"),
               "error": ptq.get("error") or error, "cosine": ptq.get("cosine"),
               "cosine_centered": ptq.get("cosine_centered"),
               "coverage": record.get("coverage"), "ort_ops": record.get("ort_ops"),
               "p50_ms_b8_fp32": speed.get("p50_ms_fp32"),
               "p50_ms_b8": speed.get("p50_ms_int8"), "speedup_b8": speed.get("speedup"),
               "speedup_b8_range": speed.get("range")}
    prune_row = {**base, "method": "prune-half-macs", "agreement": None,
                 "bytes": prune.get("bytes"), "seconds": prune.get("seconds"),
                 "error": prune.get("error") or (None if prune else error),
                 "error_kind": prune.get("error_kind"), "mac_ratio": prune.get("mac_ratio"),
                 "macs_before": prune.get("macs_before"), "macs_after": prune.get("macs_after"),
                 "protected": prune.get("protected"), "export_ok": prune.get("export_ok"),
                 "model_untouched": prune.get("model_untouched")}
    return [ptq_row, prune_row]


def print_table(records: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="zoo sweep: PTQ -> QDQ ONNX -> ONNX Runtime, and pruning to 1/2 MACs")
    for col in ("model", "PTQ/ORT", "int8 ops", "cos", "cos-c", "x b8", "prune", "MACs",
                "export", "s", "error"):
        table.add_column(col)
    for r in records:
        ptq, prune, speed, ops = (r.get(k) or {} for k in ("ptq", "prune", "speed", "ort_ops"))
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        table.add_row(r["model"], "ok" if ptq.get("ort_ok") else "FAIL",
                      fmt(ops.get("int8_fraction"), ".0%"), fmt(ptq.get("cosine"), ".4f"),
                      fmt(ptq.get("cosine_centered"), ".4f"), fmt(speed.get("speedup"), ".2f"),
                      "ok" if prune.get("ok") else ("-" if not prune else "FAIL"),
                      fmt(prune.get("mac_ratio"), ".2f"),
                      {True: "ok", False: "FAIL"}.get(prune.get("export_ok"), "-"),
                      fmt(r.get("seconds"), ".0f"),
                      (r.get("error") or ptq.get("error") or prune.get("error") or "")[:80])
    Console(width=220).print(table)


def parent(args: argparse.Namespace) -> None:
    from _zoo import all_models

    names = [n for n in args.models.split(",") if n] or all_models()
    limit = int((args.memory_gib or 0.9 * total_memory_gib()) * GIB)
    for i, name in enumerate(names, 1):
        if finished(args.work, name, args.retry_errors):
            print(f"[{i}/{len(names)}] {name}: done before, skipped", flush=True)
            continue
        print(f"[{i}/{len(names)}] {name} ...", flush=True)
        record = run_one(name, args, limit)
        print(f"[{i}/{len(names)}] {name}: {record.get('seconds')} s"
              + (f", error: {record['error']}" if record.get("error") else ""), flush=True)
    records = [json.loads(record_path(args.work, n).read_text()) for n in names
               if record_path(args.work, n).is_file()]
    rows = [row for r in records for row in rows_of(r)]
    write_results(args.out, "zoo_sweep", args.threads, rows, records=records,
                  summary=summary(records))
    print_table(records)
    print(f"wrote {args.out}")


def summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts the README quotes: PTQ success, >= 90 % integer, faster, prune outcomes."""
    tv = [r for r in records if r.get("family") == "torchvision"]
    ok = [r for r in tv if (r.get("ptq") or {}).get("ort_ok")]
    int8 = [r for r in ok if ((r.get("ort_ops") or {}).get("int8_fraction") or 0) >= 0.9]
    faster = [r for r in ok if ((r.get("speed") or {}).get("speedup") or 0) > 1.0]
    pruned = [r for r in records if (r.get("prune") or {}).get("ok")]
    raw = [r["model"] for r in records if (r.get("prune") or {}).get("error_kind") == "raw"]
    return {"torchvision_models": len(tv), "ptq_ort_ok": len(ok),
            "int8_ge_90pct_of_compute_ops": len(int8), "int8_faster_than_fp32": len(faster),
            "prune_ok": len(pruned), "prune_raw_errors": raw,
            "prune_left_model_modified": [r["model"] for r in records
                                          if (r.get("prune") or {}).get("model_untouched") is False]}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        from _zoo_child import run_child

        run_child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
