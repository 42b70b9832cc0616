"""Knowledge distillation: a small student taught by a large teacher.

``distill(student, teacher, data, DistillConfig(...))`` trains a copy of the student with
temperature KD plus hard labels (alpha schedule), optional FitNets feature hints through
automatic adapters, attention transfer, and several teachers; ``distill_chain`` runs a
teacher -> assistant -> student chain. ``build_student`` / ``scaled_like`` make students.
For ``transformers`` models and plain text: ``distill_embeddings`` (pooled embeddings,
optional hidden-state matching) and ``distill_text_classifier`` (logits KD).
"""

from torchslim.distillation.api import distill, distill_chain
from torchslim.distillation.config import ALPHA_SCHEDULES, DistillConfig
from torchslim.distillation.distiller import Distiller, StudentWithAdapters
from torchslim.distillation.embedding import (EMBEDDING_LOSSES, EmbeddingDistillConfig,
                                              EmbeddingDistillResult, StudentEmbedder,
                                              distill_embeddings, hidden_state_loss,
                                              uniform_layer_map)
from torchslim.distillation.features import FeatureTaps, find_module, make_adapter
from torchslim.distillation.losses import (attention_loss, attention_map, hint_loss, kd_loss,
                                      soft_kd_loss, soft_targets)
from torchslim.distillation.students import StudentConfig, build_student, make_student, scaled_like
from torchslim.distillation.teachers import teacher_weights
from torchslim.distillation.text import TextKDResult, distill_text_classifier, text_train_config

__all__ = [
    "ALPHA_SCHEDULES",
    "DistillConfig",
    "Distiller",
    "EMBEDDING_LOSSES",
    "EmbeddingDistillConfig",
    "EmbeddingDistillResult",
    "FeatureTaps",
    "StudentConfig",
    "StudentEmbedder",
    "StudentWithAdapters",
    "TextKDResult",
    "attention_loss",
    "attention_map",
    "build_student",
    "distill",
    "distill_chain",
    "distill_embeddings",
    "distill_text_classifier",
    "find_module",
    "hidden_state_loss",
    "hint_loss",
    "kd_loss",
    "make_adapter",
    "make_student",
    "scaled_like",
    "soft_kd_loss",
    "soft_targets",
    "teacher_weights",
    "text_train_config",
    "uniform_layer_map",
]
