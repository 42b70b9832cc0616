"""Real inputs for a text model: example batches from a tokenizer or a vocabulary size,
their named dynamic dims, and batches of user text with special tokens and masks.

Every tensor is int64 ``(batch, sequence)``; the dims are named "batch" and "sequence"
for the exporters (``torch.onnx.export`` dynamic axes), so one ONNX file takes any batch
size and any sequence length.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from torchslim.errors import ConfigError, DataFormatError
from torchslim.transformers.model import TextModel

__all__ = ["example_inputs", "dynamic_dims", "text_batches", "with_padding", "TextBatches"]

Batch = dict[str, Tensor]


def _names(model: nn.Module | None) -> tuple[str, ...]:
    if isinstance(model, TextModel):
        return model.input_names
    if model is not None and hasattr(model, "config"):
        return TextModel(model).input_names
    return ("input_ids", "attention_mask")


def with_padding(tokenizer: Any) -> Any:
    """``tokenizer``, or a copy whose pad token is its end-of-sequence token when it has
    none (GPT-2 and Llama tokenizers), so batches of unequal texts can be padded. The
    attention mask, not the pad id, keeps the padding out of the result."""
    if getattr(tokenizer, "pad_token", None) is not None:
        return tokenizer
    fallback = getattr(tokenizer, "eos_token", None) or getattr(tokenizer, "unk_token", None)
    if fallback is None:
        raise ConfigError(f"{type(tokenizer).__name__} has no pad, end-of-sequence or unknown "
                          "token to pad batches with; set tokenizer.pad_token first")
    # a deep copy: a shallow one shares transformers 5's special-token map, so setting
    # its pad token set the caller's too
    padded = copy.deepcopy(tokenizer)
    padded.pad_token = fallback
    return padded


def _encode(tokenizer: Any, texts: Sequence[str], names: tuple[str, ...],
            max_length: int) -> Batch:
    """Texts with the tokenizer's special tokens (``[CLS] .. [SEP]``, ``<s>``), padded to
    the longest, truncated to ``max_length``: only the inputs ``names`` asks for."""
    enc = with_padding(tokenizer)(list(texts), padding="longest", truncation=True,
                                  max_length=max_length, return_tensors="pt")
    out = {n: enc[n].long() for n in names if n in enc}
    if "token_type_ids" in names and "token_type_ids" not in out:
        out["token_type_ids"] = torch.zeros_like(out["input_ids"])
    if "attention_mask" in names and "attention_mask" not in out:
        out["attention_mask"] = torch.ones_like(out["input_ids"])
    return out


def example_inputs(model: nn.Module | None = None, *, tokenizer: Any = None,
                   texts: Sequence[str] | None = None, vocab_size: int | None = None,
                   batch: int = 2, seq: int = 16, seed: int = 0) -> Batch:
    """One batch of the inputs ``model`` takes (``TextModel.input_names``): ``texts``
    through ``tokenizer`` (with special tokens; padded rows are masked), else random ids
    below ``vocab_size`` (default: the model's) with the last row's final quarter masked,
    so the mask is exercised."""
    names = _names(model)
    if tokenizer is not None and texts:
        return _encode(tokenizer, texts, names, max_length=max(seq, 8))
    vocab = vocab_size or getattr(getattr(model, "config", None), "vocab_size", None)
    if not vocab:
        raise ConfigError("example_inputs needs texts= with tokenizer=, vocab_size=, or a "
                          "model whose config has a vocab_size")
    if batch < 1 or seq < 2:
        raise ConfigError(f"batch={batch} and seq={seq} must be >= 1 and >= 2")
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, int(vocab), (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if batch > 1:
        mask[-1, seq - max(1, seq // 4):] = 0
    values = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return {n: values[n] for n in names}


def dynamic_dims(inputs: Batch) -> dict[str, dict[int, str]]:
    """``{name: {0: "batch", 1: "sequence"}}`` for every ``(batch, sequence)`` input."""
    return {n: ({0: "batch", 1: "sequence"} if t.dim() == 2 else {0: "batch"})
            for n, t in inputs.items()}


class TextBatches:
    """Batches ``(inputs, target)`` of user text, tokenized once: ``inputs`` a dict of the
    model's inputs with special tokens and attention masks, ``target`` what
    ``targets(inputs)`` gives (None by default). Iterable many times and sized, so
    ``torchslim.evaluate``, ``fit`` and calibration take it as a data loader."""

    def __init__(self, batches: list[Batch], targets: list[Any]) -> None:
        self.batches, self.targets = batches, targets

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[Batch, Any]]:
        return iter(zip(self.batches, self.targets))

    def inputs(self) -> list[Batch]:
        return list(self.batches)


def text_batches(tokenizer: Any, texts: Sequence[str], *, model: nn.Module | None = None,
                 batch_size: int = 8, max_length: int = 128,
                 targets: Any = None) -> TextBatches:
    """``texts`` as batches of ``batch_size`` for ``model`` (each padded to its own longest
    text, so the sequence length varies from batch to batch). ``targets``: a sequence with
    one label per text (batched as a tensor), or a callable ``inputs -> target`` (e.g. the
    float model's embeddings, to measure a quantized one against)."""
    if targets is not None and not callable(targets) and len(targets) != len(texts):
        raise ConfigError(f"{len(targets)} targets for {len(texts)} texts; pass one per text")
    keep = [i for i, t in enumerate(texts) if t and t.strip()]
    texts = [texts[i] for i in keep]
    if targets is not None and not callable(targets):
        targets = [targets[i] for i in keep]
    if not texts:
        raise DataFormatError("no non-empty text to make batches of")
    if batch_size < 1 or max_length < 2:
        raise ConfigError(f"batch_size={batch_size} and max_length={max_length} must be >= 1 "
                          "and >= 2")
    names = _names(model)
    tokenizer = with_padding(tokenizer)  # copied once, not once per batch
    batches, labels = [], []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        enc = _encode(tokenizer, chunk, names, max_length)
        batches.append(enc)
        if callable(targets):
            labels.append(targets(enc))
        elif targets is not None:
            labels.append(torch.as_tensor(list(targets[start:start + batch_size])))
        else:
            labels.append(None)
    return TextBatches(batches, labels)
