"""What ``prune_heads_`` is asked to do (``HeadPruneConfig``) and what it did
(``HeadPruneResult``, one ``LayerPruning`` per layer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torchslim.errors import ConfigError
from torchslim.prune.head_importance import HEAD_IMPORTANCE

__all__ = ["GQA_MODES", "HeadPruneConfig", "HeadPruneResult", "LayerPruning"]

GQA_MODES = ("groups", "queries")


@dataclass(frozen=True, kw_only=True)
class HeadPruneConfig:
    """What to remove: the same share of every layer (``heads``, ``mlp``), or a share of
    the attention + MLP MACs chosen across layers by importance (``macs``)."""

    # uniform: the shares of each layer's attention heads and of its MLP intermediate
    # channels to remove (the same count in each, so the config holds); 0.5 each unless
    # macs is given
    heads: float | None = None
    mlp: float | None = None
    # instead of heads/mlp: the share of attention + MLP MACs to remove, every head (KV
    # group) and channel of every layer ranked together by importance per MAC relative to
    # its layer's total (torchslim.prune.head_allocation); layers end up with different
    # head counts and widths
    macs: float | None = None
    min_heads: int = 1          # macs: query heads every layer keeps at least
    min_mlp: float = 0.05       # macs: share of every layer's MLP channels kept at least
    seq: int = 128              # macs: tokens per sequence the MACs are counted at
    importance: str = "auto"    # l1, l2, taylor, activation; auto: activation with data, else l2
    gqa: str = "groups"         # grouped-query attention: remove whole KV groups, or queries
    batches: int = 8            # data batches the data-based importances read

    def __post_init__(self) -> None:
        if self.macs is None:
            for name in ("heads", "mlp"):
                if getattr(self, name) is None:
                    object.__setattr__(self, name, 0.5)
        elif self.heads is not None or self.mlp is not None:
            raise ConfigError(f"macs={self.macs} with heads={self.heads}, mlp={self.mlp}: pass "
                              "macs= (a share of MACs, split across layers by importance) or "
                              "heads=/mlp= (the same share of every layer), not both")
        for name in ("heads", "mlp", "macs"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not 0 <= value < 1):
                what = {"heads": "each layer's heads", "mlp": "each layer's MLP channels",
                        "macs": "the attention + MLP MACs"}[name]
                raise ConfigError(f"{name}={value} must be in [0, 1): the share of {what} "
                                  "to remove (at least one must stay)")
        if isinstance(self.min_heads, bool) or not isinstance(self.min_heads, int) \
                or self.min_heads < 1:
            raise ConfigError(f"min_heads={self.min_heads!r} must be an integer >= 1: the "
                              "heads every layer keeps at least")
        if not 0 <= self.min_mlp <= 1:
            raise ConfigError(f"min_mlp={self.min_mlp} must be in [0, 1]: the share of every "
                              "layer's MLP channels kept at least (one channel always stays)")
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 1:
            raise ConfigError(f"seq={self.seq!r} must be an integer >= 1: the tokens per "
                              "sequence the MACs are counted at")
        if self.importance != "auto":
            HEAD_IMPORTANCE.get(self.importance)  # unknown -> UnknownNameError listing them
        if self.gqa not in GQA_MODES:
            raise ConfigError(f"gqa={self.gqa!r}; choose one of {', '.join(GQA_MODES)}")
        if self.batches < 1:
            raise ConfigError(f"batches={self.batches} must be >= 1")

    @property
    def allocation(self) -> str:
        """"uniform" (heads/mlp of every layer) or "global" (macs across layers)."""
        return "uniform" if self.macs is None else "global"

    @property
    def prunes_heads(self) -> bool:
        return self.macs is not None or bool(self.heads)

    @property
    def prunes_mlp(self) -> bool:
        return self.macs is not None or bool(self.mlp)


@dataclass
class LayerPruning:
    """What one layer kept and lost (query heads, KV heads, MLP channels: indices)."""

    layer: str
    heads_kept: list[int]
    heads_removed: list[int]
    kv_heads_kept: list[int]
    kv_heads_removed: list[int]
    channels_kept: list[int]
    channels_removed: list[int]

    def describe(self) -> str:
        grouped = (len(self.kv_heads_kept) + len(self.kv_heads_removed)
                   != len(self.heads_kept) + len(self.heads_removed))
        kv = (f" (KV heads kept {self.kv_heads_kept}, removed {self.kv_heads_removed})"
              if grouped else "")
        return (f"{self.layer}: heads kept {self.heads_kept}, removed {self.heads_removed}{kv}; "
                f"MLP channels kept {len(self.channels_kept)} of "
                f"{len(self.channels_kept) + len(self.channels_removed)}")


@dataclass
class HeadPruneResult:
    """What was removed, with attention + MLP sizes measured on the rewritten model."""

    layers: list[LayerPruning]
    importance: str
    params_before: int   # attention + MLP projection parameters (weights and biases)
    params_after: int
    # per layer: (projection weight elements = MACs per token, heads, head_dim)
    shapes_before: list[tuple[int, int, int]] = field(default_factory=list)
    shapes_after: list[tuple[int, int, int]] = field(default_factory=list)
    allocation: str = "uniform"  # or "global": HeadPruneConfig(macs=...)

    def macs(self, seq: int = 128) -> tuple[int, int]:
        """Attention + MLP multiply-accumulates of one sequence of ``seq`` tokens, before
        and after: every projection (``seq * in * out``) plus the attention matmuls
        (``q k^T`` and ``softmax(.) v``: ``2 * heads * seq^2 * head_dim``)."""
        def total(shapes: list[tuple[int, int, int]]) -> int:
            return sum(w * seq + 2 * h * seq * seq * d for w, h, d in shapes)
        return total(self.shapes_before), total(self.shapes_after)

    def mac_ratio(self, seq: int = 128) -> float:
        before, after = self.macs(seq)
        return after / max(before, 1)

    @property
    def param_ratio(self) -> float:
        return self.params_after / max(self.params_before, 1)

    def describe(self) -> str:
        return "\n".join([*(layer.describe() for layer in self.layers),
                          f"attention+MLP parameters {self.param_ratio:.1%} of the original, "
                          f"MACs {self.mac_ratio():.1%} at 128 tokens ({self.importance} "
                          f"importance, {self.allocation} allocation)"])

    def to_dict(self) -> dict[str, Any]:
        before, after = self.macs()
        return {"importance": self.importance, "allocation": self.allocation,
                "params_before": self.params_before,
                "params_after": self.params_after, "param_ratio": round(self.param_ratio, 4),
                "macs_seq128_before": before, "macs_seq128_after": after,
                "mac_ratio_seq128": round(self.mac_ratio(), 4),
                "layers": [vars(layer) for layer in self.layers]}
