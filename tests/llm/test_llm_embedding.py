"""Which embedding tables ``quantize_embeddings_`` picks: the token tables, found from the
model's declaration or from the indices each table reads, never by name."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import Tensor, nn

from torchslim.llm.embedding import IntEmbedding, choose_tables, quantize_embeddings_
from torchslim.transformers import TextModel, example_inputs, tiny_model


class _Positions(nn.Module):
    """A token table and a same-sized learned position table, under names that say
    nothing (and no ``get_input_embeddings``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Embedding(256, 32)  # positions
        self.b = nn.Embedding(256, 32)  # tokens
        self.out = nn.Linear(32, 4)

    def forward(self, ids: Tensor) -> Tensor:
        pos = torch.arange(ids.shape[1]).expand_as(ids)
        return self.out(self.b(ids) + self.a(pos))


def _ids() -> Tensor:
    return torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))


def test_bert_position_and_token_type_tables_are_reported_not_picked() -> None:
    model = TextModel(tiny_model("bert"))  # vocabulary 128 = max positions 128
    by_name = {c.name: c for c in choose_tables(model, min_rows=2)}
    assert [n for n, c in by_name.items() if c.quantize] == ["model.embeddings.word_embeddings"]
    for table in ("position_embeddings", "token_type_embeddings"):
        choice = by_name[f"model.embeddings.{table}"]
        assert not choice.quantize and "get_input_embeddings" in choice.reason
    observed = choose_tables(model, min_rows=2, example_inputs=example_inputs(model))
    # observed: the token-type table reads the token_type_ids input, the position one none
    assert {c.name: c.quantize for c in observed} == {
        "model.embeddings.word_embeddings": True, "model.embeddings.position_embeddings": False,
        "model.embeddings.token_type_embeddings": True}


def test_a_model_without_a_declaration_needs_example_inputs(caplog) -> None:  # type: ignore[no-untyped-def]
    model = _Positions().eval()
    caplog.set_level(logging.INFO, logger="torchslim.llm.embedding")
    assert quantize_embeddings_(model, min_rows=100) == []
    assert "pass example_inputs" in caplog.text and "no token table" in caplog.text
    ref = model(_ids())
    assert quantize_embeddings_(model, min_rows=100, example_inputs=(_ids(),)) == ["b"]
    assert isinstance(model.b, IntEmbedding) and type(model.a) is nn.Embedding
    assert "a (256 rows): kept float: its indices are no model input" in caplog.text
    torch.testing.assert_close(model(_ids()), ref, atol=0.05, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoder_token_tables(family: str) -> None:
    model = TextModel(tiny_model(family))
    choices = {c.name: c for c in choose_tables(model, min_rows=100)}
    picked = [n for n, c in choices.items() if c.quantize]
    if family == "gpt2":  # tied to the LM head; its position table is not the input's
        assert picked == [] and "tied" in choices["model.transformer.wte"].reason
        assert "position" in choices["model.transformer.wpe"].reason
    else:
        assert picked == ["model.model.embed_tokens"]
