"""``ChannelPruneConfig``: what structured channel pruning removes, validated once. Its
own module so that the planner (which reads it) and ``structured`` (which runs it) both
import it and not each other."""

from __future__ import annotations

from dataclasses import dataclass

from torchslim.errors import ConfigError
from torchslim.prune.depth import BLOCK_IMPORTANCE
from torchslim.prune.importance import IMPORTANCE

__all__ = ["SCOPES", "ChannelPruneConfig"]

SCOPES = ("global", "uniform")


@dataclass(frozen=True, kw_only=True)
class ChannelPruneConfig:
    """What to remove. Give exactly one of ``ratio``, ``target_macs``, ``target_params``
    (or per-group ``ratios``, e.g. from ``sensitivity_ratios``)."""

    ratio: float | None = None          # share of each group's channels to remove
    target_macs: float | None = None    # keep this fraction of the MACs (0.5 = 2x fewer)
    target_params: float | None = None  # keep this fraction of the parameters
    ratios: dict[str, float] | None = None  # group name -> share to remove
    importance: str = "l2"              # l1, l2, bn, taylor
    scope: str = "global"               # rank channels across groups, or the same share each
    round_to: int | None = None         # kept channel counts are multiples of this
    protected: tuple[str, ...] = ()     # layers whose output channels stay (stem, classifier)
    max_ratio: float = 0.9              # never remove more than this share of one group
    taylor_batches: int = 8             # batches for the Taylor gradients
    blocks: int | tuple[str, ...] = 0   # residual blocks to remove first: a count or names
    block_importance: str = "loss"      # loss (val loss when bypassed) or residual
    # protect the groups whose pruning breaks the forward (a size stored in the model, a
    # layer Torch-Pruning cannot rewrite) and prune the rest; False: fail naming them
    auto_protect: bool = True

    def __post_init__(self) -> None:
        given = [n for n in ("ratio", "target_macs", "target_params", "ratios")
                 if getattr(self, n) is not None]
        if len(given) != 1:
            raise ConfigError(f"give exactly one of ratio, target_macs, target_params, ratios "
                              f"(got {', '.join(given) or 'none'})")
        for name in ("target_macs", "target_params"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                what = "MACs" if name == "target_macs" else "parameters"
                raise ConfigError(f"{name}={value} must be in (0, 1]: the fraction to keep "
                                  f"(0.5 halves the {what})")
        for value in [self.ratio, *(self.ratios or {}).values()]:
            if value is not None and not 0 <= value < 1:
                raise ConfigError(f"ratio={value} must be in [0, 1): the share of channels to remove")
        if self.scope not in SCOPES:
            raise ConfigError(f"scope={self.scope!r}; choose one of {SCOPES}")
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError(f"round_to={self.round_to} must be >= 1")
        if not 0 < self.max_ratio < 1:
            raise ConfigError(f"max_ratio={self.max_ratio} must be in (0, 1)")
        IMPORTANCE.get(self.importance)  # unknown name -> UnknownNameError listing the known
        if isinstance(self.blocks, int) and self.blocks < 0:
            raise ConfigError(f"blocks={self.blocks} must be >= 0: residual blocks to remove")
        if self.block_importance not in BLOCK_IMPORTANCE:
            raise ConfigError(f"block_importance={self.block_importance!r}; choose one of "
                              f"{BLOCK_IMPORTANCE}")
