"""``distill(student, teacher, data, config)`` and the teacher-assistant chain."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from torch import Tensor, nn

from torchslim._record import Distillation, update_
from torchslim.data import DataBundle
from torchslim.distillation.config import DistillConfig
from torchslim.distillation.distiller import Distiller
from torchslim.distillation.teachers import frozen, teacher_weights
from torchslim.errors import ConfigError
from torchslim.train import fit

__all__ = ["distill", "distill_chain"]

logger = logging.getLogger(__name__)

def distill(student: nn.Module, teacher: nn.Module | Sequence[nn.Module],
            data: DataBundle | Iterable[tuple[Tensor, Tensor]],
            config: DistillConfig = DistillConfig()) -> nn.Module:
    """Train a copy of ``student`` to imitate ``teacher`` (one module, or several whose soft
    targets are mixed) and return it; ``student`` and the teachers are left unchanged.

    ``data`` is a ``DataBundle`` (its ``val`` split gives per-epoch validation top-1 and the
    multi-teacher weights) or a training loader of (x, y) batches. The returned student's
    ``record_of(student).distillation`` holds the teacher weights used, the config and the
    per-epoch history with every loss term (``train_kd``, ``train_ce``, ``train_hint``, ...).
    """
    if not isinstance(config, DistillConfig):
        raise ConfigError(f"config must be a torchslim.DistillConfig, not {type(config).__name__}")
    teachers = [teacher] if isinstance(teacher, nn.Module) else list(teacher)
    if not teachers or not all(isinstance(t, nn.Module) for t in teachers):
        raise ConfigError("teacher must be an nn.Module or a non-empty list of them")
    train, val = (data.train, data.val) if isinstance(data, DataBundle) else (data, None)
    trained = copy.deepcopy(student)
    with frozen(teachers):
        weights = teacher_weights(teachers, config.teacher_weights, val)
        distiller = Distiller(trained, teachers, weights, config, _probe(val, train))
        try:
            history = fit(distiller.module, distiller.train_loader(train), config=config.train,
                          val=val, loss_fn=distiller.loss, callbacks=[distiller])
        finally:
            distiller.close()
    trained.train(student.training)
    update_(trained, distillation=Distillation(
        teachers=len(teachers), teacher_weights=tuple(weights),
        adapters=tuple(sorted(distiller.module.adapters.keys())),
        config=_jsonable(asdict(config)), history=tuple(history)))
    logger.info("distilled %s from %d teacher(s): val top-1 %s", type(student).__name__,
                len(teachers), history[-1].get("val_top1") if history else None)
    return trained


def distill_chain(teacher: nn.Module, chain: Sequence[nn.Module],
                  data: DataBundle | Iterable[tuple[Tensor, Tensor]],
                  config: DistillConfig | Sequence[DistillConfig] = DistillConfig()
                  ) -> list[nn.Module]:
    """Teacher-assistant distillation (Mirzadeh et al. 2020) in one call: ``teacher`` teaches
    ``chain[0]`` (an assistant), which then teaches ``chain[1]``, and so on. Returns the
    trained models in order; the last one is the student. ``config`` is one DistillConfig
    for every link or one per link."""
    configs = [config] * len(chain) if isinstance(config, DistillConfig) else list(config)
    if not chain:
        raise ConfigError("chain is empty; pass [assistant, student]")
    if len(configs) != len(chain):
        raise ConfigError(f"{len(configs)} configs for a chain of {len(chain)} models; "
                          "pass one DistillConfig, or one per model")
    trained: list[nn.Module] = []
    current = teacher
    for model, link_config in zip(chain, configs):
        current = distill(model, current, data, link_config)
        trained.append(current)
    return trained


def _probe(val: Iterable[Any] | None, train: Iterable[Any]) -> Tensor | dict[str, Tensor]:
    """A few real inputs, to learn the shapes of hinted layers (a dict of token tensors
    for a text model)."""
    x = next(iter(val if val is not None else train))[0]
    return {k: v[:4] for k, v in x.items()} if isinstance(x, Mapping) else x[:4]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
