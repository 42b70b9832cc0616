"""Dynamic LSTM export: each ONNX LSTM becomes com.microsoft's DynamicQuantizeLSTM with
int8 W / R, and ONNX Runtime computes what the torch simulation computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from torchslim.exporters import export_dynamic, export_onnx
from torchslim.quant import DynamicQuantConfig, quantize_dynamic

ort = pytest.importorskip("onnxruntime")


def run_ort(path: Path, x: torch.Tensor) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_ort_dynamic_quantize_lstm_matches_torch(tmp_path: Path, tiny_lstm, bidirectional: bool,
                                                 batch_first: bool) -> None:
    torch.manual_seed(0)
    q = quantize_dynamic(tiny_lstm(bidirectional, batch_first).eval(),
                         DynamicQuantConfig(layers=(nn.Linear, nn.LSTM)))
    path = export_dynamic(q, tmp_path / "m.onnx", input_shape=(12, 16))
    proto = onnx.load(str(path))
    ops = [(n.op_type, n.domain) for n in proto.graph.node]
    assert ops.count(("DynamicQuantizeLSTM", "com.microsoft")) == 2  # one node per layer
    assert "LSTM" not in {op for op, _ in ops}
    assert any(o.domain == "com.microsoft" for o in proto.opset_import)
    x = torch.randn(256, 12, 16)
    with torch.no_grad():
        ref = q(x).numpy()
    out = run_ort(path, x)
    # bitwise equal up to ORT's float sigmoid / tanh rounding, which now and then moves an
    # element of h_{t-1} across a u8 rounding boundary (~1e-3 relative at most)
    assert np.abs(out - ref).max() <= 1e-2 * np.abs(ref).max()
    assert (out.argmax(-1) == ref.argmax(-1)).mean() >= 0.99


def test_lstm_weights_are_int8_in_the_op_layout(tmp_path: Path, tiny_lstm) -> None:
    torch.manual_seed(0)
    model = tiny_lstm(bidirectional=True).eval()
    fp32 = onnx.load(str(export_onnx(model, tmp_path / "fp32.onnx", input_shape=(12, 16))))
    q = quantize_dynamic(model, DynamicQuantConfig(layers=(nn.Linear, nn.LSTM)))
    graph = onnx.load(str(export_dynamic(q, tmp_path / "q.onnx", input_shape=(12, 16)))).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    fp32_inits = {i.name: numpy_helper.to_array(i) for i in fp32.graph.initializer}
    float_bytes = sum(fp32_inits[n.input[k]].nbytes for n in fp32.graph.node
                      if n.op_type == "LSTM" for k in (1, 2))
    lstms = [n for n in graph.node if n.op_type == "DynamicQuantizeLSTM"]
    int8_bytes = 0
    for node, in_size in zip(lstms, (16, 64)):
        w, r = inits[node.input[1]], inits[node.input[2]]
        assert w.dtype == r.dtype == np.int8
        assert w.shape == (2, in_size, 128) and r.shape == (2, 32, 128)  # [D, in, 4H]
        assert inits[node.input[8]].shape == inits[node.input[10]].shape == (2, 128)
        assert inits[node.input[9]].dtype == np.int8 and not inits[node.input[9]].any()
        int8_bytes += w.nbytes + r.nbytes
    assert int8_bytes * 4 == float_bytes
