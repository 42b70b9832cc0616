"""Reader for the IDX format that MNIST-style datasets ship in.

The format is tiny: 4 magic bytes ``0, 0, dtype_code, ndim``, then ``ndim`` big-endian
uint32 dimensions, then the values in C order (big-endian for multi-byte types).
We parse it ourselves so the data layer needs nothing beyond numpy.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from torchslim.errors import DataFormatError, DataNotFoundError

__all__ = ["read_idx", "REINSTALL_HINT"]

REINSTALL_HINT = "re-install with: apt-get install --reinstall dataset-fashion-mnist"

# IDX type code -> big-endian numpy dtype
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    """Whole file, gunzipped when it ends in ``.gz``; gzip damage becomes DataFormatError."""
    if not path.is_file():
        raise DataNotFoundError(
            f"IDX file not found: {path}; install the data with "
            "`apt-get update && apt-get install -y dataset-fashion-mnist`, "
            "or set TORCHSLIM_DATA to a directory holding the IDX files"
        )
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataFormatError(f"{path}: corrupt gzip stream ({e}); {REINSTALL_HINT}") from e


def _parse_header(raw: bytes, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """Return (dtype, shape, offset of the first value) or raise naming what is wrong."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataFormatError(
            f"{path}: bad IDX magic {raw[:4].hex() or '(empty file)'}, expected 0000<type><ndim>; "
            f"{REINSTALL_HINT}"
        )
    code, ndim = raw[2], raw[3]
    if code not in _DTYPES:
        raise DataFormatError(f"{path}: unknown IDX dtype code 0x{code:02X}; {REINSTALL_HINT}")
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise DataFormatError(f"{path}: truncated IDX header ({len(raw)} bytes); {REINSTALL_HINT}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    return _DTYPES[code], shape, offset


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (raw or ``.gz``) into a native-endian numpy array.

    Raises DataNotFoundError when the file is missing and DataFormatError when it is
    truncated or corrupt, so a half-installed dataset fails loudly instead of training
    on garbage.
    """
    path = Path(path)
    raw = _read_bytes(path)
    dtype, shape, offset = _parse_header(raw, path)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - offset
    if got != expected:
        raise DataFormatError(
            f"{path}: IDX shape {shape} needs {expected} data bytes but the file has {got}; "
            f"{REINSTALL_HINT}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)
