"""Digests: sha256 of files (streamed), the artifact digest over them, and a data digest.

The artifact digest is ``sha256:`` + the sha256 of one line per file, sorted by path::

    <sha256 hex> <size> <relative posix path>\\n

so it depends on every file's bytes and name and on nothing else (not on the order the
files were listed in, not on the manifest's other fields: adding a measurement later
keeps the artifact's identity).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any, BinaryIO

import numpy as np

__all__ = ["sha256_file", "sha256_bytes", "artifact_digest", "data_digest", "is_hex_digest",
           "DIGEST_PREFIX", "CHUNK"]

DIGEST_PREFIX = "sha256:"
CHUNK = 1 << 20  # 1 MiB reads: large artifacts never sit in memory whole
_HEX = re.compile(r"[0-9a-f]{64}")


def is_hex_digest(text: str) -> bool:
    return bool(_HEX.fullmatch(text))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_stream(f: BinaryIO) -> tuple[str, int]:
    """(hex digest, bytes read) of what is left in ``f``."""
    h, n = hashlib.sha256(), 0
    while chunk := f.read(CHUNK):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def sha256_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """(hex digest, size in bytes) of the file at ``path``."""
    with open(path, "rb") as f:
        return sha256_stream(f)


def artifact_digest(files: Iterable[Any]) -> str:
    """The digest of an artifact from its file entries (anything with ``path``, ``size``
    and ``sha256``); see the module docstring for the exact lines hashed."""
    lines = sorted(f"{f.sha256} {f.size} {f.path}\n" for f in files)
    return DIGEST_PREFIX + sha256_bytes("".join(lines).encode("utf-8"))


def data_digest(batches: Iterable[Any]) -> tuple[str, int]:
    """``(digest, samples)`` of a dataset given as batches: an array / tensor, or a tuple
    ``(inputs, labels, ...)`` of them. Each array's dtype, shape and bytes enter the hash
    in order, so the same samples in the same order give the same digest. ``samples``
    counts the first axis of each batch's first array."""
    h, samples = hashlib.sha256(), 0
    for batch in batches:
        arrays = _arrays(batch)
        if not arrays:
            continue
        samples += int(arrays[0].shape[0]) if arrays[0].ndim else 1
        for a in arrays:
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return DIGEST_PREFIX + h.hexdigest(), samples


def _arrays(batch: Any) -> list[np.ndarray]:
    items: Sequence[Any] = batch if isinstance(batch, (tuple, list)) else (batch,)
    out = []
    for item in items:
        if hasattr(item, "detach"):  # a torch tensor, without importing torch here
            item = item.detach().cpu().numpy()
        out.append(np.asarray(item))
    return out
