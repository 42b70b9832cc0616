"""Data-parallel training under ``torchrun``: one process per device, each on its share of
every global batch, gradients averaged by DDP, everything else identical by construction.

``fit`` asks ``strategy_for(config)`` for its strategy. In one process (no ``torchrun``
environment, no ``TrainConfig.distributed``) that is ``SingleProcess``, whose hooks change
nothing, so a single-process run is exactly what it was. Under ``torchrun`` (or with
``TrainConfig(distributed=DistributedConfig(...))``) it is ``DataParallel``:

* the process group starts once (gloo on CPU, NCCL on CUDA with one GPU per local rank);
* every rank draws the SAME global batches and keeps a strided, equal share of each
  (``torchslim.train.sharding``): the global batch stays what the loader says, and DDP's
  average of the ranks' mean gradients is the global batch's mean gradient;
* BatchNorm normalises with the global batch's statistics (``sync_batchnorm``, on CPU
  too), so a step is the math of one process on the whole batch;
* the model starts as rank 0's (every parameter and buffer broadcast). DDP does not
  broadcast buffers, which would overwrite every rank's observer statistics with rank
  0's: observers combine theirs (``torchslim.quant.distributed``, a model hook), and
  BatchNorm running statistics are averaged over ranks after every step;
* loss terms are summed over ranks (per-sample means over the global data) and so are the
  validation counts (each rank scores its share of every validation batch);
* callbacks see the unwrapped model; only rank 0 writes checkpoints (atomically; the
  others wait for it and fail with it); resume reads on rank 0 and broadcasts.

Every rank must call ``fit`` (and ``qat``, ``distill``, ``calibrate_``) with the same
global data and the same model: torchslim shards the data itself.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from torchslim.errors import ConfigError
from torchslim.train.collectives import (average_batchnorm_, broadcast_state_, on_main,
                                         sum_values, synced_batchnorm, to_cpu)
from torchslim.train.sharding import rows_of, shard, to_device
from torchslim.train.world import (DistributedConfig, World, current, is_main_process,
                                   under_torchrun)

if TYPE_CHECKING:
    from torchslim.train.callbacks import TrainState
    from torchslim.train.config import TrainConfig

__all__ = ["DistributedConfig", "World", "setup", "current", "under_torchrun",
           "is_main_process", "strategy_for", "SingleProcess", "DataParallel", "shard",
           "top1_counts", "register_model_hook", "launch", "relaunch"]

logger = logging.getLogger(__name__)

def setup(config: DistributedConfig | None) -> World | None:
    """Join (or reuse) the process group; None when this is the only process."""
    if (world := current()) is not None:
        return world
    if config is None and not under_torchrun():
        return None
    cfg = config or DistributedConfig()
    rank = cfg.rank if cfg.rank is not None else int(os.environ.get("RANK", 0))
    size = cfg.world_size if cfg.world_size is not None else int(os.environ.get("WORLD_SIZE", 1))
    local = cfg.local_rank if cfg.local_rank is not None else int(os.environ.get("LOCAL_RANK", 0))
    if size == 1:
        return None  # e.g. torchrun --nproc-per-node 1: nothing to share
    backend = cfg.backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ConfigError("backend='nccl' needs CUDA GPUs; use backend='gloo' on CPU")
        torch.cuda.set_device(local)
    timeout = timedelta(seconds=cfg.timeout_s)
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is not None and cfg.init_method == "env://":
        # torchrun restarts its workers against the same store, where the killed attempt's
        # keys (gloo's peer addresses) remain: a new worker that read one would connect to
        # a dead peer. One key prefix per attempt keeps the attempts apart.
        store, _, _ = next(dist.rendezvous(cfg.init_method, rank, size, timeout=timeout))
        dist.init_process_group(backend, store=dist.PrefixStore(f"torchslim/{restart}", store),
                                rank=rank, world_size=size, timeout=timeout)
    else:
        dist.init_process_group(backend, init_method=cfg.init_method, rank=rank,
                                world_size=size, timeout=timeout)
    atexit.register(_destroy)
    logger.info("rank %d of %d (%s, local rank %d)", rank, size, backend, local)
    return current()


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


@torch.inference_mode()
def top1_counts(model: nn.Module, data: Iterable[tuple[Tensor, Tensor]], *,
                channels_last: bool = False, world: World | None = None) -> tuple[int, int]:
    """(correct, total) top-1 counts of ``model`` in eval mode (the previous mode restored).

    With ``world``, each rank scores its strided share of every batch and the counts are
    summed over ranks: every sample is counted once. A batch shorter than the world runs
    whole on every rank (observers see the same number of batches everywhere) and counts
    on rank 0 only.
    """
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in data:
        counted = world is None or len(y) >= world.size or world.main
        if world is not None:
            x, y = to_device(rows_of((x, y), world, equal=False) or (x, y), world.device)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        hits = int((model(x).argmax(1) == y).sum())
        if counted:
            correct, total = correct + hits, total + len(y)
    model.train(was_training)
    if world is not None:
        correct, total = (int(v) for v in sum_values([correct, total], world))
    return correct, total


# ------------------------------------------------------------------ strategies
# fn(model, world) -> a context manager active while the model trains data-parallel
# (torchslim.quant.distributed registers one that makes observers combine their statistics)
_MODEL_HOOKS: list[Callable[[nn.Module, World], AbstractContextManager[Any]]] = []


def register_model_hook(fn: Callable[[nn.Module, World], AbstractContextManager[Any]]) -> None:
    """Have ``fn(model, world)`` entered around every data-parallel ``fit``."""
    if fn not in _MODEL_HOOKS:
        _MODEL_HOOKS.append(fn)


class SingleProcess:
    """One process: every hook leaves ``fit`` exactly as it was."""

    world: World | None = None

    def shard(self, data: Any) -> Any:
        return data

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def start(self, st: TrainState, resume: Callable[[], None] | None) -> None:
        if resume is not None:
            resume()

    def reduce(self, sums: dict[str, float], seen: int) -> tuple[dict[str, float], int]:
        return sums, seen

    def after_step(self, model: nn.Module) -> None: ...

    def top1(self, model: nn.Module, data: Any, *, channels_last: bool) -> float:
        correct, total = top1_counts(model, data, channels_last=channels_last)
        return correct / max(total, 1)

    def save(self, write: Callable[[], Any]) -> None:
        write()

    def close(self) -> None: ...


class DataParallel(SingleProcess):
    """DDP over the process group ``world``, the model's state kept identical on every rank."""

    def __init__(self, world: World, config: DistributedConfig) -> None:
        self.world, self.config = world, config
        self._hooks = contextlib.ExitStack()

    def shard(self, data: Any) -> Any:
        return shard(data, self.world)

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around ``model`` (moved to this rank's device); buffers are never broadcast."""
        from torch.nn.parallel import DistributedDataParallel

        model.to(self.world.device)
        if self.config.sync_batchnorm:
            self._hooks.enter_context(synced_batchnorm(model, self.world))
        for hook in _MODEL_HOOKS:
            self._hooks.enter_context(hook(model, self.world))
        cuda = self.world.device.type == "cuda"
        return DistributedDataParallel(
            model, device_ids=[self.world.device.index] if cuda else None,
            forward_sync_buffers=False, gradient_as_bucket_view=True,
            find_unused_parameters=self.config.find_unused_parameters)

    def start(self, st: TrainState, resume: Callable[[], None] | None) -> None:
        """Resume on rank 0 only, then give every rank rank 0's model and training state."""
        def read() -> dict[str, Any] | None:
            resume()  # type: ignore[misc]
            if st.epoch == 0:
                return None  # nothing saved yet
            return {"optimizer": to_cpu(st.optimizer.state_dict()),
                    "scheduler": st.scheduler.state_dict(), "epoch": st.epoch,
                    "step": st.step, "history": st.history}

        saved = on_main(read, self.world, "resume") if resume is not None else None
        broadcast_state_(st.model, self.world)
        if saved is not None and not self.world.main:
            st.optimizer.load_state_dict(saved["optimizer"])
            st.scheduler.load_state_dict(saved["scheduler"])
            st.epoch, st.step, st.history = saved["epoch"], saved["step"], saved["history"]

    def reduce(self, sums: dict[str, float], seen: int) -> tuple[dict[str, float], int]:
        total, *values = sum_values([seen, *sums.values()], self.world)
        return dict(zip(sums, values)), int(total)

    def after_step(self, model: nn.Module) -> None:
        average_batchnorm_(model, self.world)

    def top1(self, model: nn.Module, data: Any, *, channels_last: bool) -> float:
        correct, total = top1_counts(model, data, channels_last=channels_last, world=self.world)
        return correct / max(total, 1)

    def save(self, write: Callable[[], Any]) -> None:
        on_main(write, self.world, "write the checkpoint")

    def close(self) -> None:
        self._hooks.close()


def strategy_for(config: TrainConfig) -> SingleProcess:
    """``DataParallel`` under torchrun or with ``config.distributed``, else ``SingleProcess``."""
    world = setup(config.distributed)
    if world is None:
        return SingleProcess()
    return DataParallel(world, config.distributed or DistributedConfig())


# ------------------------------------------------------------------ launching
def launch(argv: Sequence[str], nproc: int, *, max_restarts: int = 0,
           module: str = "torchslim") -> int:
    """Run ``python -m <module> <argv>`` in ``nproc`` processes on this machine under
    torchrun (``--standalone``: a local rendezvous on a free port); its exit code."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(f"nproc={nproc!r} must be an integer >= 1")
    if max_restarts < 0:
        raise ConfigError(f"max_restarts={max_restarts} must be >= 0")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}", "-m", module, *argv]
    logger.info("launching %d processes: %s", nproc, " ".join(cmd))
    return subprocess.run(cmd, check=False).returncode


def relaunch(nproc: int, argv: Sequence[str] | None = None, *, option: str = "--nproc",
             max_restarts: int = 0) -> int:
    """What a command's ``--nproc N`` does: start this same command line (without the
    option) under torchrun in N processes; call it only when ``not under_torchrun()``."""
    args = list(sys.argv[1:] if argv is None else argv)
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return launch(kept, nproc, max_restarts=max_restarts)
