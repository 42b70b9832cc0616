"""The interleaved timer, on fake sessions and a fake clock: order, warm-up, figures, ratios."""

from __future__ import annotations

import numpy as np
import pytest

from torchslim.errors import ConfigError
from torchslim.evaluation.timing import time_interleaved


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


class FakeSession:
    """Each call advances the clock by ``ms_per_item * batch`` (round ``r`` slower by
    ``drift ** r``, the machine's drift); every call is logged as (name, batch)."""

    def __init__(self, name: str, ms_per_item: float, clock: Clock, log: list, *,
                 drift: float = 1.0, fail_at: int | None = None) -> None:
        self.name, self.ms, self.clock, self.log = name, ms_per_item, clock, log
        self.drift, self.fail_at, self.calls = drift, fail_at, 0

    def run(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("kernel crashed")
        self.log.append((self.name, len(x)))
        round_index = (sum(1 for n, b in self.log if n == self.name and b == len(x)) - 1) // 5
        self.clock.now += self.ms * len(x) * self.drift ** round_index / 1e3
        return np.zeros((len(x), 2), np.float32)


def _time(sessions, clock, **kwargs):
    return time_interleaved(sessions, np.zeros((3, 4), np.float32), clock=clock,
                            sleep=clock.sleep, **kwargs)


def test_each_round_starts_one_further_along_with_warmup_at_each_switch() -> None:
    clock, log = Clock(), []
    a, b, c = (FakeSession(n, 1.0, clock, log) for n in "abc")
    _time([a, b, c], clock, batch_sizes=(2,), rounds=3, calls=3, warmup=2, pause_s=0.2)
    visits = [log[i][0] for i in range(0, len(log), 5)]   # 2 untimed + 3 timed per visit
    assert visits == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert clock.sleeps == [0.2] * 9                       # one pause at every switch
    assert all(name == visits[i // 5] for i, (name, _) in enumerate(log))


def test_figures_are_medians_and_ratios_are_per_round_with_their_range() -> None:
    clock, log = Clock(), []
    base = FakeSession("base", 2.0, clock, log, drift=1.5)   # the machine slows down...
    cand = FakeSession("cand", 0.5, clock, log, drift=1.5)   # ...for both alike
    t = _time([base, cand], clock, batch_sizes=(1, 8), rounds=4, calls=3, warmup=2)
    assert t.rounds_ms[(0, 8)] == pytest.approx([16.0 * 1.5 ** r for r in range(4)])
    assert t.p50_ms(1, 1) == pytest.approx(0.5 * (1.5 + 1.5 ** 2) / 2)
    speedup = t.ratio(0, 1, 8)
    assert speedup.per_round == pytest.approx((4.0,) * 4)   # the drift cancels within a round
    assert (speedup.median, speedup.low, speedup.high) == pytest.approx((4.0, 4.0, 4.0))
    assert speedup.to_dict() == {"median": 4.0, "low": 4.0, "high": 4.0, "rounds": 4}
    assert t.names == ("base", "cand") and t.batch_sizes == (1, 8)


def test_a_failing_session_drops_out_and_the_others_go_on() -> None:
    clock, log = Clock(), []
    ok = FakeSession("ok", 1.0, clock, log)
    bad = FakeSession("bad", 1.0, clock, log, fail_at=8)     # fails in its second visit
    t = _time([ok, None, bad], clock, batch_sizes=(1,), rounds=3, calls=3, warmup=2)
    assert set(t.errors) == {2} and "kernel crashed" in str(t.errors[2])
    assert len(t.rounds_ms[(0, 1)]) == 3 and t.p50_ms(2, 1) is None
    assert t.ratio(0, 2, 1) is None and t.p50_ms(1, 1) is None   # None was never timed


def test_bad_counts_are_refused() -> None:
    with pytest.raises(ConfigError, match="calls=0"):
        time_interleaved([], np.zeros((1, 2), np.float32), calls=0)


def test_dict_inputs_are_tiled_per_input_for_every_session() -> None:
    clock, seen = Clock(), []

    class DictSession:
        name = "dict"

        def run(self, batch: dict) -> np.ndarray:
            seen.append({k: (v.shape, v.dtype.name) for k, v in batch.items()})
            clock.now += 1e-3
            return np.zeros((len(batch["ids"]), 2), np.float32)

    samples = {"ids": np.zeros((2, 7), np.int64), "mask": np.ones((2, 7), np.int64)}
    timings = time_interleaved([DictSession()], samples, batch_sizes=(8,), rounds=2, calls=1,
                               warmup=0, clock=clock, sleep=clock.sleep)
    assert seen == [{"ids": ((8, 7), "int64"), "mask": ((8, 7), "int64")}] * 2
    assert timings.p50_ms(0, 8) == pytest.approx(1.0)
