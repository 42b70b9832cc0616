"""The distillation losses, as plain functions of tensors.

- KD (Hinton et al. 2015): ``T² · KL(softmax(t/T) ‖ softmax(s/T))``, batch mean. The T²
  keeps the gradient's scale independent of T.
- FitNets hints (Romero et al. 2015): mean squared error between feature maps, after the
  student's has gone through an adapter (see ``features.py``) and both share a size.
- Attention transfer (Zagoruyko & Komodakis 2017): ``A = normalize(Σ_c F_c²)`` per
  spatial position; mean squared error between student and teacher maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["kd_loss", "soft_kd_loss", "soft_targets", "hint_loss", "attention_map",
           "attention_loss", "align_spatial"]


def soft_targets(teacher_logits: Sequence[Tensor], weights: Sequence[float],
                 temperature: float) -> Tensor:
    """The weighted mixture of the teachers' softened distributions, (B, C)."""
    probs = [w * F.softmax(t.float() / temperature, dim=1)
             for t, w in zip(teacher_logits, weights)]
    return torch.stack(probs).sum(0) / float(sum(weights))


def soft_kd_loss(student_logits: Tensor, target_probs: Tensor, temperature: float) -> Tensor:
    """``T² · KL(target ‖ softmax(s/T))``, batch mean, for given target probabilities."""
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(log_p, target_probs, reduction="batchmean") * temperature ** 2


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton's KD term: ``T² · KL(softmax(t/T) ‖ softmax(s/T))``, reduction batchmean."""
    return soft_kd_loss(student_logits, F.softmax(teacher_logits.float() / temperature, dim=1),
                        temperature)


def align_spatial(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two (B, C, H, W) maps to the other's H×W (4-D only)."""
    if student.dim() != 4 or teacher.dim() != 4 or student.shape[-2:] == teacher.shape[-2:]:
        return student, teacher
    size = (min(student.shape[-2], teacher.shape[-2]), min(student.shape[-1], teacher.shape[-1]))
    return F.adaptive_avg_pool2d(student, size), F.adaptive_avg_pool2d(teacher, size)


def hint_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """FitNets: MSE between an (adapted) student map and the teacher's, spatially aligned."""
    s, t = align_spatial(student_features, teacher_features)
    return F.mse_loss(s, t.detach())


def attention_map(features: Tensor, p: int = 2) -> Tensor:
    """``normalize(Σ_c |F_c|^p)`` flattened over positions: (B, C, H, W) -> (B, H·W)."""
    return F.normalize(features.float().abs().pow(p).mean(1).flatten(1), dim=1)


def attention_loss(student_features: Tensor, teacher_features: Tensor, p: int = 2) -> Tensor:
    """Attention transfer: MSE between the students' and the teacher's attention maps.
    Channel counts may differ; spatial sizes are aligned by pooling."""
    s, t = align_spatial(student_features, teacher_features)
    return (attention_map(s, p) - attention_map(t.detach(), p)).pow(2).mean()
