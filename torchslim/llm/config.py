"""``LLMQuantConfig``: what ``quantize_llm`` does to a causal LM, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from torchslim.errors import ConfigError, UnknownNameError
from torchslim.quant.affine import QuantSpec
from torchslim.quant.config import weight_only_spec

__all__ = ["LLMQuantConfig", "METHODS"]

METHODS = ("rtn", "gptq", "awq", "smoothquant")


@dataclass(frozen=True, kw_only=True)
class LLMQuantConfig:
    """One quantization recipe for the decoder's ``nn.Linear`` layers.

    ``rtn``, ``gptq`` and ``awq`` are weight-only (activations stay float); ``smoothquant``
    is W8A8: int8 per-channel weights and int8 per-token dynamic activations.
    """

    method: str = "rtn"  # one of METHODS
    bits: int = 4  # 3, 4 or 8 (smoothquant: 8)
    group_size: int | None = 128  # input elements per scale; None = one scale per output row
    symmetric: bool = True  # z = 0 (signed grid) or an asymmetric grid with a zero point
    lm_head: bool = True  # int8 per-row output projection (and the tied embedding table)
    skip: tuple[str, ...] = ()  # Linear names or regexes kept in float
    # calibration (gptq, awq, smoothquant): n_samples windows of seq_len tokens
    n_samples: int = 64
    seq_len: int = 512
    batch_size: int = 8  # windows per forward during calibration (bounds activation memory)
    clip_search: bool = True  # gptq / awq: per-group clipping that lowers the weighted error
    # gptq
    block_size: int = 128  # columns per lazy-update block
    damp: float = 0.01  # lambda = damp * mean(diag H)
    act_order: bool = False  # columns by descending diag(H); group scales fixed up front
    # awq
    grid: int = 10  # alpha in {0, 1/grid, ..., (grid-1)/grid}
    awq_tokens: int = 1024  # calibration rows kept per layer input for the scale search
    # smoothquant
    alpha: float = 0.5  # migration strength: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UnknownNameError(f"method={self.method!r} is not one of {', '.join(METHODS)}")
        if self.bits not in (3, 4, 8):
            raise ConfigError(f"bits={self.bits!r} must be 3, 4 or 8")
        if self.method == "smoothquant" and (self.bits != 8 or self.group_size is not None
                                             or not self.symmetric):
            raise ConfigError("smoothquant is W8A8 with symmetric per-channel weights: use "
                              "bits=8, group_size=None, symmetric=True")
        if self.group_size is not None and (not isinstance(self.group_size, int)
                                            or self.group_size < 1):
            raise ConfigError(f"group_size={self.group_size!r} must be a positive integer or "
                              "None (per channel)")
        if self.method == "gptq" and self.group_size is not None and (
                self.block_size % self.group_size):
            raise ConfigError(f"block_size={self.block_size} must be a multiple of "
                              f"group_size={self.group_size} for gptq")
        for name, value, lo, hi in (("damp", self.damp, 0.0, 1.0), ("alpha", self.alpha, 0.0, 1.0)):
            if not lo <= value <= hi:
                raise ConfigError(f"{name}={value!r} must be in [{lo}, {hi}]")
        for name in ("n_samples", "seq_len", "batch_size", "block_size", "grid", "awq_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        if isinstance(self.skip, str):
            object.__setattr__(self, "skip", (self.skip,))

    @property
    def needs_calibration(self) -> bool:
        return self.method != "rtn"

    @property
    def spec(self) -> QuantSpec:
        """The weight grid: signed symmetric (z = 0) or unsigned with a zero point."""
        return weight_only_spec(bits=self.bits, group_size=self.group_size,
                                symmetric=self.symmetric)

    @property
    def label(self) -> str:
        """``gptq-int4-g64``-style name (``pc`` = per channel)."""
        if self.method == "smoothquant":
            return "smoothquant-w8a8"
        grid = "pc" if self.group_size is None else f"g{self.group_size}"
        return f"{self.method}-int{self.bits}-{grid}{'' if self.symmetric else '-asym'}"
