"""reduce_range: 7-bit weights where x86 u8s8 kernels saturate, decided from the CPU flags,
recorded in the model's record, and what makes the ONNX Runtime artifact exact here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import torchslim
from torchslim.errors import ConfigError
from torchslim.quant import DynamicQuantConfig, QuantConfig, QuantSpec
from torchslim.quant.reduce_range import (cpu_int8_dot_flags, reduced_weight,
                                          resolve_reduce_range)


@pytest.mark.parametrize("machine, flags, expected", [
    ("x86_64", (), True),                   # AVX2 only (this project's EPYC)
    ("x86_64", ("avx512_vnni",), False),
    ("x86_64", ("avx_vnni",), False),
    ("x86_64", ("amx_int8",), False),
    ("x86_64", None, True),                 # flags unreadable: the safe choice
    ("aarch64", (), False),
])
def test_auto_follows_the_cpu(machine: str, flags, expected: bool) -> None:
    reduce, why = resolve_reduce_range("auto", machine=machine, flags=flags)
    assert reduce is expected and "reduce_range='auto'" in why


def test_explicit_values_win_and_bad_values_are_one_line_errors() -> None:
    assert resolve_reduce_range(True, machine="aarch64", flags=())[0] is True
    assert resolve_reduce_range(False, machine="x86_64", flags=())[0] is False
    for bad in ("yes", 1, None):
        with pytest.raises(ConfigError, match="'auto', True or False"):
            QuantConfig(reduce_range=bad)
        with pytest.raises(ConfigError, match="'auto', True or False"):
            DynamicQuantConfig(reduce_range=bad)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512_vnni amx_int8\n")
    assert cpu_int8_dot_flags(str(info)) == ("avx512_vnni", "amx_int8")
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2\n")
    assert cpu_int8_dot_flags(str(info)) == ()
    assert cpu_int8_dot_flags(str(tmp_path / "missing")) is None


def test_only_8bit_signed_weights_shrink() -> None:
    w8 = QuantSpec(bits=8, granularity="per_channel")
    assert (reduced_weight(w8).qmin, reduced_weight(w8).qmax) == (-63, 63)
    assert reduced_weight(QuantSpec(bits=4)) == QuantSpec(bits=4)
    u8 = QuantSpec(bits=8, signed=False, symmetric=False)
    assert reduced_weight(u8) == u8


@pytest.mark.parametrize("reduce", [True, False])
def test_static_and_dynamic_records_hold_the_resolved_value(reduce: bool) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3)).eval()
    calib = [torch.randn(4, 1, 8, 8) for _ in range(2)]
    static = torchslim.quantize(model, QuantConfig(reduce_range=reduce), calib)
    dynamic = torchslim.quantize(model, DynamicQuantConfig(reduce_range=reduce))
    for q, layer in ((static, "0"), (dynamic, "3")):
        assert torchslim.record_of(q).quantization.reduce_range is reduce
        w = q.get_submodule(layer).weight_fake_quant
        assert w.spec.qmax == (63 if reduce else 127)
        fq_weight = w(q.get_submodule(layer).weight.detach())
        steps = (fq_weight / w.scale.reshape(-1, *[1] * (fq_weight.dim() - 1))).round()
        assert steps.abs().max() == (63 if reduce else 127)


def test_auto_artifact_agrees_with_the_fake_quant_model(digits_model, tmp_path: Path) -> None:
    """The ResNet-8 W8A8 of the bug report: with "auto", ONNX Runtime computes what the
    fake-quant model computes on this CPU too."""
    ort = pytest.importorskip("onnxruntime")
    model, data = digits_model
    calib = [x for x, _ in data.train][:4]
    q = torchslim.quantize(model, QuantConfig(), calib)
    path = torchslim.export(q, tmp_path / "q", input_shape=(1, 8, 8))
    x = torch.cat([x for x, _ in data.test])
    with torch.no_grad():
        ref = q(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.99
    assert np.abs(out - ref).max() <= 0.02 * np.abs(ref).max()
