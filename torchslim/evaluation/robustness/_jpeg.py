"""JPEG's lossy step on float images: an 8x8 block DCT, quantized by the standard tables.

This is what a JPEG encoder + decoder does to pixel values, without the entropy coding
(which is lossless): level shift by 128, an orthonormal 2-D DCT-II per 8x8 block, division
by the IJG quality-scaled quantization table, rounding, and the inverse. Three-channel
images go through YCbCr (BT.601, as JFIF) with the chrominance table on Cb/Cr and no
chroma subsampling (as libjpeg at quality >= 90, or ``subsampling=0``); other channel
counts use the luminance table on each channel.
"""

from __future__ import annotations

import numpy as np

__all__ = ["jpeg_quantize", "quality_table", "dct_matrix"]

BLOCK = 8

# ITU-T T.81 Annex K, tables K.1 (luminance) and K.2 (chrominance)
LUMA = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]],
    dtype=np.float64)
CHROMA = np.array([
    [17, 18, 24, 47, 99, 99, 99, 99], [18, 21, 26, 66, 99, 99, 99, 99],
    [24, 26, 56, 99, 99, 99, 99, 99], [47, 66, 99, 99, 99, 99, 99, 99],
    *[[99] * 8] * 4], dtype=np.float64)

_RGB_TO_YCC = np.array([[0.299, 0.587, 0.114],
                        [-0.168736, -0.331264, 0.5],
                        [0.5, -0.418688, -0.081312]])
_YCC_OFFSET = np.array([0.0, 128.0, 128.0])


def dct_matrix(n: int = BLOCK) -> np.ndarray:
    """Orthonormal DCT-II matrix ``D`` (n, n): ``D @ v`` is the DCT of ``v``, ``D.T`` inverts it."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def quality_table(table: np.ndarray, quality: int) -> np.ndarray:
    """The IJG (libjpeg) scaling of a base table to ``quality`` in [1, 100]."""
    quality = int(np.clip(quality, 1, 100))
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip(np.floor((table * scale + 50) / 100), 1, 255)


def _blocks(x: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """(N, C, H, W) -> (N, C, H/8, W/8, 8, 8), edge-padded to whole blocks like an encoder."""
    n, c, h, w = x.shape
    ph, pw = -h % BLOCK, -w % BLOCK
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge")
    hb, wb = x.shape[2] // BLOCK, x.shape[3] // BLOCK
    return x.reshape(n, c, hb, BLOCK, wb, BLOCK).transpose(0, 1, 2, 4, 3, 5), (h, w)


def _unblocks(b: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    n, c, hb, wb = b.shape[:4]
    x = b.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, hb * BLOCK, wb * BLOCK)
    return x[:, :, :size[0], :size[1]]


def jpeg_quantize(pixels: np.ndarray, quality: int) -> np.ndarray:
    """``pixels`` (N, C, H, W) in [0, 1] as a JPEG at ``quality`` would decode them."""
    v = np.rint(pixels.astype(np.float64) * 255.0)  # the encoder reads 8-bit samples
    channels = v.shape[1]
    color = channels == 3
    if color:
        v = np.einsum("ij,njhw->nihw", _RGB_TO_YCC, v) + _YCC_OFFSET[None, :, None, None]
    tables = [LUMA, CHROMA, CHROMA] if color else [LUMA] * channels
    q = np.stack([quality_table(t, quality) for t in tables])[None, :, None, None]  # (1,C,1,1,8,8)
    blocks, size = _blocks(v - 128.0)
    d = dct_matrix()
    coef = d @ blocks @ d.T                     # 2-D DCT of every block at once
    blocks = d.T @ (np.rint(coef / q) * q) @ d  # quantize, dequantize, inverse DCT
    v = _unblocks(blocks, size) + 128.0
    if color:
        v = np.einsum("ij,njhw->nihw", np.linalg.inv(_RGB_TO_YCC),
                      v - _YCC_OFFSET[None, :, None, None])
    return (np.clip(np.rint(v), 0, 255) / 255.0).astype(pixels.dtype)
