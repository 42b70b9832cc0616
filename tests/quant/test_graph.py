"""Tracing with fallback: untraceable submodules become float leaves, never a failure."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from torchslim import record_of
from torchslim.errors import UnsupportedModelError
from torchslim.quant import QuantConfig, prepare
from torchslim.quant.graph import trace


class DataDependent(nn.Module):
    """fx cannot trace a Python ``if`` on a tensor value."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 0:
            return self.conv(x)
        return -x


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.block3 = nn.Sequential(nn.Identity(), DataDependent())
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block3(self.stem(x)))


class RootBranches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) if x.mean() > 0 else x


def test_innermost_failing_submodule_becomes_a_leaf_with_a_warning() -> None:
    with pytest.warns(UserWarning, match=r"kept in float: block3\.1 \(cannot trace: "):
        gm, leaves = trace(Net())
    assert leaves == ["block3.1"] and "TraceError" in leaves[0].reason
    called = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert "block3.1" in called and "block3.1.conv" not in called
    assert gm(torch.randn(2, 1, 6, 6)).shape == (2, 2, 6, 6)


def test_traced_module_computes_the_same_function() -> None:
    torch.manual_seed(0)
    net = Net().eval()
    with pytest.warns(UserWarning):
        gm, _ = trace(net)
    x = torch.randn(2, 1, 6, 6)
    torch.testing.assert_close(gm(x), net(x))


def test_prepare_keeps_the_untraceable_block_float_and_quantizes_the_rest() -> None:
    # the float block holds 77 % of the MACs: accepted only with a lower min_coverage
    with pytest.warns(UserWarning, match="block3.1"):
        prepared = prepare(Net(), QuantConfig(min_coverage=0.2),
                           example_inputs=(torch.randn(2, 1, 6, 6),))
    info = record_of(prepared).quantization
    assert info.quantized == ("stem.0", "head")
    assert info.kept_float[0][0] == "block3.1" and "cannot trace" in info.kept_float[0][1]
    assert isinstance(prepared.get_submodule("block3.1.conv"), nn.Conv2d)
    assert not hasattr(prepared.get_submodule("block3.1.conv"), "weight_fake_quant")


def test_an_untraceable_root_is_one_clear_error() -> None:
    message = r"cannot trace RootBranches: .*skip=\[\.\.\.\]"
    with pytest.raises(UnsupportedModelError, match=message):
        trace(RootBranches())
