"""The server under load and while its models change: many concurrent clients, overload
with a small queue, timeouts, hot swaps under load, failed loads, unload and load, version
policies, and models added to a repository while serving."""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import serve_helpers as h
from tritonclient.utils import InferenceServerException

from torchslim.serve.config_file import build_model_config


def _clients(server, n: int, fn) -> list:  # noqa: ANN001
    """Run ``fn(client_index, http_or_grpc_client)`` on n threads, half HTTP, half gRPC."""
    def one(i: int):  # noqa: ANN202
        client = h.http_client(server) if i % 2 == 0 else h.grpc_client(server)
        return fn(i, client)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def _infer(client, model: str, x: np.ndarray, **kwargs):  # noqa: ANN001, ANN003, ANN202
    make = h.http_input if "http" in type(client).__module__ else h.grpc_input
    return client.infer(model, [make("x", x)], **kwargs)


def test_2000_requests_from_64_clients_are_all_answered_correctly(start, linear_repo) -> None:  # noqa: ANN001
    server = start({"lin": (linear_repo, {"max_batch_size": 16, "max_queue_delay_ms": 2})})
    per_client = 2000 // 64 + 1

    def work(i: int, client) -> tuple[int, int]:  # noqa: ANN001
        wrong = 0
        for j in range(per_client):
            x = h.rows(1 + (i + j) % 3, seed=i * 1000 + j)   # 1-3 rows: packed whole
            y = _infer(client, "lin", x).as_numpy("y")
            wrong += not np.allclose(y, h.expected_linear(x), rtol=1e-5, atol=1e-5)
        return per_client, wrong

    results = _clients(server, 64, work)
    assert sum(n for n, _ in results) >= 2000
    assert sum(w for _, w in results) == 0
    text = h.scrape(server)
    assert 'status="5' not in text and 'status="INTERNAL"' not in text
    executions = h.metric(text, "torchslim_inference_exec_count_total", model="lin")
    assert executions < sum(n for n, _ in results)   # requests did share batches


def test_overload_gets_only_429s_beyond_capacity_and_the_server_recovers(start, linear_repo) -> None:  # noqa: ANN001
    # a long queue delay holds requests in the queue, so 48 at once overflow 4 places
    server = start({"lin": (linear_repo, {"max_batch_size": 64, "max_queue_delay_ms": 400,
                                          "max_queue_size": 4})})
    rss_before = psutil.Process().memory_info().rss
    barrier = threading.Barrier(48, timeout=10)

    def burst(i: int, client) -> str:  # noqa: ANN001
        barrier.wait()
        try:
            _infer(client, "lin", h.rows(1, seed=i))
            return "200"
        except InferenceServerException as e:
            return e.status()

    codes = [c for _ in range(3) for c in _clients(server, 48, burst)]
    assert set(codes) <= {"200", "429", "StatusCode.RESOURCE_EXHAUSTED"}, set(codes)
    ok = codes.count("200")
    assert 3 * 4 <= ok < len(codes)   # every burst filled the queue, the rest was refused
    assert server.repository.get("lin").batcher.peak_depth <= 4
    assert psutil.Process().memory_info().rss - rss_before < 200 << 20
    client = h.http_client(server)
    assert client.is_server_ready()
    x = h.rows(2)
    np.testing.assert_allclose(_infer(client, "lin", x).as_numpy("y"), h.expected_linear(x),
                               rtol=1e-5, atol=1e-5)
    text = h.scrape(server)
    assert h.metric(text, "torchslim_inference_rejected_total", model="lin") == len(codes) - ok


def test_a_request_past_its_timeout_gets_504(start, linear_repo) -> None:  # noqa: ANN001
    server = start({"lin": (linear_repo, {"max_batch_size": 64, "max_queue_delay_ms": 2000,
                                          "default_timeout_ms": 200})})
    http, grpc_ = h.http_client(server), h.grpc_client(server)
    x = h.rows(1)
    for client, status in ((http, "504"), (grpc_, "StatusCode.DEADLINE_EXCEEDED")):
        with pytest.raises(InferenceServerException) as caught:
            _infer(client, "lin", x)                  # the model's default timeout
        assert caught.value.status() == status and "timeout" in caught.value.message()
        with pytest.raises(InferenceServerException) as caught:
            _infer(client, "lin", x, timeout=50_000)  # the request's own, in microseconds
        assert caught.value.status() == status and "50 ms" in caught.value.message()


def _add_version(model_dir: Path, version: str, seed: int) -> Path:
    return h.linear(model_dir / version / "model.onnx", seed=seed)


def test_hot_swap_under_load_fails_no_request_and_switches_versions(start, linear_repo) -> None:  # noqa: ANN001
    server = start({"lin": (linear_repo, {"max_batch_size": 8, "max_queue_delay_ms": 2})})
    stop, swapped = threading.Event(), threading.Event()

    def load(i: int, client):  # noqa: ANN001, ANN202
        seen, failures, after = set(), 0, set()
        while not stop.is_set():
            x = h.rows(1, seed=i)
            was_swapped = swapped.is_set()
            try:
                result = _infer(client, "lin", x)
            except InferenceServerException:
                failures += 1
                continue
            response = result.get_response()
            version = response["model_version"] if isinstance(response, dict) else response.model_version
            seed = int(version) - 1
            assert np.allclose(result.as_numpy("y"), h.expected_linear(x, seed), atol=1e-5)
            seen.add(version)
            if was_swapped:
                after.add(version)
        return seen, failures, after

    with ThreadPoolExecutor(1) as control:
        def swap() -> list[str]:
            time.sleep(0.5)
            _add_version(linear_repo, "2", seed=1)
            h.http_client(server).load_model("lin")      # loads + warms 2, then unloads 1
            swapped.set()
            time.sleep(0.5)
            stop.set()
            return list(server.repository.entry("lin").versions)
        versions = control.submit(swap)
        results = _clients(server, 8, load)
    assert versions.result() == ["2"]
    assert sum(f for _, f, _ in results) == 0
    assert set().union(*(s for s, _, _ in results)) == {"1", "2"}
    assert set().union(*(a for _, _, a in results)) == {"2"}


def test_a_failed_load_keeps_the_old_version_serving(start, linear_repo) -> None:  # noqa: ANN001
    server = start({"lin": (linear_repo, {})})
    (linear_repo / "2").mkdir()
    (linear_repo / "2" / "model.onnx").write_bytes(b"not an onnx file")
    for client in (h.http_client(server), h.grpc_client(server)):
        with pytest.raises(InferenceServerException) as caught:
            client.load_model("lin")
        assert "version 2" in caught.value.message() and "version(s) 1 keep serving" in \
            caught.value.message()
        assert client.is_model_ready("lin", "1") and client.is_server_ready()
        assert _infer(client, "lin", h.rows(1)).as_numpy("y").shape == (1, 3)
    assert list(server.repository.entry("lin").versions) == ["1"]


def test_unload_then_load_again(start, linear_repo) -> None:  # noqa: ANN001
    server = start({"lin": (linear_repo, {})})
    client = h.http_client(server)
    client.unload_model("lin")
    assert not client.is_model_ready("lin")
    with pytest.raises(InferenceServerException) as caught:
        _infer(client, "lin", h.rows(1))
    assert caught.value.status() == "404" and "load it with" in caught.value.message()
    assert client.is_server_ready()   # an unloaded model does not make the server unready
    h.grpc_client(server).load_model("lin")
    assert _infer(client, "lin", h.rows(1)).as_numpy("y").shape == (1, 3)
    index = client.get_model_repository_index()
    assert index == [{"name": "lin", "version": "1", "state": "READY"}]


@pytest.mark.parametrize("policy, served", [("all", ["1", "2", "3"]), ("latest:2", ["2", "3"]),
                                            ([1, 3], ["1", "3"]), ("latest", ["3"])])
def test_version_policies(start, linear_repo, policy, served) -> None:  # noqa: ANN001
    _add_version(linear_repo, "2", seed=1)
    _add_version(linear_repo, "3", seed=2)
    server = start({"lin": (linear_repo, {"version_policy": policy})})
    client = h.http_client(server)
    assert client.get_model_metadata("lin")["versions"] == served
    x = h.rows(1)
    default = _infer(client, "lin", x).get_response()["model_version"]
    assert default == served[-1]   # no version given: the newest served
    for version in served:
        y = _infer(client, "lin", x, model_version=version).as_numpy("y")
        np.testing.assert_allclose(y, h.expected_linear(x, int(version) - 1), atol=1e-5)


def test_a_repository_serves_new_models_on_load_and_reload(start, tmp_path: Path) -> None:
    root = tmp_path / "models"
    h.linear(root / "a" / "1" / "model.onnx")
    template = build_model_config("template", str(root), {"max_batch_size": 4})
    server = start({"a": (root / "a", {})}, repository=str(root), template=template)
    client = h.http_client(server)
    h.two_io(root / "b" / "1" / "model.onnx")
    client.load_model("b")
    assert client.is_model_ready("b")
    h.linear(root / "c" / "model.onnx")              # a model directory holding one artifact
    assert server.call(server.reload()) == []        # what SIGHUP runs
    assert client.is_model_ready("c")
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("zzz")
    assert caught.value.status() == "404"


def test_an_artifact_rewritten_in_place_is_swapped_on_reload(start, tmp_path: Path) -> None:
    path = h.linear(tmp_path / "m.onnx", seed=0)
    server = start({"m": (path, {})})
    client = h.http_client(server)
    x = h.rows(1)
    np.testing.assert_allclose(_infer(client, "m", x).as_numpy("y"), h.expected_linear(x, 0),
                               atol=1e-5)
    staged = h.linear(tmp_path / "staged" / "m.onnx", seed=3)
    shutil.move(staged, path)                         # a rename: the atomic way to replace
    assert server.call(server.reload()) == []
    np.testing.assert_allclose(_infer(client, "m", x).as_numpy("y"), h.expected_linear(x, 3),
                               atol=1e-5)


def test_http_connections_set_tcp_nodelay(start, linear_repo) -> None:  # noqa: ANN001
    """Without TCP_NODELAY every response waits ~40 ms for the client's delayed ACK."""
    import socket

    server = start({"lin": (linear_repo, {})})
    with socket.create_connection(("127.0.0.1", server.http_port)) as conn:
        conn.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conn.recv(1024).startswith(b"HTTP/1.1 200")

        async def nodelay() -> list[int]:
            return [c.transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP,
                                                                      socket.TCP_NODELAY)
                    for c in server._http.server.server_state.connections]

        assert server.call(nodelay()) == [1]
