"""Latency percentiles and throughput of a session, per batch size.

Timing is wall clock (``time.perf_counter``) around ``session.run`` only, on batches built
from real samples (activations of real data can change the speed of sparse or quantized
kernels; zeros would flatter them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from torchslim.errors import ConfigError
from torchslim.runtime.base import Session

__all__ = ["SWITCH_PAUSE_S", "measure_latency", "tile_batch"]

logger = logging.getLogger(__name__)

# ONNX Runtime sessions timed back to back showed a second mode at 2-3x the time until a
# short pause plus untimed calls were added at each switch (see DESIGN.md).
SWITCH_PAUSE_S = 0.2
_PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0}


def tile_batch(samples: np.ndarray, batch: int) -> np.ndarray:
    """A ``(batch, *sample_shape)`` array cycling through ``samples`` (repeating if needed)."""
    if samples.ndim < 1 or samples.shape[0] == 0:
        raise ConfigError(f"need at least one real sample to time, got shape {samples.shape}")
    if batch < 1:
        raise ConfigError(f"batch size {batch} must be >= 1")
    index = np.arange(batch) % samples.shape[0]
    return np.ascontiguousarray(samples[index], dtype=np.float32)


def _time_calls(session: Session, batch: np.ndarray, *, repeats: int,
                min_time_s: float) -> np.ndarray:
    """Seconds per call: at least ``repeats`` calls and at least ``min_time_s`` in total."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        session.run(batch)
        times.append(time.perf_counter() - t0)
    return np.asarray(times)


def measure_latency(session: Session, sample: np.ndarray, *, batch_sizes: Sequence[int],
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
    sample = np.asarray(sample)
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
