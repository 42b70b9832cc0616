"""A model whose forward takes ``*inputs`` (the usual wrapper around a transformers model):
torch.export and the dynamo exporter want its dynamic shapes as ONE tuple for the ``*inputs``
parameter. Before, torchslim passed one entry per input: both refused ("inputs has 1
elements, but dynamic_shapes has 2"), capture fell back to per-submodule graphs and the
export to TorchScript, and the zoo sweep's BERT ran with every Gemm in float."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from torchslim.capture import capture
from torchslim.capture.inputs import as_example_inputs, per_parameter
from torchslim.exporters import export_onnx
from torchslim.exporters.qdq import export_qdq, ort_fused_ops
from torchslim.quant.api import quantize
from torchslim.quant.config import QuantConfig

ort = pytest.importorskip("onnxruntime")
DIMS = {"inputs_0": {0: "batch", 1: "sequence"}, "inputs_1": {0: "batch", 1: "sequence"}}


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.up, self.down = nn.Linear(32, 64), nn.Linear(64, 32)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(self.emb(ids)))) * mask.unsqueeze(-1)


class Wrapper(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(*inputs)


def _inputs(batch: int, seq: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50, (batch, seq), generator=g), torch.ones(batch, seq)


def test_the_shapes_follow_the_signature() -> None:
    ids, mask = _inputs(2, 7)
    spec = lambda name, value: name   # noqa: E731
    wrapper = Wrapper(Encoder())
    wrapped = per_parameter(wrapper, as_example_inputs((ids, mask), model=wrapper), spec)
    assert wrapped == {"inputs": ("inputs_0", "inputs_1")}   # named as torch.export does
    plain = per_parameter(Encoder(), as_example_inputs((ids, mask), model=Encoder()), spec)
    assert plain == {"ids": "ids", "mask": "mask"}
    keywords = per_parameter(Encoder(), as_example_inputs({"mask": mask, "ids": ids}), spec)
    assert keywords == {"ids": "ids", "mask": "mask"}


def test_a_var_positional_wrapper_is_captured_whole_and_exported_by_dynamo(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = Wrapper(Encoder()).eval()
    assert capture(model, _inputs(2, 7)).method == "export"
    with caplog.at_level(logging.INFO, logger="torchslim.exporters.onnx"):
        path = export_onnx(model, tmp_path / "fp32.onnx", example_inputs=_inputs(2, 7),
                           dynamic_dims=DIMS)
    assert "Wrapper exported by the dynamo exporter" in caplog.text
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, seq in ((1, 5), (3, 11)):   # one file, two sequence lengths
        ids, mask = _inputs(batch, seq, seed=seq)
        got = session.run(None, {"inputs_0": ids.numpy(), "inputs_1": mask.numpy()})[0]
        np.testing.assert_allclose(got, model(ids, mask).detach().numpy(), atol=1e-5)


def test_its_static_int8_runs_integer_matmuls(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Wrapper(Encoder()).eval()
    calibration = [(_inputs(4, 9, seed=i), torch.zeros(4)) for i in range(4)]
    prepared = quantize(model, QuantConfig(), calibration=calibration, num_batches=4)
    path = export_qdq(prepared, tmp_path / "int8.onnx", example_inputs=_inputs(2, 7),
                      dynamic_dims=DIMS)
    ops = ort_fused_ops(path)
    assert not {"Gemm", "MatMul", "FusedMatMul"} & set(ops), ops   # no float matmul left
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids, mask = _inputs(3, 13, seed=1)
    got = session.run(None, {"inputs_0": ids.numpy(), "inputs_1": mask.numpy()})[0]
    want = model(ids, mask).detach().numpy()
    cosine = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
    assert cosine > 0.99
