"""What every benchmark shares: rows, guarded steps, interleaved timing, JSON and a table.

Speed figures follow DESIGN.md: every candidate of one comparison is timed in ONE loop
(``torchslim.evaluation.time_interleaved``, the timer the recipe report uses too) that
cycles through them in turn (A B C, B C A, ...), with a pause and untimed calls at each
switch, and the median over rounds is reported, so a drift of the machine's speed hits
all candidates alike and the ratios between them hold.
"""

from __future__ import annotations

import io
import logging
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim import config
from torchslim._io import write_json
from torchslim.evaluation import timing
from torchslim.evaluation.latency import SWITCH_PAUSE_S, tile_batch
from torchslim.evaluation.timing import SWITCH_WARMUP_CALLS
from torchslim.runtime.base import Session

logger = logging.getLogger("bench")

# the DESIGN.md contract, in order
ROW_KEYS = ("model", "method", "runtime", "top1", "agreement", "p50_ms_b1", "p50_ms_b32",
            "speedup_b32", "bytes", "seconds", "error")


def setup_logging(verbose: bool = False) -> None:
    """Progress lines on stderr with a timestamp (long steps say what they are doing)."""
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        datefmt="%H:%M:%S", handlers=[RichHandler(show_path=False)])
    for noisy in ("nncf", "torch", "onnxruntime", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def one_line(e: BaseException) -> str:
    """``"TypeName: first line of the message"``, for a row's ``error``."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first}"[:300] if first else type(e).__name__


@dataclass
class Candidate:
    """One artifact to measure: a row's identity, its session and what is known up front."""

    model: str
    method: str
    runtime: str
    session: Session | None = None
    bytes: int | None = None
    seconds: float | None = None        # quantization (or training) time
    note: str | None = None
    details: dict[str, Any] | None = None   # e.g. the placement decisions behind the artifact
    error: str | None = None
    top1: float | None = None
    agreement: float | None = None
    p50_ms: dict[int, float] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.model, self.method, self.runtime

    def fail(self, e: BaseException) -> None:
        self.error, self.session = one_line(e), None
        logger.warning("%s/%s/%s failed: %s", *self.key, self.error)
        logger.debug("%s", "".join(traceback.format_exception(e)))


@contextmanager
def step(description: str) -> Iterator[None]:
    """Log the start and the duration of a long step."""
    logger.info("%s ...", description)
    t0 = time.perf_counter()
    yield
    logger.info("%s: done in %.1f s", description, time.perf_counter() - t0)


def build(candidates: Sequence[Candidate], factory: Callable[[], dict[str, Any]]) -> None:
    """Run ``factory`` once for ``candidates`` that share its work (e.g. one quantized model
    served on two runtimes). It returns ``{runtime: Session}`` plus optional ``bytes``,
    ``seconds``, ``note`` and ``details`` (``bytes:<runtime>`` / ``note:<runtime>`` /
    ``details:<runtime>`` for one runtime only);
    any exception becomes the ``error`` of every candidate."""
    label = f"{candidates[0].model}/{candidates[0].method}"
    try:
        with step(f"building {label}"):
            t0 = time.perf_counter()
            out = factory()
            elapsed = time.perf_counter() - t0
    except Exception as e:  # a peer that fails is a row with an error, never a crash
        for c in candidates:
            c.fail(e)
        return
    for c in candidates:
        c.session = out.get(c.runtime)
        c.bytes = out.get(f"bytes:{c.runtime}", out.get("bytes"))
        seconds = out.get("seconds", elapsed)
        c.seconds = None if seconds is None else round(seconds, 2)
        c.note = out.get(f"note:{c.runtime}", out.get("note"))
        c.details = out.get(f"details:{c.runtime}", out.get("details"))
        if c.session is None:
            c.error = f"no {c.runtime} session was produced"


def predict(session: Session, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """Logits for ``images`` in fixed batches of ``batch`` (the last one padded), so a
    shape-specialised artifact (``torch.compile``) sees only the batch sizes it is timed at."""
    out = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        logits = np.asarray(session.run(tile_batch(chunk, batch)))
        out.append(logits[: len(chunk)].reshape(len(chunk), -1))
    return np.concatenate(out)


def time_interleaved(candidates: Sequence[Candidate], samples: np.ndarray, *,
                     batch_sizes: Sequence[int] = (1, 32), repeats: int = 20,
                     calls: int = 3, warmup: int = SWITCH_WARMUP_CALLS,
                     pause_s: float = SWITCH_PAUSE_S
                     ) -> dict[tuple[tuple[str, str, str], int], list[float]]:
    """Median ms per call of every live candidate at each batch size, timed in one loop by
    ``torchslim.evaluation.time_interleaved`` (``repeats`` rounds); sets each candidate's
    ``p50_ms`` (the median over rounds) and returns every round's figure per (candidate
    key, batch size), so ratios can also be taken within a round, where the machine's speed
    is the same for all candidates. A candidate that fails while being timed gets an
    ``error`` and drops out.
    """
    timings = timing.time_interleaved([c.session for c in candidates], samples,
                                      batch_sizes=batch_sizes, rounds=repeats, calls=calls,
                                      warmup=warmup, pause_s=pause_s)
    for i, e in timings.errors.items():
        candidates[i].fail(e)
    for i, c in enumerate(candidates):
        if c.session is not None:
            c.p50_ms = {b: round(p50, 4) for b in batch_sizes
                        if (p50 := timings.p50_ms(i, b)) is not None}
    # keyed by position inside the timer: two candidates may share a row key
    return {(c.key, b): timings.rounds_ms[(i, b)] for i, c in enumerate(candidates)
            for b in batch_sizes if (i, b) in timings.rounds_ms}


def to_row(c: Candidate, baseline: Candidate | None) -> dict[str, Any]:
    """The DESIGN.md row; ``speedup_b32`` is the baseline's batch-32 time over this one's."""
    b1, b32 = c.p50_ms.get(1), c.p50_ms.get(32)
    base = baseline.p50_ms.get(32) if baseline is not None else None
    values = (c.model, c.method, c.runtime,
              None if c.top1 is None else round(c.top1, 4),
              None if c.agreement is None else round(c.agreement, 4), b1, b32,
              round(base / b32, 3) if base and b32 else None, c.bytes, c.seconds, c.error)
    row: dict[str, Any] = dict(zip(ROW_KEYS, values, strict=True))
    if c.note:
        row["note"] = c.note
    if c.details:
        row["details"] = c.details
    return row


# ---------------------------------------------------------------- sizes, torch callables

class CallableSession:
    """A torch callable (a ``torch.compile``d or exported graph) behind the Session shape:
    pinned threads, inference mode. Exported graphs refuse ``.eval()``, so TorchSession's
    constructor cannot take them."""

    runtime = "torch"
    artifact = None

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], *, threads: int,
                 precision: str) -> None:
        self._fn, self.threads, self.precision = fn, threads, precision

    @property
    def name(self) -> str:
        return f"{self.runtime}-{self.precision}"

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch.set_num_threads(self.threads)
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        with torch.inference_mode():
            return self._fn(x).float().numpy()


def trim_heap() -> None:
    """Give freed heap back to the OS (gc + glibc ``malloc_trim``), so that RSS figures
    show live memory only."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def file_bytes(*paths: Path) -> int:
    return sum(p.stat().st_size for p in paths)


def ir_bytes(xml: Path) -> int:
    return file_bytes(xml, xml.with_suffix(".bin"))


def torch_bytes(module: nn.Module) -> int:
    """torch.save size of what ``module`` computes with. For a graph, that is the tensors its
    ``get_attr`` nodes read plus the state of the modules it calls: a PT2E graph reads int8
    constants while the float parameters they replaced stay registered, unused."""
    tensors: dict[str, Any] = {}
    if isinstance(module, torch.fx.GraphModule):
        for node in module.graph.nodes:
            target = str(node.target)
            if node.op == "get_attr":
                value = _fetch(module, target)
                if isinstance(value, torch.Tensor):
                    tensors[target] = value
            elif node.op == "call_module":
                for key, value in _fetch(module, target).state_dict().items():
                    tensors[f"{target}.{key}"] = value
    else:
        tensors = dict(module.state_dict())
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.tell()


def _fetch(module: nn.Module, target: str) -> Any:
    for part in target.split("."):
        module = getattr(module, part)
    return module


def write_results(path: str | Path, bench: str, threads: int, rows: list[dict[str, Any]],
                  **extra: Any) -> Path:
    """``{"bench", "torchslim_version", "machine", "rows", ...extra}``, written atomically."""
    doc = {"bench": bench, "torchslim_version": config.VERSION,
           "machine": config.machine(threads), "rows": rows, **extra}
    return write_json(path, doc)


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: Sequence[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for name, justify in (("model", "left"), ("method", "left"), ("runtime", "left"),
                          ("top1", "right"), ("agree", "right"), ("p50 b1 ms", "right"),
                          ("p50 b32 ms", "right"), ("x b32", "right"), ("bytes", "right"),
                          ("s", "right"), ("error", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(r["model"], r["method"], r["runtime"], _fmt(r["top1"], ".4f"),
                      _fmt(r["agreement"], ".4f"), _fmt(r["p50_ms_b1"], ".3f"),
                      _fmt(r["p50_ms_b32"], ".2f"), _fmt(r["speedup_b32"], ".2f"),
                      _fmt(r["bytes"], ","), _fmt(r["seconds"], ".1f"),
                      (r["error"] or "")[:70])
    Console(width=200).print(table)
