"""Tiny random Llama models: every LLM test runs without the real SmolLM2 or Austen data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")


def tiny_config(**overrides):  # type: ignore[no-untyped-def]
    kwargs = dict(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=True)
    kwargs.update(overrides)
    return transformers.LlamaConfig(**kwargs)


@pytest.fixture
def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(tiny_config()).eval()


@pytest.fixture
def calib_ids() -> torch.Tensor:
    return torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def tiny_tokenizer():  # type: ignore[no-untyped-def]
    """A word-level tokenizer over 120 words (ids 0..127 fit the tiny vocab)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, **{f"w{i}": i + 1 for i in range(120)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


@pytest.fixture
def tiny_dir(tmp_path: Path, tiny_llama, tiny_tokenizer) -> Path:  # type: ignore[no-untyped-def]
    """A local Hugging Face model directory (config.json, safetensors, tokenizer)."""
    path = tmp_path / "tiny-llama"
    tiny_llama.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def words():  # type: ignore[no-untyped-def]
    """``words(n, seed)``: n random vocabulary words of the tiny tokenizer."""

    def make(n: int, seed: int = 0) -> str:
        g = torch.Generator().manual_seed(seed)
        return " ".join(f"w{int(i)}" for i in torch.randint(0, 120, (n,), generator=g))

    return make
