"""Deterministic image corruptions at severities 1-5, applied in pixel space.

The data loaders yield normalised images ``(x - mean) / std``; ``corrupt`` undoes that,
corrupts the pixels in [0, 1], clips, and normalises again, so a corruption means the same
thing whatever the dataset's statistics. Severity 0 returns the input unchanged. Every
random draw comes from a generator seeded by ``(seed, corruption, severity)``: the same
seed gives the same images in any process, a different seed different noise and shifts.

A corruption is ``fn(pixels, level, rng) -> pixels`` on ``(N, C, H, W)`` float32 arrays,
registered in ``CORRUPTIONS`` with its five levels (one per severity, mildest first).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from torchslim._registry import Registry
from torchslim.errors import ConfigError
from torchslim.evaluation.robustness._jpeg import jpeg_quantize
from torchslim.evaluation.robustness._pixels import Stat, check_images, from_pixels, to_pixels

__all__ = ["CORRUPTIONS", "Corruption", "corrupt", "corrupt_pixels", "corruption_names"]


@dataclass(frozen=True)
class Corruption:
    """``apply(pixels, level, rng)`` and the level used at each severity 1..5."""

    apply: Callable[[np.ndarray, float, np.random.Generator], np.ndarray]
    levels: tuple[float, float, float, float, float]
    unit: str   # what a level means, for reports ("sigma", "quality", ...)


CORRUPTIONS: Registry[Corruption] = Registry("corruption")


def corruption_names() -> list[str]:
    return CORRUPTIONS.names()


def _rng(seed: int, name: str, severity: int) -> np.random.Generator:
    # crc32, not hash(): str hashes change between processes
    return np.random.default_rng([seed, zlib.crc32(name.encode()), severity])


def _level(name: str, severity: int) -> float | None:
    """The level of ``name`` at ``severity``; None at severity 0 (the identity)."""
    corruption = CORRUPTIONS.get(name)
    if not (isinstance(severity, (int, np.integer)) and 0 <= severity <= len(corruption.levels)):
        raise ConfigError(f"severity={severity!r} must be an integer in "
                          f"[0, {len(corruption.levels)}]")
    return None if severity == 0 else corruption.levels[severity - 1]


def corrupt_pixels(pixels: np.ndarray, name: str, severity: int, *, seed: int = 0) -> np.ndarray:
    """``pixels`` (N, C, H, W) in [0, 1] under corruption ``name`` at ``severity`` (0-5)."""
    check_images(pixels)
    level = _level(name, severity)
    if level is None:
        return pixels.copy()
    out = CORRUPTIONS.get(name).apply(pixels.astype(np.float32, copy=False), level,
                                      _rng(seed, name, int(severity)))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def corrupt(x: np.ndarray, name: str, severity: int, *, mean: Stat, std: Stat,
            seed: int = 0) -> np.ndarray:
    """Normalised images ``x`` (N, C, H, W) -> the same images corrupted, normalised again.

    ``mean``/``std`` are the loader's normalisation (``DatasetInfo.mean``/``std``).
    Severity 0 returns a copy of ``x`` exactly, without the round trip through pixels.
    """
    x = np.asarray(x, dtype=np.float32)
    check_images(x)
    if _level(name, severity) is None:
        return x.copy()
    return from_pixels(corrupt_pixels(to_pixels(x, mean, std), name, severity, seed=seed),
                       mean, std)


# ------------------------------------------------------------------------------ the set
def _gaussian_noise(p: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return p + rng.standard_normal(p.shape, dtype=np.float32) * np.float32(sigma)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, math.ceil(3 * sigma))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def _blur(p: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Separable Gaussian blur, edge pixels repeated outward (as in most image libraries)."""
    k = _gaussian_kernel(sigma)
    r = len(k) // 2
    h, w = p.shape[2:]
    rows = np.pad(p, ((0, 0), (0, 0), (r, r), (0, 0)), mode="edge")
    p = sum(wt * rows[:, :, i:i + h, :] for i, wt in enumerate(k))
    cols = np.pad(p, ((0, 0), (0, 0), (0, 0), (r, r)), mode="edge")
    return sum(wt * cols[:, :, :, i:i + w] for i, wt in enumerate(k))


def _brightness(p: np.ndarray, delta: float, rng: np.random.Generator) -> np.ndarray:
    return p + np.float32(delta)


def _contrast(p: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Pull every pixel toward its image's mean (ImageNet-C's contrast)."""
    m = p.mean(axis=(1, 2, 3), keepdims=True)
    return (p - m) * np.float32(factor) + m


def _jpeg(p: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    return jpeg_quantize(p, int(quality))


_DIRECTIONS = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])


def _shift(p: np.ndarray, pixels: float, rng: np.random.Generator) -> np.ndarray:
    """Move each image ``pixels`` along one of 8 directions drawn per image; the border
    row/column is repeated into the space it leaves (black stays black on MNIST-likes)."""
    k = int(pixels)
    h, w = p.shape[2:]
    which = rng.integers(0, len(_DIRECTIONS), size=p.shape[0])
    padded = np.pad(p, ((0, 0), (0, 0), (k, k), (k, k)), mode="edge")
    out = np.empty_like(p)
    for d, (dy, dx) in enumerate(_DIRECTIONS * k):
        sel = which == d   # out[i, j] = p[i - dy, j - dx]: content moves by (dy, dx)
        out[sel] = padded[sel, :, k - dy:k - dy + h, k - dx:k - dx + w]
    return out


CORRUPTIONS.add("gaussian_noise", Corruption(_gaussian_noise, (0.04, 0.08, 0.12, 0.16, 0.20),
                                             "sigma"))
CORRUPTIONS.add("blur", Corruption(_blur, (0.5, 0.75, 1.0, 1.25, 1.5), "sigma_px"))
CORRUPTIONS.add("brightness", Corruption(_brightness, (0.1, 0.2, 0.3, 0.4, 0.5), "delta"))
CORRUPTIONS.add("contrast", Corruption(_contrast, (0.7, 0.55, 0.4, 0.3, 0.2), "factor"))
CORRUPTIONS.add("jpeg", Corruption(_jpeg, (25, 18, 15, 10, 7), "quality"))
CORRUPTIONS.add("shift", Corruption(_shift, (1, 1, 2, 2, 3), "pixels"))
