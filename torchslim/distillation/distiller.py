"""The Distiller: a student (plus its feature adapters) trained by ``fit`` with the
distillation loss. The teachers stay outside the trained module, in eval mode, and run
under ``no_grad``; their weights never change.

``fit`` builds its optimizer from ``model.parameters()``, so the student and its adapters
live in one module (``StudentWithAdapters``) whose forward is the student's: validation
accuracy is the student's, and the adapters are trained with it. The adapters are dropped
when training ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchslim.distillation.config import DistillConfig
from torchslim.distillation.features import FeatureTaps, make_adapter
from torchslim.distillation.losses import attention_loss, hint_loss, soft_kd_loss, soft_targets
from torchslim.distillation.teachers import CachedTeacherLoader
from torchslim.train import Callback, TrainState

__all__ = ["Distiller", "StudentWithAdapters"]


class StudentWithAdapters(nn.Module):
    """The module ``fit`` trains: ``student`` and one adapter per feature hint."""

    def __init__(self, student: nn.Module, adapters: dict[str, nn.Module]) -> None:
        super().__init__()
        self.student = student
        self.adapters = nn.ModuleDict(adapters)

    def forward(self, x: Tensor) -> Tensor:
        return self.student(x)


def _adapter_key(student_layer: str, teacher_layer: str) -> str:
    return f"{student_layer}->{teacher_layer}".replace(".", "_")


class Distiller(Callback):
    """Builds the trained module, the loss ``fit`` calls, and tracks training progress
    (for the alpha schedule) as a ``fit`` callback."""

    def __init__(self, student: nn.Module, teachers: Sequence[nn.Module], weights: Sequence[float],
                 config: DistillConfig, probe: Tensor) -> None:
        self.teachers, self.weights, self.config = list(teachers), list(weights), config
        hinted = [*config.features, *config.attention]
        self.student_taps = FeatureTaps(student, [s for s, _ in hinted], role="student")
        try:
            self.teacher_taps = FeatureTaps(self.teachers[0], [t for _, t in hinted],
                                            role="teacher")
            self.module = StudentWithAdapters(student, self._adapters(student, probe))
        except BaseException:
            self.close()  # never leave a hook on the user's teacher
            raise
        self.cache: CachedTeacherLoader | None = None
        self.progress = 0.0

    def _adapters(self, student: nn.Module, probe: Tensor) -> dict[str, nn.Module]:
        """Run one batch through student and teacher to learn each hinted layer's shape."""
        if not self.config.features:
            return {}
        was_training = student.training
        student.eval()
        with torch.no_grad():
            student(probe)
            self.teachers[0](probe)
        student.train(was_training)
        adapters = {_adapter_key(s, t): make_adapter(tuple(self.student_taps[s].shape),
                                                     tuple(self.teacher_taps[t].shape))
                    for s, t in self.config.features}
        self.student_taps.clear()
        self.teacher_taps.clear()
        return adapters

    def train_loader(self, loader: Any) -> Iterable[tuple[Tensor, Tensor]]:
        """The loader ``fit`` should iterate: the original, or one with cached logits."""
        if self.config.cache_teacher:
            self.cache = CachedTeacherLoader(loader, self.teachers)
            return self.cache
        return loader

    # ------------------------------------------------------------------ fit callback
    def on_train_start(self, state: TrainState) -> None:
        # data-parallel on GPUs, fit moved the student to its rank's device
        device = next(state.model.parameters()).device
        for teacher in self.teachers:
            teacher.to(device)

    def on_step_end(self, state: TrainState) -> None:
        self.progress = state.step / max(state.total_steps, 1)

    def on_train_end(self, state: TrainState) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook (idempotent)."""
        for taps in (getattr(self, "student_taps", None), getattr(self, "teacher_taps", None)):
            if taps is not None:
                taps.remove()

    # ------------------------------------------------------------------ the loss
    def loss(self, out: Tensor, y: Tensor, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.config
        alpha = cfg.alpha_at(self.progress)
        ce = F.cross_entropy(out, y, label_smoothing=cfg.train.label_smoothing)
        kd = torch.zeros(())
        if alpha > 0 or cfg.features or cfg.attention:  # the teachers' forward fills the taps
            targets = soft_targets(self._teacher_logits(x), self.weights, cfg.temperature)
            kd = soft_kd_loss(out, targets, cfg.temperature)
        total = alpha * kd + (1.0 - alpha) * ce
        terms: dict[str, Tensor] = {"ce": ce.detach(), "kd": kd.detach(),
                                    "alpha": torch.tensor(alpha)}
        if cfg.features:
            hint = torch.stack([hint_loss(self._adapted(s, t), self.teacher_taps[t])
                                for s, t in cfg.features]).sum()
            total = total + cfg.feature_weight * hint
            terms["hint"] = hint.detach()
        if cfg.attention:
            at = torch.stack([attention_loss(self.student_taps[s], self.teacher_taps[t])
                              for s, t in cfg.attention]).sum()
            total = total + cfg.attention_weight * at
            terms["attention"] = at.detach()
        return total, terms

    def _teacher_logits(self, x: Tensor) -> list[Tensor]:
        if self.cache is not None:
            return [logits.to(x.device) for logits in self.cache.current]
        with torch.no_grad():
            return [t(x) for t in self.teachers]

    def _adapted(self, student_layer: str, teacher_layer: str) -> Tensor:
        adapter = self.module.adapters[_adapter_key(student_layer, teacher_layer)]
        return adapter(self.student_taps[student_layer])
