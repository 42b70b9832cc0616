"""Dynamic batching for one model version: a bounded queue, a scheduler, worker threads.

Requests wait in a FIFO queue of at most ``max_queue_size``; one more is refused at once
(``ServerBusyError`` -> 429). The scheduler, a task on the event loop, takes an idle
session instance, then the longest prefix of the queue that fits ``max_batch_size`` rows
(requests are packed whole; only requests whose non-batch shapes agree share a batch),
dispatching as soon as the batch cannot grow, reaches the largest preferred size, or the
oldest request has waited ``max_queue_delay_ms``. One exception: a request that is alone
(nothing else queued or running) right after a batch that was alone too is sent at once —
there is no one to wait for, and a lone client should not pay the delay on every call; the
first coincidence of two requests brings the wait back. The batch runs on a worker thread —
never on the event loop — and each caller gets its own rows back, in order. While every
instance is busy the queue keeps filling, so batches grow with the load.

A request's timeout runs from its arrival: still queued at the deadline, it leaves the
queue with ``RequestTimeoutError`` (504); already running, its result is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from torchslim.errors import ArtifactError
from torchslim.runtime import Session
from torchslim.serve.config import BatchingConfig
from torchslim.serve.errors import RequestTimeoutError, ServerBusyError, ShuttingDownError

__all__ = ["Batcher", "BatchObserver"]

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]


class BatchObserver(Protocol):
    """What the batcher reports (the server's metrics implement it)."""

    def queue_depth(self, depth: int) -> None: ...

    def executed(self, rows: int, compute_s: float, queue_s: Sequence[float]) -> None: ...


@dataclass(eq=False)
class _Job:
    feeds: Arrays
    rows: int
    key: Hashable
    future: asyncio.Future[Arrays]
    enqueued: float
    queued: bool = True
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class Batcher:
    """Queue and run one version's requests on ``sessions`` (one worker thread each).
    ``batched=False`` runs every request alone (a model without a batch dimension)."""

    def __init__(self, sessions: Sequence[Session], config: BatchingConfig, *, batched: bool,
                 label: str, observer: BatchObserver) -> None:
        self.config = config
        self._cap = config.max_batch_size if batched else 1
        self._sessions = list(sessions)
        self._observer = observer
        self._label = label
        self._executor = ThreadPoolExecutor(max_workers=len(sessions),
                                            thread_name_prefix=f"infer-{label}")
        self._queue: deque[_Job] = deque()
        self._running: set[asyncio.Task[None]] = set()
        self._closing = False
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_jobs = 0   # requests in the last batch (0: none yet)
        self._executing = 0   # batches on worker threads now
        self.peak_depth = 0   # the most requests ever waiting at once (<= max_queue_size)

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        """Start the scheduler on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._idle: asyncio.Queue[Session] = asyncio.Queue()
        for session in self._sessions:
            self._idle.put_nowait(session)
        self._task = self._loop.create_task(self._schedule(), name=f"batcher-{self._label}")

    def submit(self, feeds: Arrays, rows: int, key: Hashable,
               timeout_s: float | None) -> asyncio.Future[Arrays]:
        """Queue a request; the future resolves to its outputs. Raises ServerBusyError when
        the queue is full. Call on the event loop."""
        if self._task is None or self._task.done():
            raise ShuttingDownError(f"{self._label} is shutting down; retry on another server")
        if len(self._queue) >= self.config.max_queue_size:
            raise ServerBusyError(f"{self._label}: queue full ({self.config.max_queue_size} "
                                  "requests waiting); retry later or raise max_queue_size")
        job = _Job(feeds, rows, key, self._loop.create_future(), self._loop.time())
        if timeout_s is not None:
            job.timer = self._loop.call_later(timeout_s, self._expire, job, timeout_s)
        job.future.add_done_callback(lambda _: self._forget(job))
        self._queue.append(job)
        self.peak_depth = max(self.peak_depth, len(self._queue))
        self._observer.queue_depth(len(self._queue))
        self._wake()
        return job.future

    async def close(self) -> None:
        """Stop taking requests once the queue is empty, wait for running batches, then
        stop the worker threads. Every request queued before this gets its answer."""
        self._closing = True
        self._wake()
        if self._task is not None:
            await self._task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._executor.shutdown(wait=False)

    # ------------------------------------------------------------------ scheduling

    async def _schedule(self) -> None:
        while True:
            session = await self._idle.get()
            jobs = await self._next_batch()
            if jobs is None:
                self._idle.put_nowait(session)
                return
            self._executing += 1
            task = self._loop.create_task(self._execute(session, jobs))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_batch(self) -> list[_Job] | None:
        delay = self.config.max_queue_delay_ms / 1000.0
        while True:
            if not self._queue:
                if self._closing:
                    return None
                await self._sleep(None)
                continue
            jobs, full = self._plan()
            wait = self._queue[0].enqueued + delay - self._loop.time()
            if full or wait <= 0 or self._closing or self._alone():
                return self._take(jobs)
            await self._sleep(wait)

    def _alone(self) -> bool:
        """One request waiting, none running, and the last batch was one request too."""
        return len(self._queue) == 1 and self._last_jobs == 1 and not self._executing

    def _plan(self) -> tuple[list[_Job], bool]:
        """The queue's longest packable prefix, and whether it can no longer grow."""
        head, jobs, rows = self._queue[0], [], 0
        for job in self._queue:
            if job.key != head.key or rows + job.rows > self._cap:
                return jobs, True
            jobs.append(job)
            rows += job.rows
        preferred = self.config.preferred_batch_sizes
        return jobs, rows >= self._cap or bool(preferred and rows >= preferred[-1])

    def _take(self, jobs: list[_Job]) -> list[_Job]:
        preferred = set(self.config.preferred_batch_sizes)
        if preferred:  # cut at the largest preferred size the prefix reaches exactly
            total, cut = 0, 0
            for i, job in enumerate(jobs):
                total += job.rows
                cut = i + 1 if total in preferred else cut
            jobs = jobs[:cut] if cut else jobs
        for job in jobs:
            self._queue.popleft()
            job.queued = False
        self._last_jobs = len(jobs)
        self._observer.queue_depth(len(self._queue))
        return jobs

    async def _sleep(self, timeout: float | None) -> None:
        """Until a request arrives, close() is called, or ``timeout`` s pass."""
        self._waiter = self._loop.create_future()
        handle = None if timeout is None else self._loop.call_later(
            timeout, self._wake)
        try:
            await self._waiter
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # ------------------------------------------------------------------ execution

    async def _execute(self, session: Session, jobs: list[_Job]) -> None:
        start = self._loop.time()
        rows = sum(j.rows for j in jobs)
        try:
            outputs = await self._loop.run_in_executor(self._executor, session.infer,
                                                       _concat(jobs))
            _deliver(jobs, outputs, rows)
        except Exception as e:  # the runtime failed: every caller of the batch hears why
            if not isinstance(e, ArtifactError):
                logger.exception("%s: inference failed on a batch of %d rows", self._label, rows)
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(e)
        finally:
            self._executing -= 1
            self._observer.executed(rows, self._loop.time() - start,
                                    [start - j.enqueued for j in jobs])
            self._idle.put_nowait(session)

    def _expire(self, job: _Job, timeout_s: float) -> None:
        if not job.future.done():
            job.future.set_exception(RequestTimeoutError(
                f"{self._label}: no answer within the request's timeout of "
                f"{timeout_s * 1000:g} ms; raise the timeout or lower the load"))

    def _forget(self, job: _Job) -> None:
        """A finished request (answered, timed out or cancelled) leaves the queue."""
        if job.timer is not None:
            job.timer.cancel()
        if job.queued:
            job.queued = False
            self._queue.remove(job)
            self._observer.queue_depth(len(self._queue))


def _concat(jobs: list[_Job]) -> Arrays:
    if len(jobs) == 1:
        return jobs[0].feeds
    return {name: np.concatenate([j.feeds[name] for j in jobs]) for name in jobs[0].feeds}


def _deliver(jobs: list[_Job], outputs: Arrays, rows: int) -> None:
    """Hand each caller its rows of every output (in the order the requests came)."""
    if len(jobs) == 1:
        if not jobs[0].future.done():
            jobs[0].future.set_result(outputs)
        return
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != rows:
            raise ArtifactError(f"output {name!r} has shape {array.shape} for a batch of {rows} "
                                "rows; serve this model with max_batch_size=1")
    offset = 0
    for job in jobs:
        if not job.future.done():
            job.future.set_result({n: a[offset:offset + job.rows] for n, a in outputs.items()})
        offset += job.rows
