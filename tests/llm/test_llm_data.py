"""Austen text (when `make llm-data` has run) and calibration windows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from torchslim.errors import DataFormatError, DataNotFoundError
from torchslim.llm.data import AUSTEN_BOOKS, austen_dir, calibration_batches, load_austen, token_slice


def test_missing_austen_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="make llm-data"):
        austen_dir(tmp_path)


def test_real_austen_novels_when_present() -> None:
    pytest.importorskip("rdata")
    root = Path.home() / ".cache" / "torchslim" / "llm"  # where `make llm-data` puts it
    try:
        austen_dir(root)
    except DataNotFoundError:
        pytest.skip("Austen data absent (run `make llm-data`)")
    texts = load_austen(root, books=("emma", "persuasion"))
    assert texts["emma"].startswith("EMMA") and len(texts["emma"]) > 800_000
    assert "Anne Elliot" in texts["persuasion"]
    assert set(AUSTEN_BOOKS) >= set(texts)


def test_calibration_windows_are_fixed_by_the_seed(tiny_tokenizer, words) -> None:  # type: ignore[no-untyped-def]
    texts = [words(300, seed=1), words(200, seed=2)]
    a = calibration_batches(tiny_tokenizer, texts, n_samples=5, seq_len=16, seed=3)
    b = calibration_batches(tiny_tokenizer, texts, n_samples=5, seq_len=16, seed=3)
    assert a.shape == (5, 16) and torch.equal(a, b)
    with pytest.raises(DataFormatError, match="seq_len"):
        calibration_batches(tiny_tokenizer, [words(10)], n_samples=2, seq_len=16)


def test_token_slice_bounds(tiny_tokenizer, words) -> None:  # type: ignore[no-untyped-def]
    text = words(50)
    assert token_slice(tiny_tokenizer, text, start=10, length=20).shape == (20,)
    with pytest.raises(DataFormatError, match="does not fit"):
        token_slice(tiny_tokenizer, text, start=40, length=20)
