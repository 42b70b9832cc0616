"""interleaved_speedups: one loop for all sessions, ratios against the first, read by the
report's speed-up column in preference to separately timed p50s."""

from __future__ import annotations

import numpy as np
import pytest

from torchslim.errors import ConfigError
from torchslim.evaluation import EvalResult, interleaved_speedups, timing
from torchslim.report.table import speedup


class Sleepy:
    """A session whose every call costs ``cost`` on the fake clock."""

    runtime = "fake"

    def __init__(self, name: str, cost: float, clock: list[float]) -> None:
        self.name, self.cost, self.clock = name, cost, clock

    def run(self, batch):
        self.clock[0] += self.cost * len(batch)
        return batch


def _result(name: str) -> EvalResult:
    return EvalResult(name=name, runtime="fake", precision="fp32", threads=1, top1=0.9,
                      top5=1.0, per_class=[0.9], worst_class=0, confusion=[[9]], n=10,
                      agreement=None, cosine=None, latency_ms={"1": {"p50": 1.0, "p99": 1.0}},
                      items_per_s={"1": 1.0}, bytes=1, params=1, nonzero_params=1, macs=1,
                      peak_mem_bytes=None, artifact=None, machine={}, extra={})


def test_one_loop_ratios_against_the_first_and_the_table_prefers_them(monkeypatch) -> None:
    clock = [0.0]
    sessions = [Sleepy("base", 4.0, clock), Sleepy("fast", 1.0, clock), None]
    results = [_result("base"), _result("fast"), _result("missing")]
    loops = []
    real = timing.time_interleaved

    def spy(sessions, samples, **kw):
        loops.append(len(sessions))
        return real(sessions, samples, clock=lambda: clock[0], sleep=lambda s: None, **kw)

    monkeypatch.setattr(timing, "time_interleaved", spy)
    interleaved_speedups(results, sessions, np.zeros((1, 3), np.float32), batch_sizes=(1, 4),
                         rounds=3)
    assert loops == [3]
    fast = results[1].extra["speedup_interleaved"]
    assert fast["vs"] == "base" and fast["rounds"] == 3
    assert fast["batches"]["4"] == {"speedup": 4.0, "low": 4.0, "high": 4.0}
    assert results[0].extra["speedup_interleaved"]["batches"]["1"]["speedup"] == 1.0
    assert results[2].extra["speedup_interleaved"]["not_timed"] == "no artifact to time"
    base, cand = results[0].to_dict(), results[1].to_dict()
    cand["latency_ms"] = {"1": {"p50": 2.0, "p99": 2.0}}   # separately timed: 0.5x
    assert speedup(cand, base, "1") == 4.0                   # the interleaved ratio wins
    cand["extra"]["speedup_interleaved"]["vs"] = "another baseline"
    assert speedup(cand, base, "1") == pytest.approx(0.5)    # not against this baseline


def test_refuses_a_missing_baseline_or_unpaired_lists() -> None:
    with pytest.raises(ConfigError, match="baseline"):
        interleaved_speedups([_result("a")], [None], np.zeros((1, 3), np.float32))
    with pytest.raises(ConfigError, match="one session per result"):
        interleaved_speedups([_result("a")], [], np.zeros((1, 3), np.float32))
