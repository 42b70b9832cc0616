"""Runtime-aware placement: the rewrites keep the function, the decisions follow the clock."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchslim.errors import ArtifactError, ConfigError
from torchslim.exporters import placement
from torchslim.exporters.placement import float_node_, place_for_runtime, space_to_depth_
from torchslim.exporters.qdq import export_qdq, ort_fused_ops
from torchslim.quant.api import quantize
from torchslim.quant.config import QuantConfig


class Stem(nn.Module):
    """A CNN stem: a strided 3-channel convolution, then ordinary layers and a classifier."""

    def __init__(self, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, kernel, stride, padding)
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)))


def _artifact(tmp_path, kernel: int = 7, stride: int = 2, padding: int = 3, size: int = 32):
    torch.manual_seed(0)
    model = Stem(kernel, stride, padding).eval()
    x = torch.rand(64, 3, size, size)
    prepared = quantize(model, QuantConfig(), calibration=DataLoader(
        TensorDataset(x, torch.zeros(64, dtype=torch.long)), batch_size=32), num_batches=2)
    return export_qdq(prepared, tmp_path / "int8.onnx", input_shape=(3, size, size)), x


def _run(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _stem_name(model: onnx.ModelProto) -> str:
    return next(n.name for n in model.graph.node if n.op_type == "Conv")


@pytest.mark.parametrize("kernel,stride,padding,size", [(7, 2, 3, 32), (3, 2, 1, 32),
                                                        (5, 2, 2, 30), (4, 4, 0, 32),
                                                        (3, 2, 0, 32)])
def test_space_to_depth_gives_the_same_int8_output(tmp_path, kernel, stride, padding, size) -> None:
    path, x = _artifact(tmp_path, kernel, stride, padding, size)
    model = onnx.load(str(path))
    name = _stem_name(model)
    space_to_depth_(model, name)
    onnx.checker.check_model(model)
    conv = next(n for n in model.graph.node if n.name == name)
    assert {a.name: list(a.ints) for a in conv.attribute}["strides"] == [1, 1]
    assert any(n.op_type == "SpaceToDepth" for n in model.graph.node)
    out = tmp_path / "s2d.onnx"
    onnx.save(model, str(out))
    inputs = x[:8].numpy()
    np.testing.assert_array_equal(_run(out, inputs), _run(path, inputs))  # the same sums
    assert ort_fused_ops(out)["QLinearConv"] == ort_fused_ops(path)["QLinearConv"]


def test_float_node_runs_the_stem_in_float_and_stays_close(tmp_path) -> None:
    path, x = _artifact(tmp_path)
    model = onnx.load(str(path))
    float_node_(model, _stem_name(model))
    out = tmp_path / "float.onnx"
    onnx.save(model, str(out))
    assert ort_fused_ops(out)["QLinearConv"] == ort_fused_ops(path)["QLinearConv"] - 1
    a, b = _run(out, x[:8].numpy()), _run(path, x[:8].numpy())
    assert np.abs(a - b).max() < 0.05 * np.abs(b).max()


def test_candidates_and_refusals(tmp_path) -> None:
    path, _ = _artifact(tmp_path)
    model = onnx.load(str(path))
    found = [(n.op_type, v) for n, v in placement._candidates(model)]
    assert found == [("Conv", "space-to-depth"), ("Conv", "float"), ("Gemm", "float")]
    body = [n.name for n in model.graph.node if n.op_type == "Conv"][1]
    with pytest.raises(ConfigError, match="reads 16 channels"):
        space_to_depth_(model, body)
    with pytest.raises(ConfigError, match="no node named"):
        float_node_(model, "nope")


def _fake_clock(monkeypatch, speed: dict[str, float]) -> None:
    """Replace the interleaved timer: each trial file's time is its variant's factor."""

    def fake_time(paths, runtime, *, batch, threads, rounds):
        def factor(p):
            model = onnx.load(str(p))
            ops = {n.op_type for n in model.graph.node}
            weights = sum(i.data_type == onnx.TensorProto.FLOAT and len(i.dims) > 1
                          for i in model.graph.initializer)
            f = 1.0
            if "SpaceToDepth" in ops:
                f *= speed["space-to-depth"]
            f *= speed["float"] ** weights
            return f
        return [[100.0 * factor(p) * (1 + 0.001 * r) for r in range(rounds)] for p in paths]

    monkeypatch.setattr(placement, "_time", fake_time)


def test_a_faster_variant_is_kept_and_written(tmp_path, monkeypatch) -> None:
    path, x = _artifact(tmp_path)
    _fake_clock(monkeypatch, {"space-to-depth": 0.8, "float": 1.1})
    result = place_for_runtime(path, tmp_path / "placed.onnx", rounds=5)
    assert [v for _, v in result.kept] == ["space-to-depth"]
    assert result.speedup == pytest.approx(1.25, rel=1e-3)
    kept = {(t.variant, t.op): t.kept for t in result.trials}
    assert kept == {("space-to-depth", "Conv"): True, ("float", "Conv"): False,
                    ("float", "Gemm"): False}
    placed = onnx.load(str(tmp_path / "placed.onnx"))
    assert any(n.op_type == "SpaceToDepth" for n in placed.graph.node)
    np.testing.assert_array_equal(_run(tmp_path / "placed.onnx", x[:4].numpy()),
                                  _run(path, x[:4].numpy()))
    json.dumps(result.to_dict())  # the report's block


def test_nothing_faster_leaves_the_artifact_unchanged(tmp_path, monkeypatch) -> None:
    path, _ = _artifact(tmp_path)
    _fake_clock(monkeypatch, {"space-to-depth": 1.05, "float": 1.2})
    result = place_for_runtime(path, tmp_path / "placed.onnx", rounds=5)
    assert result.kept == [] and "unchanged" in result.note
    assert (tmp_path / "placed.onnx").read_bytes() == path.read_bytes()
    assert all(not t.kept for t in result.trials)


def test_bad_arguments(tmp_path) -> None:
    with pytest.raises(ArtifactError, match="not found"):
        place_for_runtime(tmp_path / "missing.onnx")
    path, _ = _artifact(tmp_path)
    with pytest.raises(ConfigError, match="runtime"):
        place_for_runtime(path, runtime="tensorrt")
    with pytest.raises(ConfigError, match="min_gain"):
        place_for_runtime(path, min_gain=0.9)
    with pytest.raises(ConfigError, match="unknown variants"):
        place_for_runtime(path, variants=("fp16",))


def test_real_timing_on_onnxruntime_writes_a_working_artifact(tmp_path) -> None:
    path, x = _artifact(tmp_path)
    result = place_for_runtime(path, tmp_path / "placed.onnx", batch=4, rounds=3)
    assert len(result.trials) == 3 and all(t.rounds == 3 for t in result.trials)
    out = _run(tmp_path / "placed.onnx", x[:4].numpy())
    ref = _run(path, x[:4].numpy())
    assert np.abs(out - ref).max() < 0.05 * np.abs(ref).max()  # whichever variants won


def test_quantize_cli_reports_its_placement(tmp_path, fake_fashion) -> None:
    from typer.testing import CliRunner

    from torchslim.cli import app
    from torchslim.train import save_checkpoint
    from torchslim.zoo import build_model

    checkpoint = save_checkpoint(tmp_path / "ck" / "resnet8.safetensors",
                                 build_model("resnet8", width=8), dataset="fashion-mnist")
    out = tmp_path / "q"
    args = ["quantize", str(checkpoint), "--data", str(fake_fashion), "--calib-batches", "2"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    block = json.loads((out / "report.json").read_text())["placement"]
    assert block["runtime"] == "onnxruntime" and block["batch"] == 32
    assert block["trials"] and all(t["rounds"] == 7 for t in block["trials"])
    assert "Runtime-aware placement" in (out / "report.html").read_text()
    result = CliRunner().invoke(app, [*args, "--no-placement", "--out", str(tmp_path / "n")])
    assert result.exit_code == 0, result.output
    assert "placement" not in json.loads((tmp_path / "n" / "report.json").read_text())
