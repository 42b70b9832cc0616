"""Issue 15's acceptance on the three transformer families (BERT-, GPT-2- and Llama-like,
small random configs): one ONNX file serves two sequence lengths, and the dynamic int8 and
static W8A8 artifacts run in ONNX Runtime with torchslim's torch model's outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

import torchslim  # noqa: E402
from torchslim.quant.config import DynamicQuantConfig, QuantConfig  # noqa: E402
from torchslim.runtime import open as open_session  # noqa: E402
from torchslim.transformers import TextModel, dynamic_dims, tiny_model  # noqa: E402

FAMILIES = ("bert", "gpt2", "llama")


def _batch(seq: int, seed: int, family: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {"input_ids": torch.randint(1, 128, (2, seq), generator=g),
             "attention_mask": torch.ones(2, seq, dtype=torch.int64)}
    batch["attention_mask"][1, seq - 2:] = 0      # a padded row
    if family == "bert":
        batch["token_type_ids"] = torch.zeros(2, seq, dtype=torch.int64)
    return batch


def _model(family: str) -> TextModel:
    hf = tiny_model(family)
    return TextModel(hf.base_model, output="embedding", pooling="mean").eval()


def _check(q: torch.nn.Module, path: Path, family: str, atol: float) -> None:
    session = open_session(path, threads=1)
    for seq in (5, 17):                           # one file, two sequence lengths
        batch = _batch(seq, seq, family)
        with torch.no_grad():
            want = q(**batch).numpy()
        got = session.run({k: v.numpy() for k, v in batch.items()})
        assert got.shape == want.shape == (2, 64)
        np.testing.assert_allclose(got, want, atol=atol, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_dynamic_int8_artifact_matches_torch_at_two_lengths(family: str, tmp_path: Path) -> None:
    q = torchslim.quantize(_model(family), DynamicQuantConfig())
    example = _batch(9, 0, family)
    path = torchslim.export(q, tmp_path / "dyn.onnx", example_inputs=example,
                            dynamic_dims=dynamic_dims(example))
    ops = {n.op_type for n in __import__("onnx").load(str(path)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}, ops
    _check(q, path, family, atol=2e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_static_w8a8_artifact_matches_torch_at_two_lengths(family: str, tmp_path: Path) -> None:
    calibration = [_batch(s, 100 + s, family) for s in (6, 11, 16, 8)]
    q = torchslim.quantize(_model(family), QuantConfig(), calibration=calibration,
                           num_batches=len(calibration))
    example = _batch(9, 0, family)
    path = torchslim.export(q, tmp_path / "static.onnx", example_inputs=example,
                            dynamic_dims=dynamic_dims(example))
    ops = {n.op_type for n in __import__("onnx").load(str(path)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    _check(q, path, family, atol=2e-2)
