"""Who this process is in a data-parallel job: ``DistributedConfig`` (how to join the
process group) and ``World`` (this process's place in it). Below everything else of the
distributed strategy (``torchslim.train.distributed``), which builds on them, so that the
training config, the collectives and the sharding import these and not the strategy."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from torchslim.errors import ConfigError

__all__ = ["BACKENDS", "DistributedConfig", "World", "under_torchrun", "current",
           "is_main_process"]

BACKENDS = ("gloo", "nccl")
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True, kw_only=True)
class DistributedConfig:
    """How ``fit`` joins its process group. Under ``torchrun`` the defaults read it all from
    the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)."""

    backend: str | None = None      # None: "nccl" when CUDA is available, else "gloo"
    init_method: str = "env://"     # or "tcp://host:port" / "file:///path" with rank + world_size
    rank: int | None = None         # None: $RANK
    world_size: int | None = None   # None: $WORLD_SIZE
    local_rank: int | None = None   # None: $LOCAL_RANK (which GPU this process drives)
    timeout_s: float = 1800.0       # a rank that waits longer for the others fails
    # BatchNorm normalises with the GLOBAL batch's statistics (two small all-reduces per
    # layer and step): the math of one process; False: each rank's share's, as plain DDP
    sync_batchnorm: bool = True
    find_unused_parameters: bool = False  # DDP: for forwards that skip some parameters

    def __post_init__(self) -> None:
        if self.backend is not None and self.backend not in BACKENDS:
            raise ConfigError(f"backend={self.backend!r}; choose one of {BACKENDS} or None")
        for name in ("rank", "world_size", "local_rank"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < (1 if name == "world_size" else 0)):
                raise ConfigError(f"{name}={value!r} must be a non-negative integer "
                                  "(world_size >= 1) or None")
        if self.rank is not None and self.world_size is not None and self.rank >= self.world_size:
            raise ConfigError(f"rank={self.rank} must be < world_size={self.world_size}")
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout_s={self.timeout_s} must be > 0")


@dataclass(frozen=True)
class World:
    """This process's place in the group."""

    rank: int
    size: int
    local_rank: int
    device: torch.device            # where the model trains and collectives run

    @property
    def main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    """Whether torchrun (or another launcher with its environment) started this process."""
    return all(v in os.environ for v in _TORCHRUN_VARS)


def current() -> World | None:
    """The running group of more than one process, or None; never starts one."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    nccl = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", device.index or 0))
    return World(dist.get_rank(), dist.get_world_size(), local, device)


def is_main_process() -> bool:
    """True in a single process and on rank 0: the process that writes and reports."""
    world = current()
    return world is None or world.main
