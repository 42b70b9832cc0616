"""``torchslim.export`` picks the writer from the model's record: each kind of model comes out
as the graph its runtime kernels need, and no kind reaches another kind's writer."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import torchslim
from torchslim.errors import ConfigError
from torchslim.exporters import export_qdq
from torchslim.quant import FakeQuantize, QuantSpec
from torchslim.quant.modules import to_quant_module
from torchslim.zoo import build_model

SHAPE = (1, 28, 28)
STATIC_OPS = {"QuantizeLinear", "DequantizeLinear"}
DYNAMIC_OPS = {"DynamicQuantizeLinear", "MatMulInteger"}


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    """The same float resnet8, quantized each way (its Linear head is what dynamic and
    weight-only quantization change; static quantization changes every layer)."""
    torch.manual_seed(0)
    model = build_model("resnet8", width=8).eval()
    calib = [(torch.randn(16, *SHAPE), torch.zeros(16, dtype=torch.long)) for _ in range(2)]
    return {"float": model,
            "static": torchslim.quantize(model, torchslim.QuantConfig(), calib, num_batches=2),
            "dynamic": torchslim.quantize(model, torchslim.DynamicQuantConfig()),
            "weight-only": torchslim.quantize(model, torchslim.WeightOnlyConfig(group_size=None))}


def _ops(path: Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("kind, present, absent", [
    ("float", set(), STATIC_OPS | DYNAMIC_OPS),
    ("static", STATIC_OPS, DYNAMIC_OPS),
    ("dynamic", DYNAMIC_OPS, STATIC_OPS),
    ("weight-only", {"DequantizeLinear"}, {"QuantizeLinear"} | DYNAMIC_OPS),
])
def test_each_kind_exports_the_graph_of_its_kernels(models, tmp_path: Path, kind: str,
                                                    present: set[str], absent: set[str]) -> None:
    path = torchslim.export(models[kind], tmp_path / kind, input_shape=SHAPE)
    ops = _ops(path)
    assert path.suffix == ".onnx" and present <= set(ops) and not absent & set(ops), ops
    if kind == "static":   # every conv reads a dequantized int8 weight
        assert ops["DequantizeLinear"] > ops["Conv"] == 9
    if kind in ("dynamic", "weight-only"):   # only the head: the convs stay float
        assert ops["Conv"] == 9
        assert ops.get("DequantizeLinear", 0) == (1 if kind == "weight-only" else 0)
        assert sum(ops[op] for op in DYNAMIC_OPS) == (2 if kind == "dynamic" else 0)


def test_static_model_to_openvino_keeps_int8(models, tmp_path: Path) -> None:
    ov = pytest.importorskip("openvino")
    xml = torchslim.export(models["static"], tmp_path / "q", input_shape=SHAPE, format="openvino")
    assert xml.suffix == ".xml" and xml.with_suffix(".bin").is_file()
    ops = ov.Core().read_model(str(xml)).get_ops()
    kinds = Counter(op.get_type_name() for op in ops)
    assert kinds["FakeQuantize"] >= 9 and kinds["Convolution"] == 9
    assert any(op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8
               for op in ops)   # the weights stay int8 in the IR
    session = torchslim.load_session(xml, threads=1)
    assert session.runtime == "openvino" and session.precision == "int8"
    x = np.random.default_rng(0).standard_normal((2, *SHAPE)).astype(np.float32)
    assert session.run(x).shape == (2, 10)


def test_a_dynamic_model_can_not_reach_the_qdq_writer(models, tmp_path: Path) -> None:
    # its layers hold weight quantizers like a static model's; the record tells them apart
    with pytest.raises(ConfigError, match="export_qdq writes models quantized with QuantConfig.*"
                                          "DynamicQuantConfig"):
        export_qdq(models["dynamic"], tmp_path / "m.onnx", input_shape=SHAPE)


def test_fake_quant_layers_without_a_record_are_refused(tmp_path: Path) -> None:
    model = torch.nn.Sequential(to_quant_module(torch.nn.Linear(4, 2), FakeQuantize(QuantSpec())))
    with pytest.raises(ConfigError, match="no torchslim record"):
        torchslim.export(model, tmp_path / "m", input_shape=(4,))


def test_unknown_format_names_the_choices(models, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="openvino"):
        torchslim.export(models["float"], tmp_path / "m", input_shape=SHAPE, format="trt")
