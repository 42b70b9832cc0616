"""Distillation from the user's plain text: checking and splitting the text, batches that
reshuffle each epoch, and logits KD for sequence-classification heads.

``distill_text_classifier(teacher, student, texts, tokenizer=tok)`` runs the package's
``distill`` (temperature KD, ``DistillConfig``) on ``transformers`` classifiers fed with
token batches (``input_ids``, ``attention_mask``, ...) instead of image tensors. Without
labels the hard-label term uses the teacher's own top-1 (pseudo-labels), so unlabelled
text is enough; ``alpha=1`` drops that term.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from torchslim._record import record_of, update_
from torchslim.distillation.api import distill
from torchslim.distillation.config import DistillConfig
from torchslim.distillation.teachers import frozen
from torchslim.errors import ConfigError, DataFormatError
from torchslim.train import TrainConfig
from torchslim.transformers import TextBatches, TextModel, text_batches

__all__ = ["TextKDResult", "distill_text_classifier", "text_train_config"]

logger = logging.getLogger(__name__)


def text_train_config(**overrides: Any) -> TrainConfig:
    """The schedule transformers are distilled with: AdamW, a short warm-up, no NHWC.
    SGD at lr 0.1 (the image default) diverges on them."""
    kwargs: dict[str, Any] = dict(epochs=3, lr=2e-4, optimizer="adamw", weight_decay=0.01,
                                  schedule="onecycle", warmup_fraction=0.1, channels_last=False)
    return TrainConfig(**{**kwargs, **overrides})


def check_texts(name: str, texts: Any) -> list[str]:
    """The non-empty strings of ``texts``; refuses one string, non-strings and no text."""
    if isinstance(texts, (str, bytes)):
        raise ConfigError(f"{name} is one string; pass a list of texts (one per sentence or "
                          "passage)")
    try:
        items = list(texts)
    except TypeError:
        raise ConfigError(f"{name} must be a list of strings, not {type(texts).__name__}") from None
    bad = [type(t).__name__ for t in items if not isinstance(t, str)]
    if bad:
        raise ConfigError(f"{name} holds {bad[0]} items; pass plain strings")
    kept = [t for t in items if t.strip()]
    if not kept:
        raise DataFormatError(f"{name} holds no non-empty text ({len(items)} items); "
                              "distillation needs the user's plain text")
    return kept


def held_out_split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices): a seeded ``val_fraction`` of ``n`` items held out."""
    if val_fraction == 0 or n < 2:
        raise ConfigError(f"{n} texts and val_fraction={val_fraction} leave no held-out text "
                          "to measure the student on; pass val_texts= or a val_fraction > 0 "
                          "with at least 2 texts")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(val_fraction * n))
    return order[n_val:], order[:n_val]


class Shuffled:
    """Batches in a new order each epoch (``fit`` seeds ``generator`` from (seed, epoch))."""

    def __init__(self, batches: TextBatches) -> None:
        self.items, self.generator = list(batches), torch.Generator()

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Any:
        order = torch.randperm(len(self.items), generator=self.generator).tolist()
        return (self.items[i] for i in order)


@dataclass(frozen=True)
class TextKDResult:
    """What ``distill_text_classifier`` did, measured on the held-out texts: the share of
    texts where the student's top-1 is the teacher's, and top-1 against labels (None
    without labels)."""

    student: nn.Module
    history: tuple[dict[str, Any], ...]
    val_agreement_before: float
    val_agreement: float
    val_top1_before: float | None
    val_top1: float | None
    n_train: int
    n_val: int

    @property
    def loss_curve(self) -> list[float]:
        return [float(h["train_loss"]) for h in self.history]

    def __str__(self) -> str:
        top1 = ("" if self.val_top1 is None else
                f", top-1 {self.val_top1_before:.3f} -> {self.val_top1:.3f}")
        return (f"distilled on {self.n_train} texts ({len(self.history)} epochs); held-out "
                f"agreement with the teacher on {self.n_val} texts "
                f"{self.val_agreement_before:.3f} -> {self.val_agreement:.3f}{top1}")


def distill_text_classifier(teacher: nn.Module, student: nn.Module, texts: Sequence[str], *,
                            tokenizer: Any, labels: Sequence[int] | None = None,
                            config: DistillConfig | None = None,
                            val_texts: Sequence[str] | None = None,
                            val_labels: Sequence[int] | None = None, batch_size: int = 16,
                            max_length: int = 128, val_fraction: float = 0.1) -> TextKDResult:
    """KD of a ``transformers`` sequence classifier on plain text: a trained copy of
    ``student`` (left unchanged) in ``result.student``. ``config`` defaults to
    ``DistillConfig(train=text_train_config())``; ``labels`` (one per text) are optional."""
    config = config or DistillConfig(train=text_train_config())
    if not isinstance(config, DistillConfig):
        raise ConfigError(f"config must be a torchslim.DistillConfig, not {type(config).__name__}")
    config = dataclasses.replace(config, train=dataclasses.replace(config.train,
                                                                   channels_last=False))
    t_net, s_net = (TextModel(m, output="logits") for m in (teacher, student))
    _check_heads(t_net, s_net)
    with frozen([t_net]):
        pseudo = _pseudo_labels(t_net)
        train, val, labelled = _labelled_splits(
            texts, labels, val_texts, val_labels, seed=config.train.seed,
            val_fraction=val_fraction,
            make=lambda xs, ys: text_batches(tokenizer, xs, model=s_net, batch_size=batch_size,
                                             max_length=max_length, targets=ys or pseudo))
        before = _scores(s_net, t_net, val, labelled)
        trained = distill(s_net, t_net, Shuffled(train), config)
        after = _scores(trained, t_net, val, labelled)
    hf, done = trained.model, record_of(trained).distillation
    update_(hf, distillation=done)
    hf.train(student.training)
    result = TextKDResult(student=hf, history=done.history if done else (),
                          val_agreement_before=before[0], val_agreement=after[0],
                          val_top1_before=before[1], val_top1=after[1],
                          n_train=_count(train), n_val=_count(val))
    logger.info("%s", result)
    return result


def _check_heads(teacher: TextModel, student: TextModel) -> None:
    t, s = (getattr(m.config, "num_labels", None) for m in (teacher, student))
    if t != s:
        raise ConfigError(f"the teacher has {t} classes and the student {s}; build the "
                          f"student with num_labels={t}")


def _pseudo_labels(teacher: nn.Module) -> Callable[[dict[str, Tensor]], Tensor]:
    @torch.no_grad()
    def top1(batch: dict[str, Tensor]) -> Tensor:
        return teacher(batch).argmax(-1).cpu()
    return top1


Pair = tuple[str, int | None]


def _pairs(name: str, texts: Any, labels: Sequence[int] | None) -> list[Pair]:
    """(text, label or None) for each non-empty text; one label per text when given."""
    check_texts(name, texts)
    texts = list(texts)
    if labels is not None and len(labels) != len(texts):
        raise ConfigError(f"{len(labels)} labels for {len(texts)} {name}; pass one per text")
    return [(t, None if labels is None else int(labels[i])) for i, t in enumerate(texts)
            if t.strip()]


def _labelled_splits(texts: Sequence[str], labels: Sequence[int] | None,
                     val_texts: Sequence[str] | None, val_labels: Sequence[int] | None, *,
                     seed: int, val_fraction: float,
                     make: Callable[[list[str], list[int] | None], TextBatches]
                     ) -> tuple[TextBatches, TextBatches, bool]:
    """(train, held-out, whether the held-out texts have real labels)."""
    if val_texts is None and val_labels is not None:
        raise ConfigError("val_labels without val_texts; pass both, or neither")
    train = _pairs("texts", texts, labels)
    if val_texts is None:
        train_i, val_i = held_out_split(len(train), val_fraction, seed)
        train, val = [train[i] for i in train_i], [train[i] for i in val_i]
        labelled = labels is not None
    else:
        val, labelled = _pairs("val_texts", val_texts, val_labels), val_labels is not None

    def batches(pairs: list[Pair]) -> TextBatches:
        ys = [y for _, y in pairs]
        return make([t for t, _ in pairs], None if ys[0] is None else ys)  # type: ignore[arg-type]
    return batches(train), batches(val), labelled


@torch.no_grad()
def _scores(student: nn.Module, teacher: nn.Module, val: TextBatches,
            labelled: bool) -> tuple[float, float | None]:
    """(agreement with the teacher's top-1, top-1 against the labels or None)."""
    was_training = student.training
    student.eval()
    agree = hits = total = 0
    for batch, y in val:
        pred = student(batch).argmax(-1).cpu()
        agree += int((pred == teacher(batch).argmax(-1).cpu()).sum())
        hits += int((pred == y).sum())
        total += len(pred)
    student.train(was_training)
    return agree / total, (hits / total if labelled else None)


def _count(batches: TextBatches) -> int:
    return sum(int(b["input_ids"].shape[0]) for b in batches.inputs())
