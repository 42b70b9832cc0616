"""Dynamic and weight-only ONNX export: ONNX Runtime computes what the torch simulation
computes, weights are stored as int8, and the dynamic graph runs integer MatMul kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from torchslim.errors import ConfigError
from torchslim.exporters import export_dynamic, export_onnx, export_weight_only
from torchslim.exporters.qdq import ort_fused_ops
from torchslim.quant import (DynamicQuantConfig, WeightOnlyConfig, quantize_dynamic,
                             quantize_weight_only)

ort = pytest.importorskip("onnxruntime")

INTEGER_MATMULS = {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}


class TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        with torch.no_grad():  # the clone() in TransformerEncoder makes both layers equal
            for p in self.enc.layers[1].parameters():
                p.add_(0.05 * torch.randn_like(p))
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(x))  # (B, T, 10)


def mlp() -> nn.Module:  # 148k weights
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)).eval()


MODELS = {"mlp": (mlp, (64,)), "transformer": (lambda: TinyTransformer().eval(), (8, 32))}
QUANTIZERS = {
    "dynamic": (quantize_dynamic, export_dynamic),
    "int8": (lambda m: quantize_weight_only(m, WeightOnlyConfig(bits=8, group_size=None)),
             export_weight_only),
    "int4-g32": (lambda m: quantize_weight_only(m, WeightOnlyConfig(bits=4, group_size=32)),
                 export_weight_only),
}


def run_ort(path: Path, x: torch.Tensor) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    # MatMulNBits (blocked DQ -> MatMul) would otherwise quantize its input to int8.
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("method", list(QUANTIZERS))
def test_ort_matches_torch_simulation(tmp_path: Path, model_name: str, method: str) -> None:
    build, shape = MODELS[model_name]
    quantize, export = QUANTIZERS[method]
    q = quantize(build())
    path = export(q, tmp_path / "m.onnx", input_shape=shape)
    x = torch.randn(64, *shape)
    with torch.no_grad():
        ref = q(x).numpy()
    out = run_ort(path, x)
    assert np.abs(out - ref).max() <= 1e-2 * np.abs(ref).max()
    assert (out.argmax(-1) == ref.argmax(-1)).mean() >= 0.99


@pytest.mark.parametrize("model_name", list(MODELS))
def test_dynamic_graph_runs_integer_matmuls(tmp_path: Path, model_name: str) -> None:
    build, shape = MODELS[model_name]
    path = export_dynamic(quantize_dynamic(build()), tmp_path / "m.onnx", input_shape=shape)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    fused = ort_fused_ops(path)
    n_linear = 1 + 2 * 2 if model_name == "transformer" else 4  # head + 2 FFN per layer
    assert sum(fused[op] for op in INTEGER_MATMULS) == n_linear


@pytest.mark.parametrize("method", ["dynamic", "int8"])
def test_int8_file_is_small(tmp_path: Path, method: str) -> None:
    model = mlp()
    quantize, export = QUANTIZERS[method]
    fp32 = export_onnx(model, tmp_path / "fp32.onnx", input_shape=(64,))
    int8 = export(quantize(model), tmp_path / "int8.onnx", input_shape=(64,))
    assert int8.stat().st_size <= 0.35 * fp32.stat().st_size
    weights = [numpy_helper.to_array(i) for i in onnx.load(str(int8)).graph.initializer]
    assert sum(w.size for w in weights if w.dtype == np.int8) >= 148_000


def test_per_group_uses_blocked_dequantize_linear(tmp_path: Path) -> None:
    q = quantize_weight_only(mlp(), WeightOnlyConfig(bits=4, group_size=32))
    graph = onnx.load(str(export_weight_only(q, tmp_path / "m.onnx", input_shape=(64,)))).graph
    dqs = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 4
    assert all(onnx.helper.get_attribute_value(a) == 32
               for n in dqs for a in n.attribute if a.name == "block_size")
    q_values = [numpy_helper.to_array(i) for i in graph.initializer if i.name.endswith("_quantized")]
    assert all(v.min() >= -7 and v.max() <= 7 for v in q_values)


def test_per_token_model_does_not_export(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="per_token"):
        export_dynamic(quantize_dynamic(mlp(), DynamicQuantConfig(per_token=True)),
                       tmp_path / "m.onnx", input_shape=(64,))
