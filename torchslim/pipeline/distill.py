"""What ``torchslim distill`` and a recipe's distill stage do: which student, and how it
learns (``DistillPlan``); ``DISTILL`` is the one table of their options."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torchslim.distillation import DistillConfig, EmbeddingDistillConfig, StudentConfig
from torchslim.pipeline.options import OptionTable, option
from torchslim.train import TrainConfig

__all__ = ["DISTILL", "DISTILL_EMBEDDINGS", "DistillPlan"]


@dataclass(frozen=True, kw_only=True)
class DistillPlan:
    student: StudentConfig
    config: DistillConfig   # its ``train`` is the student's training schedule


def _distill_plan(table: OptionTable, v: dict[str, Any]) -> DistillPlan:
    train = TrainConfig(**table.kwargs(TrainConfig, v))
    return DistillPlan(student=StudentConfig(**table.kwargs(StudentConfig, v)),
                       config=DistillConfig(**table.kwargs(DistillConfig, v), train=train))


def _student(name: str | None) -> str | None:
    return None if name == "teacher" else name


PAIRS = "STUDENT_LAYER:TEACHER_LAYER; repeat for several pairs."
DISTILL = OptionTable("distill", (
    option("student", StudentConfig, field="model", parse=_student, cli_type=str,
           cli_default="resnet8", help="Zoo model name (e.g. resnet8), or 'teacher' for the "
           "teacher's architecture scaled by --width-mult."),
    option("width", StudentConfig, recipe=False, help="Student base width (ResNets)."),
    option("width_mult", StudentConfig, default=0.5, cli_default=None,
           help="Scale every width of the student (0.5 halves)."),
    option("depth_mult", StudentConfig, help="Scale the student's depth (ResNets)."),
    option("epochs", TrainConfig, default=3, cli_default=6),
    option("lr", TrainConfig),
    option("temperature", DistillConfig, help="Softens teacher and student outputs."),
    option("alpha", DistillConfig, help="Weight of the KD term; 1 - alpha goes to the labels."),
    option("max_steps_per_epoch", TrainConfig, flag=None),
    option("alpha_schedule", DistillConfig, recipe=False, help="constant, warmup or decay."),
    option("feature", DistillConfig, field="features", recipe=False, help=PAIRS),
    option("feature_weight", DistillConfig, recipe=False),
    option("attention", DistillConfig, recipe=False, help=PAIRS),
    option("attention_weight", DistillConfig, recipe=False),
    # in a recipe: the teacher's logits are computed once over the training images, which
    # therefore must not be augmented (``data_args: {augment: false}``)
    option("cache_teacher", DistillConfig, flag="--cache-teacher",
           help="Run the teacher once (turns off flip augmentation)."),
    option("seed", TrainConfig, recipe=False),
), build=_distill_plan)


def _embedding_plan(table: OptionTable, v: dict[str, Any]) -> EmbeddingDistillConfig:
    base = EmbeddingDistillConfig()   # its schedule (AdamW) is the base, not TrainConfig()'s
    train = dataclasses.replace(base.train, **table.kwargs(TrainConfig, v))
    return EmbeddingDistillConfig(**table.kwargs(EmbeddingDistillConfig, v), train=train)


_TEXT_TRAIN = EmbeddingDistillConfig().train
# a recipe's distill_embeddings stage (transformers): the current model, e.g. head-pruned,
# learns the teacher's pooled embeddings on the data's text batches
DISTILL_EMBEDDINGS = OptionTable("distill_embeddings", (
    option("loss", EmbeddingDistillConfig, help="cosine, mse or cosine+mse on pooled outputs."),
    option("pooling", EmbeddingDistillConfig, help="mean (over the mask), cls or last."),
    option("hidden_states", EmbeddingDistillConfig, type=bool, default=False,
           help="Also match hidden states (uniform layer map, projections where widths differ)."),
    option("hidden_weight", EmbeddingDistillConfig),
    option("epochs", TrainConfig, default=_TEXT_TRAIN.epochs),
    option("lr", TrainConfig, default=_TEXT_TRAIN.lr),
    option("max_steps_per_epoch", TrainConfig, flag=None),
), build=_embedding_plan)
