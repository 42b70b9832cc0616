"""Child process that measures one model's peak memory: ``python -m torchslim.evaluation._memprobe``.

A fresh process is the only place where resident memory belongs to one model alone. The
probe imports the runtime, resets the kernel's high-water mark and reads the resident set
(the baseline), loads the model, resets the mark again (so a loader's transient copy of the
file is not charged), runs one batch of zeros and reads the high-water mark. It writes one
JSON line on stdout: that line is this program's output, read by ``memory.py``.

Linux only: it reads ``/proc/self/status`` and writes ``/proc/self/clear_refs``.
"""

from __future__ import annotations

import argparse
import json
import sys

from torchslim.evaluation.memory import reset_high_water_mark, status_bytes


def _load(kind: str, path: str, threads: int):
    if kind == "torch":
        import pickle

        from torchslim.runtime import TorchSession

        # Our own file, written a moment ago by memory.py from an in-memory model, in a
        # directory only this user can read.
        with open(path, "rb") as f:
            model = pickle.load(f)  # noqa: S301
        return TorchSession(model, threads=threads)
    from torchslim.runtime import open as open_session

    # precision is given so the loader does not parse the graph a second time.
    return open_session(path, kind, threads=threads, precision="probe")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="torchslim.evaluation._memprobe")
    parser.add_argument("kind", choices=["onnxruntime", "openvino", "torch"])
    parser.add_argument("path")
    parser.add_argument("batch", type=int)
    parser.add_argument("shape", help="input shape without batch axis, e.g. 1,28,28")
    parser.add_argument("threads", type=int)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import numpy as np

    import importlib

    importlib.import_module(args.kind)  # the runtime's code is part of the baseline
    import torchslim.runtime  # noqa: F401
    shape = tuple(int(s) for s in args.shape.split(",") if s)
    batch = np.zeros((args.batch, *shape), dtype=np.float32)
    reset = reset_high_water_mark()
    baseline = status_bytes("VmRSS")
    session = _load(args.kind, args.path, args.threads)
    reset_high_water_mark()
    session.run(batch)
    peak = status_bytes("VmHWM")
    result = {"baseline_rss_bytes": baseline, "peak_hwm_bytes": peak,
              "peak_bytes": max(peak - baseline, 0), "hwm_reset": reset}
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
