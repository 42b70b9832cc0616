"""Text for calibration and perplexity: Jane Austen's six novels, offline.

The Debian package ``r-cran-janeaustenr`` stores the novels as an R lazy-load database
(``data/Rdata.rdx`` index, ``data/Rdata.rdb`` blobs); each blob is a 4-byte length and a
zlib stream of one serialized R character vector (one element per line of the book). The
pure-Python ``rdata`` package parses those, so R itself is never needed.

``make llm-data`` downloads and unpacks the package into ``<cache>/llm/janeaustenr``.
"""

from __future__ import annotations

import gzip
import os
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from torchslim import config
from torchslim.errors import DataFormatError, DataNotFoundError, MissingDependencyError

__all__ = ["AUSTEN_BOOKS", "austen_dir", "load_austen", "calibration_batches", "special_tokens",
           "token_slice"]

AUSTEN_BOOKS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma",
                "northangerabbey", "persuasion")
_SUBDIR = Path("janeaustenr") / "data"
_SYSTEM = Path("/usr/lib/R/site-library/janeaustenr")
_HINT = ("run `make llm-data` (apt-get download r-cran-janeaustenr + dpkg -x into the cache), "
         "or pass the extracted janeaustenr directory")


def austen_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The ``janeaustenr`` package directory holding ``data/Rdata.rdb``.

    Looked for in ``root``, ``$TORCHSLIM_AUSTEN``, the system R library, and the cache
    (``<cache>/llm/janeaustenr`` plus the ``usr/lib/R/site-library`` tree ``dpkg -x`` makes).
    """
    env = os.environ.get("TORCHSLIM_AUSTEN")
    cache = config.cache_dir() / "llm"
    candidates = [Path(root)] if root is not None else [
        *([Path(env)] if env else []), _SYSTEM, cache / "janeaustenr",
        cache / "deb" / "usr/lib/R/site-library/janeaustenr"]
    for path in candidates:
        path = path.expanduser()
        for base in (path, path / "janeaustenr"):
            if (base / "data" / "Rdata.rdb").is_file():
                return base
    tried = ", ".join(str(p) for p in candidates)
    raise DataNotFoundError(f"Jane Austen's novels not found (looked in {tried}); {_HINT}")


def _rdata():  # type: ignore[no-untyped-def]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import rdata
    except ImportError as e:
        raise MissingDependencyError(
            "reading the Austen novels needs: pip install 'torchslim[llm]'") from e
    return rdata


def load_austen(root: str | os.PathLike[str] | None = None,
                books: Sequence[str] = AUSTEN_BOOKS) -> dict[str, str]:
    """``{book: full text}`` for ``books`` (names as in ``AUSTEN_BOOKS``), lines joined by
    newlines."""
    rdata = _rdata()
    base = austen_dir(root) / "data"
    try:
        index = rdata.conversion.convert(
            _parse(rdata, gzip.decompress((base / "Rdata.rdx").read_bytes())))
        offsets = {str(k): (int(v[0]), int(v[1])) for k, v in index["variables"].items()}
        blob = (base / "Rdata.rdb").read_bytes()
    except (OSError, KeyError, ValueError, zlib.error, EOFError) as e:
        raise DataFormatError(f"cannot read the janeaustenr index in {base}: {e}; {_HINT}") from e
    texts = {}
    for book in books:
        if book not in offsets:
            raise DataFormatError(f"book {book!r} is not in {base} (it has: "
                                  f"{', '.join(sorted(offsets))})")
        start, length = offsets[book]
        raw = zlib.decompress(blob[start + 4:start + length])  # 4-byte length header first
        lines = rdata.conversion.convert(_parse(rdata, raw))
        texts[book] = "\n".join(str(line) for line in lines)
    return texts


def _parse(rdata, raw: bytes):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():  # the blobs are bare serializations ("assumed RDS")
        warnings.simplefilter("ignore", UserWarning)
        return rdata.parser.parse_data(raw)


def token_slice(tokenizer: Any, text: str, *, start: int = 0,
                length: int | None = None) -> torch.Tensor:
    """``text`` tokenized (no special tokens) as a 1-D LongTensor, cut to
    ``[start, start + length)`` tokens."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    end = None if length is None else start + length
    piece = ids[start:end]
    if length is not None and piece.numel() < length:
        raise DataFormatError(f"the text has {ids.numel()} tokens; a slice of {length} from "
                              f"{start} does not fit")
    return piece


def special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """``(prefix, suffix)`` ids the tokenizer puts around a text (``[CLS]`` / ``[SEP]``
    for BERT, ``<s>`` for Llama, none for GPT-2), read off one encoded word."""
    bare = tokenizer("a", add_special_tokens=False).input_ids
    full = tokenizer("a", add_special_tokens=True).input_ids
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return list(full[:i]), list(full[i + len(bare):])
    return [], []


def calibration_batches(tokenizer: Any, texts: Sequence[str], *, n_samples: int = 64,
                        seq_len: int = 512, seed: int = 0) -> torch.Tensor:
    """``(n_samples, seq_len)`` token ids: random windows of the concatenated ``texts``
    between the tokenizer's own special tokens (so each window looks like the input the
    model was trained on; no padding, so its attention mask is all ones). A fixed
    ``seed``: every method calibrates on the same tokens."""
    prefix, suffix = special_tokens(tokenizer)
    body = seq_len - len(prefix) - len(suffix)
    if body < 1:
        raise DataFormatError(f"seq_len={seq_len} leaves no room for text between the "
                              f"{len(prefix) + len(suffix)} special tokens")
    ids = torch.cat([token_slice(tokenizer, t) for t in texts])
    if ids.numel() <= body:
        raise DataFormatError(f"calibration text has {ids.numel()} tokens; need more than "
                              f"seq_len={seq_len}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - body, (n_samples,), generator=gen)
    head, tail = torch.tensor(prefix, dtype=torch.long), torch.tensor(suffix, dtype=torch.long)
    return torch.stack([torch.cat([head, ids[s:s + body], tail]) for s in starts.tolist()])
