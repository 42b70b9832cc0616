"""Time ONNX artifacts on ONNX Runtime in several fresh processes (issue 4's speed check).

    python bench/retime_onnx.py --processes 8 --out bench/results/prune_depth_repeats.json \
        DIR/fp32.onnx DIR/torchslim-l2-layer1.1-round16-2x.onnx ...

On these shared 2-core machines one process can run an artifact 20-30 % slower than the
next process does, for its whole life, so a single interleaved loop can be lucky or
unlucky. Each process here times every artifact interleaved (``--rounds`` rounds of 20
runs at batch ``--batch``); the speed-up over the FIRST file is taken per process, and
the table gives the median and the range over processes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
from _common import Candidate, time_interleaved

from torchslim.runtime import open as open_session

SHAPE = (1, 28, 28)   # the Fashion-MNIST artifacts of bench/prune_peers.py


def time_once(paths: list[str], rounds: int, batch: int, threads: int) -> dict[str, float]:
    """One process: the median batch latency (seconds) of each artifact, timed in one
    interleaved loop (``_common.time_interleaved``)."""
    candidates = [Candidate("artifact", p, "onnxruntime", session=open_session(p, threads=threads))
                  for p in paths]
    samples = np.random.default_rng(0).random((batch, *SHAPE), dtype=np.float32)
    time_interleaved(candidates, samples, batch_sizes=(batch,), repeats=rounds, calls=20)
    return {c.method: c.p50_ms[batch] / 1e3 for c in candidates}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("onnx", nargs="+", help="artifacts; the first is the baseline")
    p.add_argument("--processes", type=int, default=8)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(time_once(args.onnx, args.rounds, args.batch, args.threads)))
        return 0
    per_process = []
    for i in range(args.processes):
        out = subprocess.run([sys.executable, __file__, "--child", "--rounds", str(args.rounds),
                              "--batch", str(args.batch), "--threads", str(args.threads),
                              *args.onnx], check=True, capture_output=True, text=True).stdout
        per_process.append(json.loads(out.strip().splitlines()[-1]))
        print(f"process {i + 1}/{args.processes} done", file=sys.stderr)
    base = args.onnx[0]
    rows = []
    for path in args.onnx:
        speedups = [r[base] / r[path] for r in per_process]
        rows.append({"artifact": Path(path).name,
                     "p50_ms_median": round(1e3 * statistics.median(r[path] for r in per_process), 3),
                     "speedup_median": round(statistics.median(speedups), 3),
                     "speedup_min": round(min(speedups), 3), "speedup_max": round(max(speedups), 3),
                     "speedup_per_process": [round(s, 3) for s in speedups]})
    for r in rows:
        print(f"{r['artifact']:42s} {r['p50_ms_median']:7.3f} ms  speed-up median "
              f"{r['speedup_median']:.2f}x  range {r['speedup_min']:.2f}-{r['speedup_max']:.2f}")
    if args.out:
        from torchslim._io import write_json
        write_json(args.out, {"bench": "retime_onnx", "batch": args.batch, "threads": args.threads,
                              "processes": args.processes, "rounds": args.rounds,
                              "baseline": Path(base).name, "rows": rows,
                              "command": "python bench/retime_onnx.py " + " ".join(
                                  a if not a.endswith(".onnx") else Path(a).name
                                  for a in (argv or sys.argv[1:]))})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
