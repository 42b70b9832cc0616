"""A loaded version: the checks a request passes before it may join a batch, warm-up at
every configured batch size before ready, and real torchslim artifacts (FP32 and INT8 QDQ)
served bit for bit like ``torchslim.runtime.open(...).run``."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import serve_helpers as h
import torch

from torchslim.runtime import TensorSpec
from torchslim.runtime import open as open_session
from torchslim.serve.config import BatchingConfig, ModelConfig
from torchslim.serve.errors import BadRequestError
from torchslim.serve.model import ModelVersion
from torchslim.serve.protocol import InferRequest, RequestedOutput
from torchslim.serve.sources import VersionFiles


class FakeSession:
    runtime, precision, threads, artifact = "onnxruntime", "fp32", 1, None

    def __init__(self, batch: int | str = "batch") -> None:
        self.inputs = (TensorSpec("x", "float32", (batch, 4)), TensorSpec("ids", "int64", (batch, 2)))
        self.outputs = (TensorSpec("y", "float32", (batch, 3)),)
        self.calls: list[int] = []

    def infer(self, feeds: dict) -> dict:
        self.calls.append(feeds["x"].shape[0])
        return {"y": np.zeros((feeds["x"].shape[0], 3), np.float32)}

    def close(self) -> None:
        pass


def version(session: FakeSession | None = None, **options) -> ModelVersion:  # noqa: ANN003
    config = ModelConfig(name="m", source="x", batching=BatchingConfig(**options))
    return ModelVersion(config, VersionFiles("1", Path("x.onnx"), ()), [session or FakeSession()])


def request(x: np.ndarray, ids: np.ndarray | None = None, **kwargs) -> InferRequest:  # noqa: ANN003
    ids = np.zeros((x.shape[0], 2), np.int64) if ids is None else ids
    return InferRequest(model="m", version=None, inputs={"x": x, "ids": ids}, **kwargs)


def test_warm_up_runs_every_configured_batch_size_on_every_instance() -> None:
    sessions = [FakeSession(), FakeSession()]
    config = ModelConfig(name="m", source="x", instances=2,
                         batching=BatchingConfig(max_batch_size=16, preferred_batch_sizes=(4,)))
    ModelVersion(config, VersionFiles("1", Path("x.onnx"), ()), sessions).warm_up()
    assert [s.calls for s in sessions] == [[1, 4, 16], [1, 4, 16]]


def test_a_fixed_batch_dim_means_unbatched_requests() -> None:
    mv = version(FakeSession(batch=1))
    assert not mv.batched and mv.max_batch_size == 1
    assert mv.prepare(request(h.rows(1))).rows == 1


def test_prepare_packs_by_rows_and_non_batch_shape() -> None:
    prepared = version().prepare(request(h.rows(3), outputs=(RequestedOutput("y", False),)))
    assert prepared.rows == 3 and prepared.key == ((4,), (2,))
    assert prepared.outputs == (("y", False),)


@pytest.mark.parametrize("make, words", [
    (lambda: request(h.rows(2).astype(np.float16)), "takes FP32, got FP16"),
    (lambda: request(h.rows(2, features=3)), "expects shape (batch, 4), got [2, 3]"),
    (lambda: request(h.rows(2), np.zeros((3, 2), np.int64)), "share the batch size"),
    (lambda: request(h.rows(9)), "max_batch_size=8"),
    (lambda: request(np.zeros((0, 4), np.float32), np.zeros((0, 2), np.int64)), "a batch of 0"),
    (lambda: request(np.full((1, 4), -np.inf, np.float32)), "4 NaN/Inf"),
    (lambda: InferRequest(model="m", version=None, inputs={"x": h.rows(1)}), "missing ['ids']"),
    (lambda: request(h.rows(1), outputs=(RequestedOutput("z"),)), "no output(s) ['z']"),
])
def test_requests_that_do_not_fit_are_refused_before_they_are_queued(make, words: str) -> None:  # noqa: ANN001
    with pytest.raises(BadRequestError) as caught:
        version(max_batch_size=8).prepare(make())
    assert words in str(caught.value)


def test_a_version_reports_ready_only_after_its_warm_up(start, linear_repo: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    server = start({"lin": (linear_repo, {})})
    gate, warming = threading.Event(), threading.Event()
    real = ModelVersion.warm_up

    def slow_warm_up(self: ModelVersion) -> None:
        warming.set()
        gate.wait(10)
        real(self)

    monkeypatch.setattr(ModelVersion, "warm_up", slow_warm_up)
    h.linear(linear_repo / "2" / "model.onnx", seed=1)
    client = h.http_client(server)   # gevent-based: one client per thread
    loading = threading.Thread(target=lambda: h.http_client(server).load_model("lin"))
    loading.start()
    assert warming.wait(10)
    assert not client.is_model_ready("lin", "2") and client.is_model_ready("lin", "1")
    assert client.infer("lin", [h.http_input("x", h.rows(1))]).get_response()["model_version"] == "1"
    gate.set()
    loading.join(10)
    assert client.is_model_ready("lin", "2") and not client.is_model_ready("lin", "1")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A resnet8 exported FP32 and as INT8 QDQ (static PTQ, random calibration data)."""
    from torchslim.exporters import export_onnx, export_qdq
    from torchslim.quant.api import quantize
    from torchslim.quant.config import QuantConfig
    from torchslim.zoo import build_model

    root = tmp_path_factory.mktemp("artifacts")
    torch.manual_seed(0)
    model = build_model("resnet8", width=8).eval()
    calibration = list(torch.rand(64, 1, 28, 28).split(32))
    prepared = quantize(model, QuantConfig(), calibration=calibration)
    return {"fp32": export_onnx(model, root / "fp32" / "1" / "model.onnx", input_shape=(1, 28, 28)),
            "int8": export_qdq(prepared, root / "int8" / "1" / "model.onnx", input_shape=(1, 28, 28))}


def test_torchslim_artifacts_round_trip_bit_for_bit(start, artifacts: dict[str, Path]) -> None:
    server = start({name: (path.parent.parent, {"max_batch_size": 8})
                    for name, path in artifacts.items()})
    http, grpc_ = h.http_client(server), h.grpc_client(server)
    for name, path in artifacts.items():
        reference = open_session(path)
        assert server.repository.get(name).precision == name
        for n in (1, 4):
            x = np.random.default_rng(n).random((n, 1, 28, 28), dtype=np.float32)
            want = reference.run(x)
            np.testing.assert_array_equal(
                http.infer(name, [h.http_input(reference.inputs[0].name, x)]).as_numpy(
                    reference.outputs[0].name), want)
            np.testing.assert_array_equal(
                grpc_.infer(name, [h.grpc_input(reference.inputs[0].name, x)]).as_numpy(
                    reference.outputs[0].name), want)


def test_served_onnxruntime_sessions_do_not_busy_wait(artifacts: dict[str, Path]) -> None:
    # spinning intra-op threads would hold the cores the event loop parses requests on
    path = artifacts["int8"]
    config = ModelConfig(name="int8", source=str(path), instances=2, warmup=False)
    loaded = ModelVersion.load(config, VersionFiles("1", path, ()))
    try:
        for session in loaded.sessions:
            options = session._session.get_session_options()
            assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    finally:
        for session in loaded.sessions:
            session.close()
