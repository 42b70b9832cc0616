"""The one interleaved timer: every session of a comparison timed in ONE loop.

The machine's speed drifts 1.3-1.8x within minutes (DESIGN.md), so sessions timed one
after the other are not comparable. ``time_interleaved`` visits every session in turn,
round after round, starting one further along each round (A B C, B C A, C A B, ...), so
no session always follows the same one. At each switch it pauses and makes untimed calls
(ONNX Runtime sessions timed back to back showed a second mode at 2-3x the time until both
were added), then times ``calls`` calls; their median is that round's figure.

A ratio between two sessions is taken within each round, where the machine ran at one
speed for both, and reported as the median of the per-round ratios with their range
(``Timings.ratio``): the report's speed-up, the benchmarks' rows and a later
``torchslim compare A B ...`` read the same numbers.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torchslim import _progress
from torchslim.errors import ConfigError
from torchslim.evaluation.latency import SWITCH_PAUSE_S, as_arrays, tile_batch
from torchslim.runtime.base import Session

__all__ = ["SWITCH_PAUSE_S", "SWITCH_WARMUP_CALLS", "Ratio", "Timings", "time_interleaved",
           "interleaved_speedups"]

logger = logging.getLogger(__name__)

SWITCH_WARMUP_CALLS = 2  # untimed calls at each switch (and a SWITCH_PAUSE_S rest before)


@dataclass(frozen=True)
class Ratio:
    """``numerator / denominator`` time per round: its median and range (a speed-up when the
    numerator is the baseline)."""

    median: float
    low: float
    high: float
    per_round: tuple[float, ...]

    def to_dict(self, digits: int = 3) -> dict[str, Any]:
        return {"median": round(self.median, digits), "low": round(self.low, digits),
                "high": round(self.high, digits), "rounds": len(self.per_round)}


@dataclass
class Timings:
    """Every round's figure (ms per call) of each session (by position) and batch size."""

    names: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    rounds_ms: dict[tuple[int, int], list[float]] = field(default_factory=dict)
    errors: dict[int, BaseException] = field(default_factory=dict)  # sessions that failed

    def p50_ms(self, index: int, batch: int) -> float | None:
        """Median over rounds of session ``index`` at ``batch``; None if it failed or was
        never timed."""
        figures = self.rounds_ms.get((index, batch))
        if index in self.errors or not figures:
            return None
        return float(statistics.median(figures))

    def ratio(self, numerator: int, denominator: int, batch: int) -> Ratio | None:
        """Per-round ``time(numerator) / time(denominator)`` at ``batch``; None unless both
        were timed in every round."""
        a, b = self.rounds_ms.get((numerator, batch)), self.rounds_ms.get((denominator, batch))
        if not a or not b or len(a) != len(b) or {numerator, denominator} & set(self.errors):
            return None
        per_round = tuple(x / y for x, y in zip(a, b))
        return Ratio(median=float(statistics.median(per_round)), low=min(per_round),
                     high=max(per_round), per_round=per_round)


def time_interleaved(sessions: Sequence[Session | None], samples: Any, *,
                     batch_sizes: Sequence[int] = (1, 32), rounds: int = 20, calls: int = 3,
                     warmup: int = SWITCH_WARMUP_CALLS, pause_s: float = SWITCH_PAUSE_S,
                     clock: Callable[[], float] = time.perf_counter,
                     sleep: Callable[[float], None] = time.sleep) -> Timings:
    """Time every session in one loop (see the module docstring); ``None`` entries are
    skipped (a candidate that could not be built). Batches are ``samples`` tiled to each
    size. A session that raises is recorded in ``Timings.errors`` and left out of the
    rounds that follow; the others go on. ``clock`` and ``sleep`` exist for tests."""
    for name, value, least in (("rounds", rounds, 0), ("calls", calls, 1), ("warmup", warmup, 0)):
        if value < least:
            raise ConfigError(f"{name}={value} must be >= {least}")
    samples = as_arrays(samples)  # one array, a tuple or a dict of inputs
    batches = {int(b): tile_batch(samples, int(b)) for b in batch_sizes}
    names = tuple(getattr(s, "name", f"session-{i}") if s is not None else f"session-{i}"
                  for i, s in enumerate(sessions))
    timings = Timings(names=names, batch_sizes=tuple(batches))
    live = [i for i, s in enumerate(sessions) if s is not None]
    for r in _progress.track(range(rounds), description="timing, interleaved", total=rounds):
        shift = r % max(len(live), 1)
        order = live[shift:] + live[:shift]
        for b, batch in batches.items():
            for i in order:
                if i in timings.errors:
                    continue
                try:
                    ms = _visit(sessions[i], batch, calls=calls, warmup=warmup, pause_s=pause_s,
                                clock=clock, sleep=sleep)
                except Exception as e:  # a session that fails drops out, the others go on
                    timings.errors[i] = e
                    logger.warning("%s failed while being timed: %s", names[i], e)
                    continue
                timings.rounds_ms.setdefault((i, b), []).append(ms)
        logger.debug("timing round %d/%d done", r + 1, rounds)
    return timings


def _visit(session: Any, batch: Any, *, calls: int, warmup: int, pause_s: float,
           clock: Callable[[], float], sleep: Callable[[float], None]) -> float:
    """One switch to ``session``: pause, untimed calls, then the median of ``calls`` timed
    calls in milliseconds."""
    sleep(pause_s)
    for _ in range(warmup):
        session.run(batch)
    per_call = []
    for _ in range(calls):
        t0 = clock()
        session.run(batch)
        per_call.append(clock() - t0)
    return float(statistics.median(per_call)) * 1e3


def interleaved_speedups(results: Sequence[Any], sessions: Sequence[Session | None],
                         samples: Any, *, batch_sizes: Sequence[int] = (1, 32),
                         rounds: int = 10, calls: int = 3) -> Timings:
    """Time ``sessions`` (one per result, the baseline first) in ONE interleaved loop and
    write each result's speed-up over the first into ``result.extra["speedup_interleaved"]``
    (``{"vs", "rounds", "batches": {b: {"speedup", "low", "high"}}}``); the report's
    speed-up column reads it in preference to a ratio of separately timed p50s. A result
    whose session is None, or failed while being timed, gets a ``"not_timed"`` reason."""
    if len(results) != len(sessions) or not results:
        raise ConfigError(f"{len(results)} results but {len(sessions)} sessions; pass one "
                          "session per result, the baseline first")
    if sessions[0] is None:
        raise ConfigError("the baseline (first) session is None; it is what the others are "
                          "timed against")
    timings = time_interleaved(sessions, samples, batch_sizes=batch_sizes, rounds=rounds,
                               calls=calls)
    base = results[0].name
    for i, result in enumerate(results):
        block: dict[str, Any] = {"vs": base, "rounds": rounds, "batches": {}}
        for b in timings.batch_sizes:
            ratio = timings.ratio(0, i, b)
            if ratio is not None:
                block["batches"][str(b)] = {"speedup": round(ratio.median, 3),
                                            "low": round(ratio.low, 3),
                                            "high": round(ratio.high, 3)}
        if not block["batches"]:
            error = timings.errors.get(i)
            block["not_timed"] = ("no artifact to time" if sessions[i] is None
                                  else f"failed while timed: {error}")
            logger.warning("%s: no interleaved speed-up (%s)", result.name, block["not_timed"])
        result.extra["speedup_interleaved"] = block
    return timings
