"""Prometheus metrics, one registry per server (several servers can share a process).

Per model and version (Triton's ``nv_inference_*`` under the ``torchslim_`` prefix):
request successes and failures (by reason), rows inferred and executions run (their ratio
is the mean batch size), time queued per request and compute time per execution, the
batch sizes run, the queue depth, and the rejected (queue full) and timed-out requests.
Plus every request by protocol and status code, to watch for 5xx.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["ServerMetrics", "VersionMetrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LABELS = ("model", "version")
_SECONDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.success = Counter("torchslim_inference_request_success",
                               "Inference requests answered", _LABELS, registry=r)
        self.failure = Counter("torchslim_inference_request_failure",
                               "Inference requests that failed, by reason (rejected, timeout, "
                               "invalid, error)", (*_LABELS, "reason"), registry=r)
        self.inferences = Counter("torchslim_inference_count",
                                  "Rows inferred (a batch of n counts n)", _LABELS, registry=r)
        self.executions = Counter("torchslim_inference_exec_count",
                                  "Model executions (batches run)", _LABELS, registry=r)
        self.queue_seconds = Histogram("torchslim_inference_queue_seconds",
                                       "Time a request waited in the queue", _LABELS,
                                       buckets=_SECONDS, registry=r)
        self.compute_seconds = Histogram("torchslim_inference_compute_seconds",
                                         "Time one execution (a batch) took", _LABELS,
                                         buckets=_SECONDS, registry=r)
        self.batch_rows = Histogram("torchslim_inference_batch_size", "Rows per execution",
                                    _LABELS, buckets=_ROWS, registry=r)
        self.queue_depth = Gauge("torchslim_inference_queue_depth", "Requests waiting",
                                 _LABELS, registry=r)
        self.rejected = Counter("torchslim_inference_rejected",
                                "Requests refused because the queue was full", _LABELS,
                                registry=r)
        self.timeouts = Counter("torchslim_inference_timeout",
                                "Requests dropped at their timeout", _LABELS, registry=r)
        self.requests = Counter("torchslim_requests", "Requests by protocol and status",
                                ("protocol", "status"), registry=r)

        self._versions: dict[tuple[str, str], VersionMetrics] = {}
        self._requests: dict[tuple[str, object], Any] = {}

    def for_version(self, model: str, version: str) -> VersionMetrics:
        """The version's metrics, label children bound once (a lookup per request
        would cost a lock and a dict walk for each of ten metrics)."""
        key = (model, version)
        if key not in self._versions:
            self._versions[key] = VersionMetrics(self, model, version)
        return self._versions[key]

    def request_done(self, protocol: str, status: object) -> None:
        key = (protocol, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(protocol, str(status))
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class VersionMetrics:
    """The metrics of one model version, labels bound once (the batcher's observer)."""

    def __init__(self, metrics: ServerMetrics, model: str, version: str) -> None:
        labels = {"model": model, "version": version}
        self._metrics, self._labels = metrics, labels
        self._success = metrics.success.labels(**labels)
        self._inferences = metrics.inferences.labels(**labels)
        self._executions = metrics.executions.labels(**labels)
        self._queue = metrics.queue_seconds.labels(**labels)
        self._compute = metrics.compute_seconds.labels(**labels)
        self._rows = metrics.batch_rows.labels(**labels)
        self._depth = metrics.queue_depth.labels(**labels)
        self._rejected = metrics.rejected.labels(**labels)
        self._timeouts = metrics.timeouts.labels(**labels)

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)

    def executed(self, rows: int, compute_s: float, queue_s: Sequence[float]) -> None:
        self._inferences.inc(rows)
        self._executions.inc()
        self._compute.observe(compute_s)
        self._rows.observe(rows)
        for seconds in queue_s:
            self._queue.observe(seconds)

    def succeeded(self) -> None:
        self._success.inc()

    def failed(self, reason: str) -> None:
        self._metrics.failure.labels(**self._labels, reason=reason).inc()
        if reason == "rejected":
            self._rejected.inc()
        elif reason == "timeout":
            self._timeouts.inc()
