"""Hugging Face ``transformers`` models as they are, into every torchslim entry point.

``TextModel(hf_model)`` takes the real inputs (``input_ids``, ``attention_mask``,
``token_type_ids``: int64, dynamic batch and sequence) and returns one tensor (logits, or
a pooled embedding); ``example_inputs`` and ``dynamic_dims`` give what capture,
quantization and the exporters need; ``text_batches`` turns user text into batches with
the tokenizer's special tokens and attention masks; ``save_pretrained`` /
``load_pretrained`` keep layers that pruning resized. Importing this package needs only
torch; the functions that build or load models need ``pip install 'torchslim[transformers]'``.
"""

from torchslim.transformers.inputs import (TextBatches, dynamic_dims, example_inputs,
                                           text_batches, with_padding)
from torchslim.transformers.model import OUTPUTS, POOLINGS, TextModel, pool, unwrap
from torchslim.transformers.persist import load_pretrained, save_pretrained
from torchslim.transformers.tiny import FAMILIES, tiny_config, tiny_model

__all__ = ["TextModel", "OUTPUTS", "POOLINGS", "pool", "unwrap", "example_inputs",
           "dynamic_dims", "text_batches", "TextBatches", "with_padding", "save_pretrained",
           "load_pretrained", "FAMILIES", "tiny_config", "tiny_model"]
