"""BatchNorm folding into the preceding conv / linear."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from torchslim.quant.fold import fold_batchnorm_, fold_bn_weights
from torchslim.quant.graph import trace


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.randn(n, generator=g))
                m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


@pytest.mark.parametrize("layer, bn, shape", [
    (nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6), (2, 3, 7, 7)),
    (nn.Conv2d(6, 6, 3, groups=6), nn.BatchNorm2d(6, affine=False), (2, 6, 7, 7)),
    (nn.Conv1d(3, 5, 3), nn.BatchNorm1d(5), (2, 3, 9)),
    (nn.Linear(4, 5), nn.BatchNorm1d(5), (3, 4)),
], ids=["conv2d", "depthwise-no-affine", "conv1d", "linear"])
def test_folded_weights_match_layer_then_bn(layer: nn.Module, bn: nn.Module,
                                            shape: tuple[int, ...]) -> None:
    ref = _randomize_bn(nn.Sequential(layer, bn))
    x = torch.randn(shape)
    expected = ref(x)
    fold_bn_weights(layer, bn)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


class Shared(nn.Module):
    """conv1's output feeds bn1 AND the residual: folding would change the residual."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)
        self.conv2, self.bn2 = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv1(x)
        return self.bn1(y) + y + self.bn2(self.conv2(x))


def test_only_sole_consumer_bns_are_folded() -> None:
    model = _randomize_bn(Shared())
    x = torch.randn(2, 2, 4, 4)
    expected = model(x)
    gm, _ = trace(model)
    assert fold_batchnorm_(gm) == ["bn2"]
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["conv1", "bn1", "conv2"]
    torch.testing.assert_close(gm(x), expected, atol=1e-5, rtol=1e-5)


def test_simulated_folding_matches_the_folded_conv_once_bn_is_frozen() -> None:
    from torchslim.quant import FakeQuantize, QuantSpec
    from torchslim.quant.fold import QuantConvBn

    conv, bn = nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4)
    _randomize_bn(nn.Sequential(conv, bn))
    fq = FakeQuantize(QuantSpec(granularity="per_channel"))
    sim = QuantConvBn(conv, bn, fq).eval()
    x = torch.randn(8, 3, 6, 6)
    eval_out = sim(x)  # observer sees the folded weight; qparams from it
    fq.enable_observer(False)
    folded = sim.folded().eval()
    torch.testing.assert_close(folded(x), sim(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eval_out, sim(x), atol=1e-5, rtol=1e-5)
    sim.train()
    batch_out = sim(x)  # batch statistics: normalised per channel
    assert batch_out.mean(dim=(0, 2, 3)).abs().max() < 1e-3 + bn.bias.abs().max()
    assert not torch.allclose(batch_out, eval_out, atol=1e-3)
    sim.freeze_bn = True  # training continues with the (just updated) running statistics
    torch.testing.assert_close(sim(x), sim.folded()(x), atol=1e-5, rtol=1e-5)
