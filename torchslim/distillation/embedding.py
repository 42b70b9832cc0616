"""Distil a text encoder on its embeddings, from plain text: no labels needed.

``distill_embeddings(teacher, student, texts, tokenizer=tok)`` trains a copy of
``student`` so that its pooled sentence embedding (mean over the attention mask, or the
first token) matches the teacher's on the user's text: cosine, MSE or both (as
sentence-transformers' model distillation and DistilBERT's cosine term do). Optional
hidden-state matching (TinyBERT / FitNets) pairs student and teacher layers and learns a
linear projection wherever their widths differ. Text goes through
``torchslim.transformers.text_batches`` (the tokenizer's special tokens, attention masks,
``with_padding`` for tokenizers without a pad token); training is ``torchslim.train.fit``
with this loss, so progress, schedules and threads are the package's usual ones.

The teacher may be an encoder or a decoder (GPT-2, Llama: mean pooling over the mask),
with or without a head (its base model's last hidden state is the embedding); the student
a head-pruned copy of it, or a smaller config of any family that reads the same token ids.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchslim._record import Distillation, update_
from torchslim._registry import Registry
from torchslim.distillation.api import _jsonable
from torchslim.distillation.teachers import frozen
from torchslim.distillation.text import Shuffled, check_texts, held_out_split, text_train_config
from torchslim.errors import ConfigError, DataFormatError
from torchslim.evaluation.metrics import mean_cosine
from torchslim.train import Callback, TrainConfig, TrainState, fit
from torchslim.transformers import POOLINGS, TextBatches, TextModel, pool, text_batches, unwrap

__all__ = ["EMBEDDING_LOSSES", "TOKEN_EMBEDDINGS", "EmbeddingDistillConfig",
           "EmbeddingDistillResult", "StudentEmbedder", "distill_embeddings",
           "hidden_state_loss", "uniform_layer_map"]

logger = logging.getLogger(__name__)

Batch = dict[str, Tensor]
LayerPairs = tuple[tuple[int, int], ...]


TOKEN_EMBEDDINGS = ("auto", "frozen", "trained")


def _cosine(student: Tensor, teacher: Tensor) -> Tensor:
    return (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()


# name -> fn(student (B, d), teacher (B, d)) -> scalar loss on pooled embeddings
EMBEDDING_LOSSES: Registry[Callable[[Tensor, Tensor], Tensor]] = Registry("embedding loss")
EMBEDDING_LOSSES.add("cosine", _cosine)
EMBEDDING_LOSSES.add("mse", F.mse_loss)
EMBEDDING_LOSSES.add("cosine+mse", lambda s, t: _cosine(s, t) + F.mse_loss(s, t))


def _layer_pairs(value: object) -> bool | LayerPairs:
    """``True``/``False``, ``{student: teacher}``, ``[(s, t), ...]`` or ``["s:t", ...]``."""
    if isinstance(value, bool) or value is None:
        return bool(value)
    items = value.items() if isinstance(value, Mapping) else value
    if isinstance(items, (str, bytes)) or not hasattr(items, "__iter__"):
        raise ConfigError(f"hidden_states={value!r} must be True, False, a {{student: teacher}} "
                          "dict of hidden-state indices, or 'student:teacher' strings")
    pairs = []
    for item in items:  # type: ignore[union-attr]
        pair = tuple(item.split(":")) if isinstance(item, str) else tuple(item)
        try:
            s, t = (int(p) for p in pair)
        except (TypeError, ValueError):
            raise ConfigError(f"hidden_states: {item!r} is not a (student, teacher) pair of "
                              "hidden-state indices; write it as (2, 4) or '2:4'") from None
        if s < 0 or t < 0:
            raise ConfigError(f"hidden_states: {item!r} has a negative index; 0 is the "
                              "embedding output, i the output of layer i")
        pairs.append((s, t))
    if not pairs:
        raise ConfigError("hidden_states is an empty map; pass False for no hidden-state "
                          "matching or True for the uniform map")
    return tuple(pairs)


@dataclass(frozen=True, kw_only=True)
class EmbeddingDistillConfig:
    """Loss = ``loss``(student pooled, teacher pooled) + hidden_weight · Σ hidden-state terms.

    ``hidden_states``: False (pooled embeddings only), True (student layer i matched to
    teacher layer round(i · L_t / L_s), the uniform map of DistilBERT/TinyBERT), or explicit
    (student, teacher) pairs of hidden-state indices (0 = the embedding output, i = the
    output of layer i). Each pair's term is the masked squared error relative to the
    teacher's energy on the same tokens, so residual streams of any scale weigh alike.
    """

    # on pooled embeddings: "cosine", "mse" or both. Cosine alone leaves what tells texts
    # apart unlearned when the teacher's embeddings share one direction (most do: a random
    # tiny BERT's held-out centred cosine reached 0.56 with it, 0.97 with both)
    loss: str = "cosine+mse"
    pooling: str = "mean"            # "mean" over the attention mask, "cls" or "last" token
    hidden_states: bool | LayerPairs = False
    hidden_weight: float = 1.0
    # the student's input token table: "frozen" (not trained), "trained", or "auto": frozen
    # when it equals the teacher's (a pruned copy). Distillation text never holds every
    # word; a trained table drifts on the words it sees and leaves the others where the
    # teacher had them (head-pruned MiniLM on Austen: see the README's transformers section)
    token_embeddings: str = "auto"
    batch_size: int = 16
    max_length: int = 128            # tokens per text, special tokens included
    val_fraction: float = 0.1        # held-out share of ``texts`` when no val_texts are given
    train: TrainConfig = field(default_factory=text_train_config)

    def __post_init__(self) -> None:
        EMBEDDING_LOSSES.get(self.loss)
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling={self.pooling!r}; choose one of {', '.join(POOLINGS)}")
        object.__setattr__(self, "hidden_states", _layer_pairs(self.hidden_states))
        if not self.hidden_weight >= 0:
            raise ConfigError(f"hidden_weight={self.hidden_weight} must be >= 0")
        if self.token_embeddings not in TOKEN_EMBEDDINGS:
            raise ConfigError(f"token_embeddings={self.token_embeddings!r}; choose one of "
                              f"{', '.join(TOKEN_EMBEDDINGS)}")
        if self.batch_size < 1 or self.max_length < 2:
            raise ConfigError(f"batch_size={self.batch_size} and max_length={self.max_length} "
                              "must be >= 1 and >= 2")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction} must be in [0, 1)")
        if not isinstance(self.train, TrainConfig):
            raise ConfigError(f"train={self.train!r} must be a torchslim.TrainConfig")
        if self.train.channels_last:  # a memory format for images; text batches are dicts
            object.__setattr__(self, "train", dataclasses.replace(self.train,
                                                                  channels_last=False))


def uniform_layer_map(student_layers: int, teacher_layers: int) -> LayerPairs:
    """Student layer i (1..L_s) -> teacher layer round(i · L_t / L_s): the last to the last."""
    return tuple((i, round(i * teacher_layers / student_layers))
                 for i in range(1, student_layers + 1))


def hidden_state_loss(student: Tensor, teacher: Tensor, mask: Tensor | None) -> Tensor:
    """Σ mask·(s − t)² / Σ mask·t² over (batch, seq, d) states: padding never counts."""
    m = (torch.ones(student.shape[:2], device=student.device) if mask is None
         else mask).to(student.dtype).unsqueeze(-1)          # (batch, seq, 1)
    teacher = teacher.detach()
    err = ((student - teacher).pow(2) * m).sum()
    return err / (teacher.pow(2) * m).sum().clamp_min(1e-12)


class _Encoder:
    """A Hugging Face model's base (its head dropped) called with the token inputs it
    takes; returns the last hidden state and, when asked, every hidden state."""

    def __init__(self, model: nn.Module) -> None:
        hf = unwrap(model)
        self.base = getattr(hf, "base_model", hf)
        wrapped = TextModel(self.base, output="hidden")
        self.names, self._use_cache = wrapped.input_names, wrapped._use_cache

    def __call__(self, batch: Mapping[str, Tensor], *, hidden: bool
                 ) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        device = next(self.base.parameters()).device
        kwargs: dict[str, Any] = {n: batch[n].to(device) for n in self.names if n in batch}
        if self._use_cache:
            kwargs["use_cache"] = False
        out = self.base(**kwargs, output_hidden_states=hidden, return_dict=True)
        return out.last_hidden_state, (tuple(out.hidden_states) if hidden else None)


class StudentEmbedder(nn.Module):
    """The distilled student as a sentence encoder in the teacher's embedding space: its
    pooled last hidden state, through ``projection`` when its width differs from the
    teacher's. Takes what ``TextModel`` takes (named token tensors, or one batch dict)."""

    def __init__(self, student: nn.Module, *, pooling: str,
                 projection: nn.Linear | None = None) -> None:
        super().__init__()
        self.student, self.pooling, self.projection = student, pooling, projection
        self._encoder = _Encoder(student)
        self.input_names = self._encoder.names

    def forward(self, input_ids: Tensor | Mapping[str, Tensor],
                attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> Tensor:
        if isinstance(input_ids, Mapping):
            return self.embed(input_ids)[0]
        batch = {"input_ids": input_ids}
        for name, value in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if value is not None:
                batch[name] = value
        return self.embed(batch)[0]

    def embed(self, batch: Mapping[str, Tensor], *, hidden: bool = False
              ) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        """(pooled (batch, d_teacher), every hidden state of the student or None)."""
        last, states = self._encoder(batch, hidden=hidden)
        mask = batch.get("attention_mask")
        emb = pool(last, None if mask is None else mask.to(last.device), self.pooling)
        return (emb if self.projection is None else self.projection(emb)), states


class _Trainee(nn.Module):
    """The module ``fit`` trains: the embedder and one projection per hidden-state pair
    whose widths differ (dropped when training ends, like FitNets' regressors)."""

    def __init__(self, embedder: StudentEmbedder, projections: dict[str, nn.Module],
                 hidden: bool) -> None:
        super().__init__()
        self.embedder, self.projections, self.hidden = embedder, nn.ModuleDict(projections), hidden

    def forward(self, batch: Batch) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        return self.embedder.embed(batch, hidden=self.hidden)


@dataclass(frozen=True)
class EmbeddingDistillResult:
    """What ``distill_embeddings`` did. Cosines are per-text means on the held-out texts,
    against the teacher's embeddings; "centered" ones first subtract the teacher's mean
    held-out embedding from both, so a shared direction cannot make them high."""

    student: nn.Module               # the trained copy, the type of the student given
    embedder: StudentEmbedder        # student -> embeddings comparable with the teacher's
    history: tuple[dict[str, Any], ...]
    val_cosine_before: float
    val_cosine: float
    val_cosine_centered_before: float
    val_cosine_centered: float
    hidden_pairs: LayerPairs
    n_train: int
    n_val: int
    token_embeddings: str = "trained"  # what was done with the student's token table

    @property
    def loss_curve(self) -> list[float]:
        """The training loss of each epoch."""
        return [float(h["train_loss"]) for h in self.history]

    def __str__(self) -> str:
        pairs = ", ".join(f"{s}->{t}" for s, t in self.hidden_pairs) or "none"
        return (f"distilled on {self.n_train} texts ({len(self.history)} epochs, loss "
                f"{self.loss_curve[0]:.4g} -> {self.loss_curve[-1]:.4g}); held-out cosine to "
                f"the teacher on {self.n_val} texts {self.val_cosine_before:.3f} -> "
                f"{self.val_cosine:.3f} (centered {self.val_cosine_centered_before:.3f} -> "
                f"{self.val_cosine_centered:.3f}); hidden-state pairs: {pairs}; token "
                f"embeddings {self.token_embeddings}")


class _EmbeddingKD(Callback):
    """The loss ``fit`` calls and, at each epoch's end, the held-out cosine to the teacher."""

    def __init__(self, teacher: _Encoder, trainee: _Trainee, config: EmbeddingDistillConfig,
                 pairs: LayerPairs, val: TextBatches) -> None:
        self.teacher, self.trainee, self.config, self.pairs, self.val = (
            teacher, trainee, config, pairs, val)
        self.pooled_loss = EMBEDDING_LOSSES.get(config.loss)

    def loss(self, out: tuple[Tensor, tuple[Tensor, ...] | None], target: Tensor,
             batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        emb, states = out
        pooled = self.pooled_loss(emb, target.to(emb.device))
        terms = {"embedding": pooled.detach()}
        if not self.pairs:
            return pooled, terms
        with torch.no_grad():
            _, teacher_states = self.teacher(batch, hidden=True)
        assert states is not None and teacher_states is not None
        mask = batch.get("attention_mask")
        mask = None if mask is None else mask.to(emb.device)
        hidden = torch.stack([
            hidden_state_loss(self._projected(s, states[s]), teacher_states[t], mask)
            for s, t in self.pairs]).mean()
        terms["hidden"] = hidden.detach()
        return pooled + self.config.hidden_weight * hidden, terms

    def _projected(self, index: int, state: Tensor) -> Tensor:
        key = str(index)
        return self.trainee.projections[key](state) if key in self.trainee.projections else state

    def on_train_start(self, state: TrainState) -> None:
        self.teacher.base.to(next(state.model.parameters()).device)

    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None:
        raw, centered = held_out_cosine(self.trainee.embedder, self.val)
        metrics["val_cosine"], metrics["val_cosine_centered"] = raw, centered


@torch.no_grad()
def held_out_cosine(embedder: nn.Module, val: TextBatches) -> tuple[float, float]:
    """(mean cosine, centered mean cosine) of ``embedder`` on ``val``'s batches against the
    teacher embeddings they carry as targets. ``embedder`` is evaluated in eval mode."""
    was_training = embedder.training
    embedder.eval()
    try:
        student = np.concatenate([embedder(batch).float().cpu().numpy() for batch, _ in val])
    finally:
        embedder.train(was_training)
    teacher = np.concatenate([t.float().cpu().numpy() for _, t in val])
    mean = teacher.mean(axis=0, keepdims=True)
    return mean_cosine(student, teacher), mean_cosine(student - mean, teacher - mean)


def _split(texts: list[str], val_texts: Any, config: EmbeddingDistillConfig
           ) -> tuple[list[str], list[str] | TextBatches]:
    """(train, held-out): ``val_texts`` when given, else a seeded ``val_fraction`` of texts."""
    if isinstance(val_texts, TextBatches):
        return texts, val_texts
    if val_texts is not None:
        return texts, check_texts("val_texts", val_texts)
    train, val = held_out_split(len(texts), config.val_fraction, config.train.seed)
    return [texts[i] for i in train], [texts[i] for i in val]


def _batches(source: Any, name: str, *, tokenizer: Any, model: nn.Module,
             config: EmbeddingDistillConfig, targets: Callable[[Batch], Tensor]) -> TextBatches:
    """``source`` (strings, or already-made ``TextBatches``) as batches whose targets are
    the teacher's pooled embeddings."""
    if isinstance(source, TextBatches):
        if len(source) == 0:
            raise DataFormatError(f"{name} holds no batches; distillation needs text")
        return TextBatches(source.inputs(), [targets(b) for b in source.inputs()])
    if tokenizer is None:
        raise ConfigError(f"{name} is text: pass tokenizer= (the teacher's) to turn it into "
                          "token ids, or pass torchslim.transformers.text_batches(...)")
    return text_batches(tokenizer, source, model=model, batch_size=config.batch_size,
                        max_length=config.max_length, targets=targets)


def _check_vocab(batches: Sequence[TextBatches], models: dict[str, nn.Module]) -> None:
    top = max(int(b["input_ids"].max()) for data in batches for b in data.inputs())
    for role, model in models.items():
        vocab = getattr(unwrap(model).config, "vocab_size", None)
        if vocab is not None and top >= vocab:
            raise ConfigError(f"the tokenizer gives token id {top} but the {role}'s vocabulary "
                              f"has {vocab} entries; teacher and student must read the same "
                              "tokenizer's ids")


def _pairs_for(spec: bool | LayerPairs, n_student: int, n_teacher: int) -> LayerPairs:
    """The hidden-state pairs to match, checked against the models' hidden-state counts
    (``n`` = layers + 1: index 0 is the embedding output)."""
    if spec is False:
        return ()
    pairs = uniform_layer_map(n_student - 1, n_teacher - 1) if spec is True else spec
    for s, t in pairs:  # type: ignore[union-attr]
        if s >= n_student or t >= n_teacher:
            raise ConfigError(f"hidden_states pair {s}:{t} is out of range: the student has "
                              f"hidden states 0..{n_student - 1}, the teacher 0..{n_teacher - 1}"
                              " (0 = embeddings, i = layer i)")
    return tuple(pairs)  # type: ignore[arg-type]


def _build(student: nn.Module, teacher: _Encoder, config: EmbeddingDistillConfig,
           probe: Batch) -> tuple[_Trainee, LayerPairs]:
    """One probe batch through both models gives the widths; a projection (student width
    -> teacher width) wherever they differ: the pooled output and each hidden pair."""
    student_encoder = _Encoder(student)
    was_training = student_encoder.base.training
    student_encoder.base.eval()
    with torch.no_grad():
        s_last, s_states = student_encoder(probe, hidden=True)
        t_last, t_states = teacher(probe, hidden=True)
    student_encoder.base.train(was_training)
    assert s_states is not None and t_states is not None
    pairs = _pairs_for(config.hidden_states, len(s_states), len(t_states))
    d_s, d_t = s_last.shape[-1], t_last.shape[-1]
    projection = nn.Linear(d_s, d_t) if d_s != d_t else None
    projections: dict[str, nn.Module] = {}
    for s, t in pairs:
        if s_states[s].shape[-1] != t_states[t].shape[-1] and str(s) not in projections:
            projections[str(s)] = nn.Linear(s_states[s].shape[-1], t_states[t].shape[-1])
    embedder = StudentEmbedder(student, pooling=config.pooling, projection=projection)
    return _Trainee(embedder, projections, hidden=bool(pairs)), pairs


def distill_embeddings(teacher: nn.Module, student: nn.Module, texts: Sequence[str] | TextBatches,
                       *, tokenizer: Any = None, config: EmbeddingDistillConfig | None = None,
                       val_texts: Sequence[str] | TextBatches | None = None,
                       **options: Any) -> EmbeddingDistillResult:
    """Train a copy of ``student`` to give the teacher's sentence embeddings on ``texts``.

    ``teacher`` and ``student``: ``transformers`` models (or ``TextModel``s) reading the
    same token ids. ``texts``: the user's plain strings (tokenized with ``tokenizer``, its
    special tokens and attention masks; a tokenizer without a pad token pads with its
    end-of-sequence token) or ``TextBatches``. ``val_texts``: held-out text for the
    cosines (default: a seeded ``val_fraction`` of ``texts``). ``options`` override fields
    of ``config`` (``loss=``, ``pooling=``, ``hidden_states=``, ``batch_size=``, ...) or of its
    training schedule (``epochs=``, ``lr=``, ``seed=``, ``threads=``, ...). The student and
    teacher are left unchanged; the trained copy is ``result.student``.
    """
    config = _with_options(config or EmbeddingDistillConfig(), options)
    for role, model in (("teacher", teacher), ("student", student)):
        if not isinstance(model, nn.Module) or getattr(unwrap(model), "config", None) is None:
            raise ConfigError(f"{role} must be a transformers model (or a TextModel), not "
                              f"{type(model).__name__}")
    trained = copy.deepcopy(student)
    teacher_encoder = _Encoder(teacher)
    with frozen([teacher_encoder.base]):
        train, val = _data(texts, val_texts, tokenizer=tokenizer, config=config,
                           student=trained, teacher=teacher_encoder)
        _check_vocab([train, val], {"teacher": teacher, "student": trained})
        trainee, pairs = _build(trained, teacher_encoder, config, train.inputs()[0])
        before = held_out_cosine(trainee.embedder, val)
        kd = _EmbeddingKD(teacher_encoder, trainee, config, pairs, val)
        with _token_table_frozen(trained, teacher, config.token_embeddings) as table_frozen:
            history = fit(trainee, Shuffled(train), config=config.train, loss_fn=kd.loss,
                          callbacks=[kd])
    trained.train(student.training)
    trainee.embedder.train(student.training)
    update_(trained, distillation=Distillation(
        teachers=1, teacher_weights=(1.0,), config=_jsonable(dataclasses.asdict(config)),
        adapters=tuple(f"hidden_{k}" for k in trainee.projections), history=tuple(history)))
    last = history[-1]
    result = EmbeddingDistillResult(
        student=trained, embedder=trainee.embedder, history=tuple(history),
        val_cosine_before=before[0], val_cosine=last["val_cosine"],
        val_cosine_centered_before=before[1], val_cosine_centered=last["val_cosine_centered"],
        hidden_pairs=pairs, n_train=_count(train), n_val=_count(val),
        token_embeddings="frozen" if table_frozen else "trained")
    logger.info("%s", result)
    return result


@contextlib.contextmanager
def _token_table_frozen(student: nn.Module, teacher: nn.Module, mode: str) -> Iterator[bool]:
    """The student's input token table kept out of training for the duration (``mode``
    "frozen", or "auto" when it equals the teacher's); yields whether it is."""
    table = _token_table(student)
    if mode == "auto":
        other = _token_table(teacher)
        mode = "frozen" if (table is not None and other is not None
                            and table.shape == other.shape
                            and torch.equal(table.detach().cpu(), other.detach().cpu())) \
            else "trained"
    if mode != "frozen" or table is None or not table.requires_grad:
        yield mode == "frozen" and table is not None
        return
    table.requires_grad_(False)
    try:
        yield True
    finally:
        table.requires_grad_(True)


def _token_table(model: nn.Module) -> nn.Parameter | None:
    base = _Encoder(model).base
    get = getattr(base, "get_input_embeddings", None)
    table = get() if callable(get) else None
    return getattr(table, "weight", None)


def _data(texts: Any, val_texts: Any, *, tokenizer: Any, config: EmbeddingDistillConfig,
          student: nn.Module, teacher: _Encoder) -> tuple[TextBatches, TextBatches]:
    """(train, held-out) batches with the student's inputs, targets the teacher's pooled
    embeddings (computed once: the teacher is frozen and text is not augmented)."""
    if isinstance(texts, TextBatches):
        if val_texts is None:
            raise ConfigError("texts are TextBatches: pass the held-out ones as val_texts=")
        train_src, val_src = texts, val_texts
    else:
        train_src, val_src = _split(check_texts("texts", texts), val_texts, config)
    kwargs = dict(tokenizer=tokenizer, config=config,
                  model=TextModel(_Encoder(student).base, output="hidden"),
                  targets=_teacher_embeddings(teacher, config.pooling))
    return _batches(train_src, "texts", **kwargs), _batches(val_src, "val_texts", **kwargs)


def _with_options(config: EmbeddingDistillConfig, options: dict[str, Any]
                  ) -> EmbeddingDistillConfig:
    if not isinstance(config, EmbeddingDistillConfig):
        raise ConfigError(f"config must be an EmbeddingDistillConfig, not {type(config).__name__}")
    own = {f.name for f in dataclasses.fields(EmbeddingDistillConfig)} - {"train"}
    schedule = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - own - schedule)
    if unknown:
        raise ConfigError(f"distill_embeddings: unknown option(s) {unknown}; allowed: "
                          f"{', '.join(sorted(own | schedule))}")
    train = dataclasses.replace(config.train,
                                **{k: v for k, v in options.items() if k in schedule})
    return dataclasses.replace(config, train=train,
                               **{k: v for k, v in options.items() if k in own})


def _teacher_embeddings(teacher: _Encoder, pooling: str) -> Callable[[Batch], Tensor]:
    @torch.no_grad()
    def embed(batch: Batch) -> Tensor:
        last, _ = teacher(batch, hidden=False)
        mask = batch.get("attention_mask")
        return pool(last, None if mask is None else mask.to(last.device), pooling).float().cpu()
    return embed


def _count(batches: TextBatches) -> int:
    return sum(int(b["input_ids"].shape[0]) for b in batches.inputs())
