"""Pruning: structured channel, attention-head and residual-block removal that really shrinks
the model, N:M and unstructured masks that stay zero, gradual schedules and
sensitivity-guided ratios."""

from torchslim.prune.api import prune_
from torchslim.prune.depth import RemovedBlock, block_importance, remove_blocks_, residual_blocks
from torchslim.prune.graph import ChannelGroup, CouplingGraph
from torchslim.prune.heads import HeadPruneConfig, HeadPruneResult, LayerPruning, prune_heads_
from torchslim.prune.importance import IMPORTANCE
from torchslim.prune.schedule import GradualSparsity, prune_gradually_, sparsity_at
from torchslim.prune.sensitivity import group_sensitivity, sensitivity_ratios
from torchslim.prune.sparsity import SparsityConfig, layer_sparsity, nm_mask, sparsify_
from torchslim.prune.structured import ChannelPruneConfig, PruneResult, prune_channels_

__all__ = ["IMPORTANCE", "ChannelGroup", "ChannelPruneConfig", "CouplingGraph",
           "GradualSparsity", "HeadPruneConfig", "HeadPruneResult", "LayerPruning",
           "PruneResult", "RemovedBlock", "SparsityConfig", "block_importance",
           "group_sensitivity", "layer_sparsity", "nm_mask", "prune_", "prune_channels_",
           "prune_gradually_", "prune_heads_", "remove_blocks_", "residual_blocks",
           "sensitivity_ratios", "sparsify_", "sparsity_at"]
