"""Latency percentiles and throughput of a session, per batch size.

Timing is wall clock (``time.perf_counter``) around ``session.run`` only, on batches built
from real samples (activations of real data can change the speed of sparse or quantized
kernels; zeros would flatter them).

A model's inputs are one array, a tuple of arrays or a dict of arrays by name, of any
dtypes (token ids and masks are integers); ``as_arrays``, ``batch_size_of``,
``take``, ``concat`` and ``tile_batch`` work on each array of that structure alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import numpy as np

from torchslim.errors import ConfigError
from torchslim.runtime.base import Session

__all__ = ["SWITCH_PAUSE_S", "Batch", "as_arrays", "batch_size_of", "concat", "take",
           "measure_latency", "tile_batch"]

logger = logging.getLogger(__name__)

# ONNX Runtime sessions timed back to back showed a second mode at 2-3x the time until a
# short pause plus untimed calls were added at each switch (see DESIGN.md).
SWITCH_PAUSE_S = 0.2
_PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0}


Batch = Union[np.ndarray, tuple[np.ndarray, ...], dict[str, np.ndarray]]


def _map(fn: Callable[[np.ndarray], Any], batch: Batch) -> Any:
    if isinstance(batch, Mapping):
        return {k: fn(v) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(fn(v) for v in batch)
    return fn(batch)


def _leaves(batch: Batch) -> list[np.ndarray]:
    if isinstance(batch, Mapping):
        return list(batch.values())
    return list(batch) if isinstance(batch, tuple) else [batch]


def as_arrays(inputs: Any) -> Batch:
    """``inputs`` (a tensor or array, a tuple/list or a dict of them) as numpy arrays of
    the same structure; dtypes are kept (the session checks them against its signature)."""
    def one(x: Any) -> np.ndarray:
        if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor
            x = x.detach().cpu().numpy()
        return np.asarray(x)

    if isinstance(inputs, Mapping):
        return {str(k): one(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return tuple(one(v) for v in inputs)
    return one(inputs)


def batch_size_of(batch: Batch) -> int:
    """Samples in ``batch`` (axis 0 of its arrays, which must agree)."""
    leaves = _leaves(batch)
    sizes = {int(a.shape[0]) if a.ndim else -1 for a in leaves}
    if not leaves or len(sizes) != 1 or -1 in sizes:
        shapes = [a.shape for a in leaves]
        raise ConfigError(f"inputs of shapes {shapes} have no common batch axis; every input "
                          "needs the samples on axis 0")
    return sizes.pop()


def take(batch: Batch, n: int) -> Batch:
    """The first ``n`` samples of every input."""
    return _map(lambda a: a[:n], batch)


def concat(batches: Sequence[Batch]) -> Batch:
    """Batches of one structure joined along axis 0."""
    first = batches[0]
    if isinstance(first, Mapping):
        return {k: np.concatenate([b[k] for b in batches]) for k in first}
    if isinstance(first, tuple):
        return tuple(np.concatenate([b[i] for b in batches]) for i in range(len(first)))
    return np.concatenate(batches)


def tile_batch(samples: Batch, batch: int) -> Batch:
    """A batch of ``batch`` samples cycling through ``samples`` (repeating if needed), for
    every input of ``samples`` alike. Floating inputs become float32; integer and boolean
    inputs (ids, masks) keep their dtype."""
    if batch < 1:
        raise ConfigError(f"batch size {batch} must be >= 1")
    leaves = _leaves(samples)
    if not leaves or any(a.ndim < 1 or a.shape[0] == 0 for a in leaves):
        raise ConfigError(f"need at least one real sample to time, got shapes "
                          f"{[a.shape for a in leaves]}")
    index = np.arange(batch) % batch_size_of(samples)

    def one(a: np.ndarray) -> np.ndarray:
        dtype = np.float32 if a.dtype.kind == "f" else a.dtype
        return np.ascontiguousarray(a[index], dtype=dtype)

    return _map(one, samples)


def _time_calls(session: Session, batch: Batch, *, repeats: int,
                min_time_s: float) -> np.ndarray:
    """Seconds per call: at least ``repeats`` calls and at least ``min_time_s`` in total."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        session.run(batch)
        times.append(time.perf_counter() - t0)
    return np.asarray(times)


def measure_latency(session: Session, sample: Batch, *, batch_sizes: Sequence[int],
                    repeats: int = 20, warmup: int = 3, min_time_s: float = 0.0
                    ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Time ``session`` at each batch size; return ``(latency_ms, items_per_s)``.

    ``latency_ms`` maps the batch size (as a string, a JSON key) to p50/p90/p99/mean in
    milliseconds; ``items_per_s`` is batch / median seconds, so one slow outlier does not
    move the throughput. Before each batch size the session rests and runs ``warmup``
    untimed calls, so allocator and thread-pool state from the previous size is not timed.
    """
    if repeats < 1:
        raise ConfigError(f"repeats={repeats} must be >= 1")
    if warmup < 0:
        raise ConfigError(f"warmup={warmup} must be >= 0")
    sample = as_arrays(sample)
    latency: dict[str, dict[str, float]] = {}
    throughput: dict[str, float] = {}
    for batch_size in batch_sizes:
        batch = tile_batch(sample, int(batch_size))
        time.sleep(SWITCH_PAUSE_S)
        for _ in range(warmup):
            session.run(batch)
        seconds = _time_calls(session, batch, repeats=repeats, min_time_s=min_time_s)
        ms = seconds * 1e3
        stats = {key: float(np.percentile(ms, q)) for key, q in _PERCENTILES.items()}
        stats["mean"] = float(ms.mean())
        key = str(int(batch_size))
        latency[key] = {k: round(v, 4) for k, v in stats.items()}
        throughput[key] = round(batch_size / float(np.median(seconds)), 2)
        logger.debug("%s batch %s: p50 %.3f ms over %d calls", getattr(session, "name", "?"),
                     key, stats["p50"], len(ms))
    return latency, throughput
