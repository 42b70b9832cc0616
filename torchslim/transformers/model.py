"""``TextModel``: a Hugging Face model with the calling convention every torchslim entry
point uses: token tensors in (``input_ids``, ``attention_mask``, ``token_type_ids``), one
tensor out.

A ``transformers`` model returns a ``ModelOutput`` (and, for decoders, a KV cache that
``torch.export`` cannot carry); ``TextModel`` returns the logits of a model with a head,
or a pooled sentence embedding of a bare encoder / decoder, and never builds a cache. Its
inputs keep their dtypes (int64 ids and masks): nothing is packed into a float tensor.

>>> import transformers
>>> bert = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=1,
...                               num_attention_heads=2, intermediate_size=64))
>>> net = TextModel(bert)          # output="embedding", mean pooling over the mask
>>> net.input_names
('input_ids', 'attention_mask', 'token_type_ids')
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchslim._record import carry_
from torchslim.errors import ConfigError

__all__ = ["TextModel", "OUTPUTS", "POOLINGS", "unwrap", "pool"]

logger = logging.getLogger(__name__)

OUTPUTS = ("auto", "logits", "embedding", "hidden")
POOLINGS = ("mean", "cls", "last")
_TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def unwrap(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside a ``TextModel`` (``model`` itself otherwise)."""
    return model.model if isinstance(model, TextModel) else model


def pool(hidden: Tensor, attention_mask: Tensor | None, pooling: str) -> Tensor:
    """``(batch, seq, d)`` hidden states -> ``(batch, d)``: the mean over the real tokens,
    the first token ("cls"), or the last real token ("last", what a decoder has seen
    everything at)."""
    if pooling == "cls":
        return hidden[:, 0]
    if attention_mask is None:
        return hidden.mean(dim=1) if pooling == "mean" else hidden[:, -1]
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (batch, seq, 1)
    if pooling == "mean":
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
    last = (attention_mask.long().sum(dim=1) - 1).clamp(min=0)  # (batch,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class TextModel(nn.Module):
    """``model`` (a ``transformers.PreTrainedModel``) taking token tensors and returning one
    tensor.

    ``output``: "logits" (a model with a head: classifier, LM), "embedding" (the pooled
    last hidden state, ``pooling`` over the attention mask, L2-normalised when
    ``normalize``, as sentence-transformers does), "hidden" (the last hidden state), or
    "auto" (logits when the model has a head, else embedding). The record of ``model``
    (what torchslim did to it) is carried onto the wrapper, so ``torchslim.export`` of a
    wrapped quantized model picks the right writer.
    """

    def __init__(self, model: nn.Module, *, output: str = "auto", pooling: str = "mean",
                 normalize: bool = False) -> None:
        super().__init__()
        if isinstance(model, TextModel):
            model = model.model
        if output not in OUTPUTS:
            raise ConfigError(f"output={output!r}; choose one of {', '.join(OUTPUTS)}")
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling={pooling!r}; choose one of {', '.join(POOLINGS)}")
        config = getattr(model, "config", None)
        if config is None or not callable(getattr(model, "forward", None)):
            raise ConfigError(f"{type(model).__name__} is not a Hugging Face model (it has no "
                              ".config); TextModel wraps transformers models")
        self.model = model
        self.output = _resolve_output(model, output)
        self.pooling, self.normalize = pooling, normalize
        params = inspect.signature(model.forward).parameters
        self._use_cache = "use_cache" in params
        self.input_names = tuple(n for n in _TOKEN_INPUTS if n in params and (
            n != "token_type_ids" or (getattr(config, "type_vocab_size", 0) or 0) > 1))
        self.train(model.training)  # a wrapper of an eval model is in eval mode
        carry_(model, self)

    @property
    def config(self) -> Any:
        return self.model.config

    def forward(self, input_ids: Tensor | Mapping[str, Tensor],
                attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> Tensor:
        if isinstance(input_ids, Mapping):  # one batch dict, as a data loader yields it
            return self.forward(**input_ids)
        kwargs: dict[str, Any] = {"input_ids": input_ids}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        if token_type_ids is not None and "token_type_ids" in self.input_names:
            kwargs["token_type_ids"] = token_type_ids
        if self._use_cache:
            kwargs["use_cache"] = False  # a KV cache is not an output torch.export can carry
        out = self.model(**kwargs, return_dict=True)
        if self.output == "logits":
            return out.logits
        hidden = out.last_hidden_state  # (batch, seq, d)
        if self.output == "hidden":
            return hidden
        emb = pool(hidden, attention_mask, self.pooling)  # (batch, d)
        return F.normalize(emb, dim=-1) if self.normalize else emb

    def extra_repr(self) -> str:
        return (f"{type(self.model).__name__}, output={self.output}, inputs="
                f"{', '.join(self.input_names)}"
                + (f", pooling={self.pooling}" if self.output == "embedding" else ""))


def _resolve_output(model: nn.Module, output: str) -> str:
    has_head = _has_head(model)
    if output == "auto":
        return "logits" if has_head else "embedding"
    if output == "logits" and not has_head:
        raise ConfigError(f"{type(model).__name__} has no head (no logits); use "
                          "output='embedding' or 'hidden'")
    if output in ("embedding", "hidden") and has_head:
        base = getattr(model, "base_model", None)
        raise ConfigError(f"{type(model).__name__} returns logits, not hidden states; wrap "
                          f"its base model ({type(base).__name__}) for output={output!r}")
    return output


def _has_head(model: nn.Module) -> bool:
    """Whether the model returns logits (a classification or LM head on a base model)."""
    base = getattr(model, "base_model", model)
    return base is not model
