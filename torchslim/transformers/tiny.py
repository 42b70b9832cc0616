"""Small random-weight models of the three transformer families, built from configs (never
downloaded): for tests, smoke checks and benchmarks that need no real weights.

``tiny_model("bert")`` is a BERT-style encoder (post-LN, learned positions, token types),
``"bert-cls"`` the same with a sequence-classification head, ``"gpt2"`` a GPT-2-style
decoder (pre-LN, fused ``Conv1D`` projections, tied LM head) and ``"llama"`` a Llama-style
decoder (RMSNorm, rotary positions, gated MLP, grouped-query attention).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchslim.errors import UnknownNameError

__all__ = ["FAMILIES", "tiny_config", "tiny_model"]

FAMILIES = ("bert", "bert-cls", "gpt2", "llama")


def tiny_config(family: str, **overrides: Any) -> Any:
    """The ``transformers`` config of a small model of ``family`` (hidden 64, 2 layers,
    4 heads of 16, MLP 128, vocabulary 128), with ``overrides``."""
    import transformers

    if family in ("bert", "bert-cls"):
        kwargs = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2,
                      num_attention_heads=4, intermediate_size=128, max_position_embeddings=128,
                      num_labels=3)
        cls = transformers.BertConfig
    elif family == "gpt2":
        kwargs = dict(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                      bos_token_id=0, eos_token_id=0)
        cls = transformers.GPT2Config
    elif family == "llama":
        kwargs = dict(vocab_size=128, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=16, max_position_embeddings=128, bos_token_id=0,
                      eos_token_id=0, tie_word_embeddings=False)
        cls = transformers.LlamaConfig
    else:
        raise UnknownNameError(f"family={family!r}; choose one of {', '.join(FAMILIES)}")
    kwargs.update(overrides)
    return cls(**kwargs)


def tiny_model(family: str, *, seed: int = 0, **overrides: Any) -> nn.Module:
    """A small ``transformers`` model of ``family`` with random weights, in eval mode."""
    import transformers

    config = tiny_config(family, **overrides)
    classes = {"bert": transformers.BertModel,
               "bert-cls": transformers.BertForSequenceClassification,
               "gpt2": transformers.GPT2LMHeadModel, "llama": transformers.LlamaForCausalLM}
    torch.manual_seed(seed)
    return classes[family](config).eval()
