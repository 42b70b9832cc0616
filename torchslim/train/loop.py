"""The one training loop: plain training now; fine-tuning, QAT and distillation through
callbacks and a pluggable loss."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchslim import _progress
from torchslim.errors import CheckpointError, ConfigError, TrainingDivergedError
from torchslim.train import distributed
from torchslim.train import state as train_state
from torchslim.train.callbacks import Callback, TrainState
from torchslim.train.checkpoint import load_state_
from torchslim.train.config import TrainConfig
from torchslim.train.masks import KeepMasks, masked_layers

logger = logging.getLogger(__name__)

# loss_fn(outputs, targets, inputs) -> loss, or (loss, {"term": value, ...}) to log terms.
LossFn = Callable[[Tensor, Tensor, Tensor], "Tensor | tuple[Tensor, dict[str, Tensor]]"]

__all__ = ["Callback", "TrainConfig", "TrainState", "LossFn", "accuracy", "fit"]


def fit(model: nn.Module, train: Iterable[tuple[Tensor, Tensor]], *,
        config: TrainConfig = TrainConfig(), val: Iterable[tuple[Tensor, Tensor]] | None = None,
        loss_fn: LossFn | None = None, callbacks: Sequence[Callback] = (),
        checkpoint_dir: str | os.PathLike[str] | None = None,
        checkpoint_meta: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Train ``model`` in place and return the per-epoch history.

    With ``checkpoint_dir``, the weights (``last.safetensors`` + sidecar) and the training
    state are saved after each epoch, and a later call with the same directory resumes
    after the last finished epoch.

    Under ``torchrun`` (or with ``config.distributed``) every rank calls ``fit`` with the
    same global data and trains data-parallel on its share (``torchslim.train.distributed``);
    otherwise nothing distributed runs.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    if config.channels_last and (unsafe := _nhwc_unsafe_convs(model)):
        logger.warning("training %s in NCHW, not channels_last: torch 2.14's oneDNN "
                       "corrupts memory in the weight gradient of a strided 1x1 convolution "
                       "with fewer than 8 input channels in NHWC (%s)",
                       type(model).__name__, ", ".join(unsafe[:3]))
        config = dataclasses.replace(config, channels_last=False)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    # SingleProcess (every hook the identity) unless under torchrun or config.distributed
    strategy = distributed.strategy_for(config)
    train = strategy.shard(train)  # this rank's share of each global batch
    steps_per_epoch = _steps_per_epoch(train, config)
    optimizer = _optimizer(model, config)
    total = config.epochs * steps_per_epoch
    st = TrainState(model=model, optimizer=optimizer, scheduler=_scheduler(optimizer, config, total),
                    config=config, total_steps=total)
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    try:
        net = strategy.wrap(model)  # DDP; callbacks keep seeing st.model, the unwrapped one
        strategy.start(st, (lambda: _resume(st, ckpt)) if ckpt is not None else None)
        _train(st, net, strategy, train, val, loss_fn, callbacks, steps_per_epoch,
               ckpt, checkpoint_meta or {})
    finally:
        strategy.close()
    return st.history


def _train(st: TrainState, net: nn.Module, strategy: distributed.SingleProcess,
           train: Iterable[tuple[Tensor, Tensor]], val: Iterable[tuple[Tensor, Tensor]] | None,
           loss_fn: LossFn | None, callbacks: Sequence[Callback], steps_per_epoch: int,
           ckpt: Path | None, meta: dict[str, Any]) -> None:
    config, model = st.config, st.model
    loss_fn = loss_fn or _cross_entropy(config.label_smoothing)
    if config.keep_masks:
        if masked_layers(model) and not any(isinstance(cb, KeepMasks) for cb in callbacks):
            callbacks = [KeepMasks(), *callbacks]
    for cb in callbacks:
        cb.on_train_start(st)
    while st.epoch < config.epochs and not st.stop:
        metrics = _run_epoch(st, net, strategy, train, val, loss_fn, callbacks, steps_per_epoch)
        st.history.append(metrics)
        for cb in callbacks:
            cb.on_epoch_end(st, metrics)
        logger.info("epoch %d/%d  %s", st.epoch + 1, config.epochs, _fmt(metrics))
        st.epoch += 1
        if ckpt is not None:
            strategy.save(lambda: _save(st, ckpt, meta))  # rank 0 only, the others wait
    for cb in callbacks:
        cb.on_train_end(st)


def _nhwc_unsafe_convs(model: nn.Module) -> list[str]:
    """Convolutions whose NHWC backward crashes the process (heap corruption seen on an
    AVX2-only AMD EPYC: a 1x1 stride-2 conv with 2-6 input channels; 8 and 12 were fine)."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.weight.requires_grad
            and m.kernel_size == (1, 1) and max(m.stride) > 1 and m.in_channels < 8]


def _run_epoch(st: TrainState, net: nn.Module, strategy: distributed.SingleProcess,
               train: Iterable[tuple[Tensor, Tensor]],
               val: Iterable[tuple[Tensor, Tensor]] | None, loss_fn: LossFn,
               callbacks: Sequence[Callback], steps_per_epoch: int) -> dict[str, Any]:
    cfg, model = st.config, st.model
    _seed_epoch(train, cfg.seed, st.epoch)
    for cb in callbacks:
        cb.on_epoch_start(st)
    model.train()
    sums: dict[str, float] = {}
    seen, start = 0, time.perf_counter()
    batches = _progress.track(train, description=f"epoch {st.epoch + 1}/{cfg.epochs}",
                              total=steps_per_epoch)
    for i, (x, y) in enumerate(batches):
        if i >= steps_per_epoch:
            break
        if cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        out = net(x)
        loss, terms = _unpack(loss_fn(out, y, x))
        if not torch.isfinite(loss):
            raise TrainingDivergedError(f"loss became {loss.item()} at step {st.step}; "
                                     f"lower the learning rate (lr={cfg.lr})")
        st.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        st.optimizer.step()
        st.scheduler.step()
        strategy.after_step(model)  # e.g. BatchNorm statistics averaged over ranks
        st.step += 1
        n = len(y)
        seen += n
        for k, v in {"loss": loss, **terms}.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach() if isinstance(v, Tensor) else v) * n
        for cb in callbacks:
            cb.on_step_end(st)
    sums, seen = strategy.reduce(sums, seen)  # over every rank's share
    metrics: dict[str, Any] = {"epoch": st.epoch + 1, "lr": st.optimizer.param_groups[0]["lr"]}
    metrics.update({f"train_{k}": v / max(seen, 1) for k, v in sums.items()})
    if val is not None:
        metrics["val_top1"] = strategy.top1(model, val, channels_last=cfg.channels_last)
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    return metrics


def accuracy(model: nn.Module, data: Iterable[tuple[Tensor, Tensor]], *,
             channels_last: bool = False) -> float:
    """Top-1 of ``model`` in eval mode (restores the previous mode)."""
    correct, total = distributed.top1_counts(model, data, channels_last=channels_last)
    return correct / max(total, 1)


def _cross_entropy(label_smoothing: float) -> LossFn:
    def loss(out: Tensor, y: Tensor, _x: Tensor) -> Tensor:
        return F.cross_entropy(out, y, label_smoothing=label_smoothing)
    return loss


def _unpack(result: Any) -> tuple[Tensor, dict[str, Tensor]]:
    return result if isinstance(result, tuple) else (result, {})


def _steps_per_epoch(train: Iterable[Any], config: TrainConfig) -> int:
    try:
        n = len(train)  # type: ignore[arg-type]
    except TypeError:
        if config.max_steps_per_epoch is None:
            raise ConfigError("the training data has no len(); set max_steps_per_epoch") from None
        n = config.max_steps_per_epoch
    if n == 0:
        raise ConfigError("the training data is empty")
    return min(n, config.max_steps_per_epoch or n)


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on BN/bias parameters: decaying them only hurts accuracy.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig,
               total: int) -> torch.optim.lr_scheduler.LRScheduler:
    warmup = int(cfg.warmup_fraction * total) if cfg.schedule == "onecycle" else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _seed_epoch(train: Iterable[Any], seed: int, epoch: int) -> None:
    """Make each epoch's shuffle and augmentation a function of (seed, epoch) only, so a
    resumed run sees the same batches as an uninterrupted one."""
    torch.manual_seed(seed * 10_007 + epoch)
    generator = getattr(train, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(seed * 10_007 + epoch)


def _save(st: TrainState, directory: Path, meta: dict[str, Any]) -> None:
    # weights and training state as one unit (train.state): a kill never mixes epochs
    train_state.save_state(directory, {
        "epoch": st.epoch, "step": st.step, "history": st.history,
        "optimizer": st.optimizer.state_dict(), "scheduler": st.scheduler.state_dict(),
        "config": asdict(st.config)}, model=st.model,
        checkpoint_meta={"epoch": st.epoch, "history": st.history, **meta})


def _resume(st: TrainState, directory: Path) -> None:
    resume = train_state.load_resume(directory)
    if resume is None:
        return
    if resume.weights is None:
        raise CheckpointError(f"{resume.path} holds no weights; delete it to start training "
                              "from scratch")
    saved = resume.state
    load_state_(st.model, resume.weights, source=str(resume.path / train_state.WEIGHTS))
    st.optimizer.load_state_dict(saved["optimizer"])
    st.scheduler.load_state_dict(saved["scheduler"])
    st.epoch, st.step, st.history = saved["epoch"], saved["step"], saved["history"]
    logger.info("resumed from %s after epoch %d", directory, st.epoch)


def _fmt(metrics: dict[str, Any]) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in metrics.items() if k != "epoch")
