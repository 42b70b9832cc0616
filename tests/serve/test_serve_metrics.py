"""/metrics counters move as requests succeed, fail, are refused or batched; each server
has its own registry, so two servers in one process count apart."""

from __future__ import annotations

import httpx
import numpy as np
import serve_helpers as h
from tritonclient.utils import InferenceServerException


def test_counters_follow_the_requests(start, linear_repo) -> None:  # noqa: ANN001
    server = start({"lin": (linear_repo, {"max_batch_size": 8, "max_queue_delay_ms": 1})})
    other = start({"lin": (linear_repo, {})})
    client = h.http_client(server)
    sizes = [1, 3, 2, 4, 1]
    for n in sizes:
        client.infer("lin", [h.http_input("x", h.rows(n))])
    h.grpc_client(server).infer("lin", [h.grpc_input("x", h.rows(2))])
    for bad in (h.rows(1, features=5), np.full((1, 4), np.nan, np.float32)):
        try:
            client.infer("lin", [h.http_input("x", bad)])
        except InferenceServerException:
            pass
    text = h.scrape(server)
    labels = {"model": "lin", "version": "1"}
    requests = len(sizes) + 1
    assert h.metric(text, "torchslim_inference_request_success_total", **labels) == requests
    assert h.metric(text, "torchslim_inference_request_failure_total", reason="invalid",
                    **labels) == 2
    assert h.metric(text, "torchslim_inference_count_total", **labels) == sum(sizes) + 2
    executions = h.metric(text, "torchslim_inference_exec_count_total", **labels)
    assert 1 <= executions <= requests
    assert h.metric(text, "torchslim_inference_queue_seconds_count", **labels) == requests
    assert h.metric(text, "torchslim_inference_compute_seconds_count", **labels) == executions
    assert h.metric(text, "torchslim_inference_batch_size_sum", **labels) == sum(sizes) + 2
    assert h.metric(text, "torchslim_inference_queue_depth", **labels) == 0
    assert h.metric(text, "torchslim_inference_rejected_total", **labels) == 0
    assert h.metric(text, "torchslim_requests_total", protocol="http", status="200") >= requests - 1
    assert h.metric(text, "torchslim_requests_total", protocol="http", status="400") == 2
    assert h.metric(text, "torchslim_requests_total", protocol="grpc", status="OK") >= 1
    # the other server saw none of it
    assert h.metric(h.scrape(other), "torchslim_inference_request_success_total") == 0
    reply = httpx.get(f"http://127.0.0.1:{server.http_port}/metrics")
    assert reply.headers["content-type"].startswith("text/plain")
