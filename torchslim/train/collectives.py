"""The collectives the distributed strategy is built from: the same model everywhere,
sums of metrics, rank 0's work with its outcome on every rank, and BatchNorm over the
global batch.

Each takes the ``World`` (``torchslim.train.distributed``) it runs in; every rank must
call it, in the same order.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from torchslim.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from torchslim.train.world import World

__all__ = ["same_everywhere", "broadcast_object", "broadcast_state_", "sum_values",
           "on_main", "average_batchnorm_", "synced_batchnorm", "to_cpu"]


def same_everywhere(value: Any, what: str, world: World) -> None:
    """Raise on every rank if some rank's ``value`` differs from rank 0's."""
    values: list[Any] = [None] * world.size
    dist.all_gather_object(values, value)
    bad = next((r for r, v in enumerate(values) if v != values[0]), None)
    if bad is not None:
        first = _first_difference(values[0], values[bad])
        raise ConfigError(f"rank {bad} and rank 0 disagree on {what} ({first}); every rank "
                          "must build the same model with the same config")


def _first_difference(a: Any, b: Any) -> str:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return f"item {i}: {x!r} vs {y!r}"
        return f"{len(a)} items vs {len(b)}"
    return f"{a!r} vs {b!r}"


def broadcast_object(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank (pickled: keep it small, tensors on the CPU)."""
    box = [obj if world.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def broadcast_state_(module: nn.Module, world: World) -> None:
    """Give every rank rank 0's parameters and buffers, one flat broadcast per dtype."""
    state = module.state_dict()
    same_everywhere([(k, tuple(t.shape), str(t.dtype)) for k, t in state.items()],
                    f"the tensors of {type(module).__name__} (names, shapes, dtypes)", world)
    tensors = [t for t in state.values() if t.numel()]
    for dtype in dict.fromkeys(t.dtype for t in tensors):
        group = [t for t in tensors if t.dtype == dtype]
        flat = torch.cat([t.reshape(-1) for t in group]).to(world.device)  # logical order
        wire = flat.to(torch.uint8) if dtype == torch.bool else flat  # gloo has no bool
        dist.broadcast(wire, src=0)
        _unflatten_(group, wire.to(dtype))


def _unflatten_(tensors: Sequence[Tensor], flat: Tensor) -> None:
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view(t.shape))
        offset += t.numel()


def sum_values(values: Sequence[float], world: World) -> list[float]:
    """Each number summed over ranks (float64, so counts stay exact)."""
    t = torch.tensor(values, dtype=torch.float64, device=world.device)
    dist.all_reduce(t)
    return t.tolist()


def on_main(fn: Callable[[], Any], world: World, what: str) -> Any:
    """Run ``fn`` on rank 0 only; every rank returns its result or raises its error. The
    broadcast is the barrier: no rank goes on before rank 0 has finished."""
    result: Any = None
    if world.main:
        try:
            result = ("ok", fn())
        except Exception as e:  # noqa: BLE001 - raised again on every rank below
            result = ("error", f"{type(e).__name__}: {e}")
    result = broadcast_object(result, world)
    if result[0] == "error":
        raise CheckpointError(f"rank 0 failed to {what}: {result[1]}")
    return result[1]


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor on the CPU (for pickling across ranks)."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


@torch.no_grad()
def average_batchnorm_(model: nn.Module, world: World) -> None:
    """BatchNorm running statistics averaged over ranks: after each step, the EMA of the
    ranks' batch statistics (a no-op for synced BatchNorm, whose statistics are global;
    needed for unsynced BN and for the simulated conv+BN fold of QAT)."""
    stats = [buf for m in model.modules() if isinstance(m, _BatchNorm)
             for buf in (m.running_mean, m.running_var) if buf is not None]
    if not stats:
        return
    flat = torch.cat([s.reshape(-1).double() for s in stats]).to(world.device)
    dist.all_reduce(flat)
    _unflatten_(stats, (flat / world.size).to(stats[0].dtype))


@contextlib.contextmanager
def synced_batchnorm(model: nn.Module, world: World) -> Iterator[None]:
    """While active, every BatchNorm of ``model`` that normalises with batch statistics uses
    those of the GLOBAL batch (every rank's share), with gradients through them: the math
    of one process on the whole batch. torch's SyncBatchNorm does this on GPUs only."""
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for bn in layers:
        bn.forward = functools.partial(_global_batch_norm, bn)  # shadows the method
    try:
        yield
    finally:
        for bn in layers:
            del bn.forward


def _global_batch_norm(bn: _BatchNorm, x: Tensor) -> Tensor:
    batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    if not batch_stats:
        return type(bn).forward(bn, x)
    bn._check_input_dim(x)
    dims = [0, *range(2, x.dim())]
    shape = (1, -1) + (1,) * (x.dim() - 2)
    # Each rank's mean and variance by torch's stable two-pass var_mean, combined in float64
    # as sums of x and x^2: E[x^2] - E[x]^2 from float32 squares would lose a channel whose
    # variance is tiny next to its mean, and 1 / sqrt(var + eps) would amplify the loss.
    var_r, mean_r = torch.var_mean(x, dim=dims, correction=0)  # (C,), (C,)
    n_r = x.numel() // x.shape[1]
    mean_r, var_r = mean_r.double(), var_r.double()
    count = torch.full((1,), float(n_r), dtype=torch.float64, device=x.device)
    local = torch.cat([mean_r * n_r, (var_r + mean_r * mean_r) * n_r, count])  # (2C + 1,)
    total = _SumOverRanks.apply(local)  # (2C + 1,)
    c, n = x.shape[1], float(total[-1].detach())
    mean = total[:c] / n  # (C,)
    var = (total[c:2 * c] / n - mean * mean).clamp(min=0.0)  # biased, for normalising
    invstd = torch.rsqrt(var + bn.eps).to(x.dtype)
    y = (x - mean.to(x.dtype).reshape(shape)) * invstd.reshape(shape)
    if bn.affine:
        y = y * bn.weight.reshape(shape) + bn.bias.reshape(shape)
    if bn.training and bn.track_running_stats:
        _update_running_(bn, mean.detach(), var.detach() * n / max(n - 1.0, 1.0))
    return y


class _SumOverRanks(torch.autograd.Function):
    """All-reduce SUM with its gradient: every rank's output depends on every rank's input,
    so the gradient of each input is the sum over ranks of their output gradients."""

    @staticmethod
    def forward(ctx: Any, t: Tensor) -> Tensor:  # noqa: D102
        out = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # noqa: D102
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out


@torch.no_grad()
def _update_running_(bn: _BatchNorm, mean: Tensor, unbiased_var: Tensor) -> None:
    """What ``nn.BatchNorm`` does to its buffers, with the global batch's statistics."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average
            factor = 1.0 / float(bn.num_batches_tracked)
    bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype), alpha=factor)
    bn.running_var.mul_(1 - factor).add_(unbiased_var.to(bn.running_var.dtype), alpha=factor)
