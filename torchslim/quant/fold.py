"""BatchNorm folding: ``conv -> bn`` becomes one conv with rescaled weights and a bias.

Integer runtimes have no BatchNorm kernel between a quantized conv and its requantization,
so the weights that get quantized must already include BN's scale. Per output channel c:
``w'[c] = w[c] * gamma[c] / sqrt(var[c] + eps)`` and
``b'[c] = (b[c] - mean[c]) * gamma[c] / sqrt(var[c] + eps) + beta[c]``.
Folding uses the running statistics, i.e. eval-mode BN (PTQ, and QAT with frozen BN).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, fx, nn
from torch.nn import functional as F

from torchslim.capture.ops import node_module
from torchslim.quant.bias_grid import GridBias
from torchslim.quant.modules import to_quant_module

__all__ = ["fold_bn_weights", "fold_batchnorm_", "ConvBn", "QuantConvBn", "fold_simulated_bn_"]

_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def fold_bn_weights(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold ``bn`` (running stats, affine or not) into ``layer``'s weight and bias in place."""
    assert bn.running_mean is not None and bn.running_var is not None
    weight = layer.weight
    std = torch.sqrt(bn.running_var.double() + bn.eps)  # (C,)
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(std)
    factor = gamma / std  # (C,)
    shape = (-1,) + (1,) * (weight.dim() - 1)  # (C, 1, 1, 1) for Conv2d
    new_weight = (weight.double() * factor.reshape(shape)).to(weight.dtype)
    bias = layer.bias.double() if layer.bias is not None else torch.zeros_like(std)
    new_bias = ((bias - bn.running_mean.double()) * factor + beta).to(weight.dtype)
    layer.weight = nn.Parameter(new_weight, requires_grad=weight.requires_grad)
    layer.bias = nn.Parameter(new_bias, requires_grad=weight.requires_grad)


def _foldable(gm: fx.GraphModule, bn_node: fx.Node, calls: dict[str, int]) -> fx.Node | None:
    """The layer node that ``bn_node`` may absorb, or None."""
    bn = node_module(gm, bn_node)
    if not isinstance(bn, _BN) or not bn.track_running_stats or bn.running_mean is None:
        return None
    if not bn_node.args or not isinstance(bn_node.args[0], fx.Node):
        return None
    prev = bn_node.args[0]
    layer = node_module(gm, prev)
    if not isinstance(layer, _FOLDABLE) or layer.weight.shape[0] != bn.num_features:
        return None
    # Only when the layer's output feeds this BN alone and the layer and BN are each
    # called once: otherwise another consumer would see the folded (changed) values.
    if len(prev.users) != 1 or calls[str(prev.target)] != 1 or calls[str(bn_node.target)] != 1:
        return None
    return prev


def fold_batchnorm_(gm: fx.GraphModule, *, simulate: bool = False) -> list[str]:
    """Fold every foldable BN of ``gm`` into its producer; returns the folded BN names.

    The graph's BN nodes are removed and their modules deleted from ``gm`` (the layer
    modules are changed in place: trace a copy). With ``simulate``, a conv keeps its BN
    inside a ``ConvBn`` at the conv's name instead (QAT with BN statistics); a Linear is
    always folded.
    """
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    folded = []
    for node in list(gm.graph.nodes):
        prev = _foldable(gm, node, calls)
        if prev is None:
            continue
        layer, bn = gm.get_submodule(str(prev.target)), gm.get_submodule(str(node.target))
        if simulate and isinstance(layer, (nn.Conv1d, nn.Conv2d)):
            _replace(gm, str(prev.target), ConvBn(layer, bn))
        else:
            fold_bn_weights(layer, bn)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        gm.delete_submodule(str(node.target))
        folded.append(str(node.target))
    gm.graph.lint()
    gm.recompile()
    return folded


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


# --- simulated folding for QAT (Jacob et al. 2018; Krishnamoorthi 2018, section 3.2) -----


class ConvBn(nn.Module):
    """A conv and the BN that follows it, kept apart for QAT; ``prepare`` turns it into a
    ``QuantConvBn`` (quantized) or folds it back (float)."""

    def __init__(self, conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class QuantConvBn(GridBias, nn.Module):
    """Conv + BN whose weights are quantized as they will be once folded.

    The weight seen by the quantizer is ``w * gamma / sqrt(running_var + eps)`` (the
    deployed, folded weight); the conv output is divided by that factor again so that BN
    can normalise with the batch statistics while training. With ``freeze_bn`` (or in
    eval mode) BN uses its running statistics, which makes the output exactly the folded
    conv's; ``folded()`` then returns that conv as a plain ``QuantConv*``, which inherits
    the input-quantizer link and from then on adds its bias on the int32 grid (while BN
    is simulated the bias stays float: it is not the deployed bias yet).
    """

    def __init__(self, conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm,
                 weight_fake_quant: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn, self.weight_fake_quant = conv, bn, weight_fake_quant
        self.freeze_bn = False

    def _factor(self) -> Tensor:
        bn = self.bn
        std = torch.sqrt(bn.running_var + bn.eps)  # (C,)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
        return gamma / std  # (C,)

    def forward(self, x: Tensor) -> Tensor:
        conv, bn = self.conv, self.bn
        factor = self._factor()
        w_shape = (-1,) + (1,) * (conv.weight.dim() - 1)  # (C, 1, 1, 1) for Conv2d
        weight = self.weight_fake_quant(conv.weight * factor.reshape(w_shape))
        y = conv._conv_forward(x, weight, None)  # (B, C, *spatial)
        y_shape = (1, -1) + (1,) * (y.dim() - 2)
        y = y / factor.reshape(y_shape)
        if conv.bias is not None:
            y = y + conv.bias.reshape(y_shape)
        use_batch_stats = self.training and not self.freeze_bn
        return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                            use_batch_stats, bn.momentum if bn.momentum is not None else 0.1,
                            bn.eps)

    @torch.no_grad()
    def folded(self) -> nn.Module:
        """The equivalent ``QuantConv*`` with BN folded in (sharing ``weight_fake_quant``)."""
        conv = copy.deepcopy(self.conv)
        fold_bn_weights(conv, self.bn)
        folded = to_quant_module(conv, self.weight_fake_quant)
        folded.link_input_(self.input_quantizer)
        return folded


def fold_simulated_bn_(model: nn.Module) -> list[str]:
    """Replace every ``QuantConvBn`` / ``ConvBn`` by its folded conv, in place (the end of
    QAT with simulated folding); returns their names."""
    names = []
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantConvBn):
            new = module.folded()
        elif isinstance(module, ConvBn):
            new = copy.deepcopy(module.conv)
            fold_bn_weights(new, module.bn)
        else:
            continue
        _replace(model, name, new.train(module.training))
        names.append(name)
    return names
