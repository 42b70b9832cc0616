"""Between the loaders' normalised tensors ``(x - mean) / std`` and pixels in [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from torchslim.errors import ConfigError

__all__ = ["Stat", "channel_stat", "check_images", "to_pixels", "from_pixels"]

Stat = float | Sequence[float]   # DatasetInfo.mean / std: one float, or one per channel


def channel_stat(value: Stat, channels: int, what: str) -> np.ndarray:
    """A float or one value per channel -> (1, C, 1, 1) float32."""
    v = np.asarray(value, dtype=np.float32).reshape(-1)
    if v.size not in (1, channels):
        raise ConfigError(f"{what} has {v.size} values for {channels}-channel images; "
                          "pass one float or one per channel (DatasetInfo.mean/std)")
    if what == "std" and np.any(v <= 0):
        raise ConfigError(f"std={value} must be > 0")
    return np.broadcast_to(v, (channels,)).reshape(1, channels, 1, 1).copy()


def check_images(x: np.ndarray) -> None:
    if x.ndim != 4:
        raise ConfigError(f"robustness needs images (N, C, H, W), got shape {x.shape}; "
                          "corruptions and pixel-space attacks apply to image classifiers")


def to_pixels(x: np.ndarray, mean: Stat, std: Stat) -> np.ndarray:
    """Normalised images -> pixels in [0, 1] (clipped: float rounding can leave [0, 1])."""
    check_images(x)
    c = x.shape[1]
    return np.clip(x * channel_stat(std, c, "std") + channel_stat(mean, c, "mean"), 0.0, 1.0)


def from_pixels(p: np.ndarray, mean: Stat, std: Stat) -> np.ndarray:
    c = p.shape[1]
    return ((p - channel_stat(mean, c, "mean")) / channel_stat(std, c, "std")).astype(np.float32)
