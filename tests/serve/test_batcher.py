"""The dynamic batcher on its own, with a recording session: packing, order, preferred
sizes, the bounded queue, timeouts, failures, draining, and that the event loop never
runs inference."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from torchslim.serve.batcher import Batcher
from torchslim.serve.config import BatchingConfig
from torchslim.serve.errors import RequestTimeoutError, ServerBusyError


class RecordingSession:
    """y = 2x; records each batch's rows and the thread it ran on."""

    def __init__(self, *, fail_on: int | None = None, gate: threading.Event | None = None):
        self.batches: list[int] = []
        self.threads: list[int] = []
        self.fail_on, self.gate = fail_on, gate

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.gate is not None:
            self.gate.wait(5)
        self.threads.append(threading.get_ident())
        x = feeds["x"]
        self.batches.append(x.shape[0])
        if self.fail_on is not None and self.fail_on in x[:, 0]:
            raise RuntimeError("runtime exploded")
        return {"y": x * 2}


class Depths:
    def __init__(self) -> None:
        self.depths: list[int] = []
        self.executions: list[tuple[int, int]] = []

    def queue_depth(self, depth: int) -> None:
        self.depths.append(depth)

    def executed(self, rows: int, compute_s: float, queue_s: Sequence[float]) -> None:
        self.executions.append((rows, len(queue_s)))


def request(value: float, rows: int = 1, width: int = 2) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, width), value, dtype=np.float32)}


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(asyncio.wait_for(coro, 20))


async def _serve(sessions, config: BatchingConfig, requests, *, timeout=None, start=True):  # noqa: ANN001, ANN202
    observer = Depths()
    batcher = Batcher(sessions, config, batched=True, label="m/1", observer=observer)
    batcher.start()
    futures = [batcher.submit(r, r["x"].shape[0], r["x"].shape[1:], timeout) for r in requests]
    results = await asyncio.gather(*futures, return_exceptions=True)
    await batcher.close()
    return results, batcher, observer


def test_requests_are_packed_and_each_caller_gets_its_own_rows_in_order() -> None:
    session = RecordingSession()
    reqs = [request(i) for i in range(5)]
    results, _, observer = run(_serve([session], BatchingConfig(max_batch_size=4,
                                                                max_queue_delay_ms=50), reqs))
    assert session.batches == [4, 1]
    assert observer.executions == [(4, 4), (1, 1)]
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out["y"], np.full((1, 2), 2 * i, np.float32))


def test_requests_with_their_own_batch_dim_are_packed_whole() -> None:
    session = RecordingSession()
    reqs = [request(1, rows=3), request(2, rows=2), request(3, rows=2)]
    results, _, _ = run(_serve([session], BatchingConfig(max_batch_size=4,
                                                         max_queue_delay_ms=50), reqs))
    assert session.batches == [3, 4]   # 3 + 2 > 4: the 2-row request waits for the next batch
    assert [r["y"].shape[0] for r in results] == [3, 2, 2]
    assert [float(r["y"][0, 0]) for r in results] == [2.0, 4.0, 6.0]


def test_preferred_size_dispatches_at_once_and_is_cut_exactly() -> None:
    session = RecordingSession()
    config = BatchingConfig(max_batch_size=8, preferred_batch_sizes=(4,),
                            max_queue_delay_ms=5_000)
    reqs = [request(i) for i in range(4)]
    results, _, _ = run(_serve([session], config, reqs))
    assert session.batches == [4]   # reached the preferred size: no 5 s wait
    config = BatchingConfig(max_batch_size=8, preferred_batch_sizes=(2, 4), max_queue_delay_ms=20)
    session = RecordingSession()
    run(_serve([session], config, [request(i) for i in range(7)]))
    assert session.batches[0] == 4 and sum(session.batches) == 7


def test_different_non_batch_shapes_never_share_a_batch() -> None:
    session = RecordingSession()
    reqs = [request(1, width=2), request(2, width=3), request(3, width=2)]
    results, _, _ = run(_serve([session], BatchingConfig(max_queue_delay_ms=20), reqs))
    assert session.batches == [1, 1, 1]
    assert [r["y"].shape for r in results] == [(1, 2), (1, 3), (1, 2)]


def test_a_full_queue_refuses_at_once_and_stays_bounded() -> None:
    async def main() -> tuple[int, int, int]:
        gate = threading.Event()
        batcher = Batcher([RecordingSession(gate=gate)],
                          BatchingConfig(max_batch_size=1, max_queue_size=3,
                                         max_queue_delay_ms=0),
                          batched=True, label="m/1", observer=Depths())
        batcher.start()
        futures, refused = [], 0
        for i in range(10):
            try:
                futures.append(batcher.submit(request(i), 1, (2,), None))
            except ServerBusyError as e:
                assert "queue full" in str(e)
                refused += 1
            await asyncio.sleep(0.01)   # let the scheduler take the first one
        gate.set()
        answered = len(await asyncio.gather(*futures))
        await batcher.close()
        return answered, refused, batcher.peak_depth

    answered, refused, peak = run(main())
    assert answered == 4 and refused == 6   # one running + three queued
    assert peak == 3


def test_a_request_still_queued_at_its_timeout_gets_504_and_leaves_the_queue() -> None:
    async def main() -> tuple[list, Batcher]:
        gate = threading.Event()
        batcher = Batcher([RecordingSession(gate=gate)],
                          BatchingConfig(max_batch_size=1, max_queue_delay_ms=0),
                          batched=True, label="m/1", observer=Depths())
        batcher.start()
        first = batcher.submit(request(0), 1, (2,), None)
        await asyncio.sleep(0.02)
        late = batcher.submit(request(1), 1, (2,), 0.05)
        await asyncio.sleep(0.15)
        depth = batcher.depth
        gate.set()
        results = await asyncio.gather(first, late, return_exceptions=True)
        await batcher.close()
        return [depth, *results], batcher

    (depth, first, late), _ = run(main())
    assert depth == 0
    assert isinstance(late, RequestTimeoutError) and "50 ms" in str(late)
    np.testing.assert_array_equal(first["y"], np.zeros((1, 2), np.float32))


def test_a_failing_batch_fails_its_callers_only_and_the_batcher_keeps_serving() -> None:
    session = RecordingSession(fail_on=13)
    reqs = [request(13), request(1), request(2)]
    results, _, _ = run(_serve([session], BatchingConfig(max_batch_size=2,
                                                         max_queue_delay_ms=20), reqs))
    assert isinstance(results[0], RuntimeError) and isinstance(results[1], RuntimeError)
    np.testing.assert_array_equal(results[2]["y"], np.full((1, 2), 4, np.float32))


def test_inference_runs_on_worker_threads_and_instances_run_at_once() -> None:
    barrier = threading.Barrier(2, timeout=5)

    class Meeting(RecordingSession):
        def infer(self, feeds):  # noqa: ANN001, ANN202
            barrier.wait()   # both instances must be inside infer at the same time
            return super().infer(feeds)

    sessions = [Meeting(), Meeting()]

    async def main() -> int:
        results, _, _ = await _serve(sessions, BatchingConfig(max_batch_size=1,
                                                              max_queue_delay_ms=0),
                                     [request(1), request(2)])
        assert all(isinstance(r, dict) for r in results)
        return threading.get_ident()

    loop_thread = run(main())
    threads = sessions[0].threads + sessions[1].threads
    assert len(threads) == 2 and loop_thread not in threads


def test_close_answers_every_queued_request_first() -> None:
    async def main() -> list:
        batcher = Batcher([RecordingSession()], BatchingConfig(max_batch_size=2,
                                                               max_queue_delay_ms=10_000),
                          batched=True, label="m/1", observer=Depths())
        batcher.start()
        futures = [batcher.submit(request(i), 1, (2,), None) for i in range(5)]
        await batcher.close()   # does not wait 10 s for batches to fill
        return [f.result()["y"][0, 0] for f in futures]

    assert run(main()) == [0, 2, 4, 6, 8]


def test_a_lone_client_waits_the_delay_once_then_not_until_requests_coincide() -> None:
    async def main() -> list[float]:
        session = RecordingSession()
        batcher = Batcher([session], BatchingConfig(max_queue_delay_ms=300),
                          batched=True, label="m/1", observer=Depths())
        batcher.start()
        loop = asyncio.get_running_loop()
        waits = []
        for i in range(3):   # one client, one request at a time
            t0 = loop.time()
            await batcher.submit(request(i), 1, (2,), None)
            waits.append(loop.time() - t0)
        t0 = loop.time()    # two at once: batching again, and the wait is back
        await asyncio.gather(*(batcher.submit(request(i), 1, (2,), None) for i in range(2)))
        t1 = loop.time()
        await batcher.submit(request(9), 1, (2,), None)   # after a batch of two: waits
        waits += [t1 - t0, loop.time() - t1]
        await batcher.close()
        assert session.batches == [1, 1, 1, 2, 1]
        return waits

    first, second, third, pair, after_pair = run(main())
    assert 0.25 <= first < 2.0            # held back for others to join, then sent alone
    assert second < 0.15 and third < 0.15  # nobody to wait for: sent at once
    assert 0.25 <= pair < 2.0 and 0.25 <= after_pair < 2.0


@pytest.mark.parametrize("rows", [1, 3])
def test_an_unbatched_model_runs_every_request_alone(rows: int) -> None:
    async def main() -> list[int]:
        session = RecordingSession()
        batcher = Batcher([session], BatchingConfig(max_batch_size=8, max_queue_delay_ms=20),
                          batched=False, label="m/1", observer=Depths())
        batcher.start()
        await asyncio.gather(*(batcher.submit(request(i, rows=rows), 1, (rows, 2), None)
                               for i in range(3)))
        await batcher.close()
        return session.batches

    assert run(main()) == [rows, rows, rows]
