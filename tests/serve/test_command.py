"""`torchslim serve` as a user runs it: one-line errors with exit 2, and a real subprocess
that prints its ports, logs JSON access lines, reloads on SIGHUP, and on SIGTERM answers
the requests in flight, stops and exits 0."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import serve_helpers as h
from typer.testing import CliRunner

from torchslim.cli import app

runner = CliRunner()


def test_nothing_to_serve_is_one_line(one_line_error) -> None:  # noqa: ANN001
    one_line_error(runner.invoke(app, ["serve"]), "ARTIFACT_OR_REPO", "--config")


def test_a_bad_config_names_file_line_and_field(tmp_path: Path, one_line_error) -> None:  # noqa: ANN001
    config = tmp_path / "repo.yaml"
    config.write_text("models:\n  m:\n    source: m.onnx\n    max_queue_size: -1\n")
    one_line_error(runner.invoke(app, ["serve", "--config", str(config)]),
                   "repo.yaml:4: models.m.max_queue_size: -1 must be >= 1")


def test_a_missing_artifact_is_one_line(tmp_path: Path, one_line_error) -> None:  # noqa: ANN001
    result = runner.invoke(app, ["serve", str(tmp_path / "nope.onnx"), "--http-port", "0",
                                 "--grpc-port", "0"])
    one_line_error(result, "not found")


def test_a_bad_flag_is_one_line(tmp_path: Path, one_line_error) -> None:  # noqa: ANN001
    path = h.linear(tmp_path / "m.onnx")
    one_line_error(runner.invoke(app, ["serve", str(path), "--max-batch-size", "0"]),
                   "--max-batch-size: 0 must be >= 1")


class Served:
    """``torchslim serve`` in a subprocess, its ports read from its "ready:" line."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "torchslim", "serve", *args,
                                      "--http-port", "0", "--grpc-port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env)
        self.stderr: list[str] = []
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()
        for line in self.proc.stdout:
            found = re.search(r"ready: HTTP http://127\.0\.0\.1:(\d+)/v2\s+gRPC 127\.0\.0\.1:(\d+)",
                              line)
            if found:
                self.http_port, self.grpc_port = int(found[1]), int(found[2])
                break
        else:
            self.proc.wait(30)
            raise AssertionError(f"no ready line; stderr: {''.join(self.stderr)[-2000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    h.linear(tmp_path / "lin" / "1" / "model.onnx")
    return tmp_path / "lin"


def _wait_for_queue_depth(served: Served, depth: int, timeout_s: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{served.http_port}/metrics").text
        seen = h.metric(text, "torchslim_inference_queue_depth")
        if seen == depth:
            return
        time.sleep(0.02)
    raise AssertionError(f"queue depth {seen}, not {depth}, after {timeout_s} s")


def test_sigterm_answers_the_requests_in_flight_then_exits_0(model_dir: Path) -> None:
    # a 3 s queue delay keeps the four requests in flight when SIGTERM arrives
    served = Served(str(model_dir), "--max-queue-delay-ms", "3000", "--max-batch-size", "64")
    try:
        answers: list[object] = []

        def ask(i: int) -> None:
            x = h.rows(1, seed=i)
            try:
                y = h.http_client(served).infer("lin", [h.http_input("x", x)]).as_numpy("y")
                answers.append(bool(np.allclose(y, h.expected_linear(x), atol=1e-5)))
            except Exception as e:  # noqa: BLE001 (recorded, then asserted on)
                answers.append(e)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        _wait_for_queue_depth(served, 4)   # not a fixed sleep: beside other jobs the
        served.proc.send_signal(signal.SIGTERM)   # clients took longer than 0.5 s to connect
        for t in threads:
            t.join(20)
        assert served.proc.wait(30) == 0
    finally:
        served.stop()
    assert answers == [True] * 4
    records = [json.loads(line) for line in served.stderr if line.startswith("{")]
    infers = [r for r in records if r["path"] == "/v2/models/lin/infer"]
    assert len(infers) == 4 and {r["status"] for r in infers} == {200}
    assert all(r["ms"] >= 0 and r["protocol"] == "http" for r in infers)
    with pytest.raises(OSError):   # nothing listens any more (connection refused)
        h.http_client(served).is_server_live()


def test_sighup_reloads_and_swaps_in_a_new_version(model_dir: Path) -> None:
    served = Served(str(model_dir), "--no-access-log")
    try:
        client = h.grpc_client(served)
        assert client.is_model_ready("lin", "1")
        h.linear(model_dir / "2" / "model.onnx", seed=1)
        served.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while not client.is_model_ready("lin", "2") and time.monotonic() < deadline:
            time.sleep(0.1)
        x = h.rows(1)
        y = client.infer("lin", [h.grpc_input("x", x)]).as_numpy("y")
        np.testing.assert_allclose(y, h.expected_linear(x, seed=1), atol=1e-5)
        assert not client.is_model_ready("lin", "1")
    finally:
        assert served.stop() == 0
    assert not any(line.startswith("{") for line in served.stderr)
