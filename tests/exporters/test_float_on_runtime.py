"""An int8 weight whose input is not quantized runs in float on ONNX Runtime (DQ -> Gemm):
``float_weighted_ops`` finds it, and ``export_qdq`` says so instead of shipping a slower
"INT8" artifact silently (the zoo sweep's per-submodule BERT: 12 int8 weights, every Gemm
float, 0.55x of FP32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from torchslim.exporters.qdq import float_weighted_ops

pytest.importorskip("onnxruntime")


def _gemm(path: Path, *, quantize_input: bool) -> Path:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.integers(-100, 100, (8, 16)).astype(np.int8), "w_q"),
             numpy_helper.from_array(np.array(0.01, np.float32), "w_s"),
             numpy_helper.from_array(np.array(0, np.int8), "w_z"),
             numpy_helper.from_array(np.array(0.02, np.float32), "x_s"),
             numpy_helper.from_array(np.array(128, np.uint8), "x_z")]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"])]
    x = "x"
    if quantize_input:
        nodes += [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["x_q"]),
                  helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_z"], ["x_dq"])]
        x = "x_dq"
    nodes.append(helper.make_node("Gemm", [x, "w"], ["y"], name="fc", transB=1))
    graph = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
                              inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_a_dequantized_weight_on_a_float_input_is_found(tmp_path: Path) -> None:
    assert float_weighted_ops(_gemm(tmp_path / "float.onnx", quantize_input=False)) == ["fc"]
    assert float_weighted_ops(_gemm(tmp_path / "int8.onnx", quantize_input=True)) == []


def test_export_qdq_warns_when_the_runtime_keeps_int8_weights_in_float(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from torchslim.exporters.qdq import _warn_float_on_runtime

    with caplog.at_level("WARNING", logger="torchslim.exporters.qdq"):
        _warn_float_on_runtime(_gemm(tmp_path / "int8.onnx", quantize_input=True), 1)
        assert not caplog.records
        _warn_float_on_runtime(_gemm(tmp_path / "float.onnx", quantize_input=False), 1)
    assert "1 of the 1 int8 weights of float.onnx run in float on ONNX Runtime (fc)" in caplog.text
