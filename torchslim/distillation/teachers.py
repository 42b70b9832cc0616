"""The teacher side: frozen teachers, their weights, and logits cached for a whole epoch.

Several teachers give one soft target: the weighted mixture of their softened outputs.
The weights are given, uniform, proportional to each teacher's validation top-1
("accuracy"), or "learned": the mixture weights that maximise the likelihood of the
validation labels under the teachers' mixed predictions.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, default_collate

from torchslim.errors import ConfigError
from torchslim.train import accuracy
from torchslim.train.sharding import shard_loader

__all__ = ["frozen", "teacher_weights", "predict_logits", "CachedTeacherLoader"]


@contextlib.contextmanager
def frozen(teachers: Sequence[nn.Module]) -> Iterator[None]:
    """Teachers in eval mode for the duration (their previous modes restored afterwards).
    Their parameters are never handed to an optimizer and only run under no_grad."""
    modes = [t.training for t in teachers]
    for t in teachers:
        t.eval()
    try:
        yield
    finally:
        for t, mode in zip(teachers, modes):
            t.train(mode)


@torch.no_grad()
def predict_logits(model: nn.Module, data: Iterable[Any]) -> tuple[Tensor, Tensor]:
    """(logits (N, C), labels (N,)) of ``model`` over ``data`` in order; ``data`` yields
    (x, y, ...) batches."""
    logits, labels = [], []
    for batch in data:
        logits.append(model(batch[0]).float())
        labels.append(batch[1])
    return torch.cat(logits), torch.cat(labels)


def teacher_weights(teachers: Sequence[nn.Module], spec: tuple[float, ...] | str,
                    val: Iterable[Any] | None) -> list[float]:
    """One weight per teacher, summing to 1, from DistillConfig.teacher_weights."""
    n = len(teachers)
    if isinstance(spec, tuple):
        if len(spec) != n:
            raise ConfigError(f"teacher_weights has {len(spec)} numbers for {n} teachers; "
                              "give one weight per teacher")
        return [w / sum(spec) for w in spec]
    if spec == "uniform" or n == 1:
        return [1.0 / n] * n
    if val is None:
        raise ConfigError(f"teacher_weights={spec!r} needs the validation split (data.val)")
    if spec == "accuracy":
        accs = [accuracy(t, val) for t in teachers]
        return [a / sum(accs) for a in accs]
    return _learned_weights([predict_logits(t, val) for t in teachers])


def _learned_weights(outputs: list[tuple[Tensor, Tensor]], steps: int = 200) -> list[float]:
    """Mixture weights w = softmax(theta) minimising the NLL of the validation labels under
    sum_i w_i softmax(t_i): the teachers' share that predicts held-out labels best."""
    labels = outputs[0][1]
    probs = torch.stack([F.softmax(logits, dim=1) for logits, _ in outputs])  # (K, N, C)
    theta = torch.zeros(len(outputs), requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.05)
    for _ in range(steps):
        mix = (F.softmax(theta, 0)[:, None, None] * probs).sum(0)         # (N, C)
        loss = F.nll_loss(mix.clamp_min(1e-12).log(), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [float(w) for w in F.softmax(theta.detach(), 0)]


# teacher -> dataset -> (the teacher's parameter versions, its logits over the dataset):
# repeated distillations from one teacher on one dataset (seeds, methods, chains) run the
# teacher once. The versions key makes any in-place change to the teacher a cache miss.
_LOGITS: weakref.WeakKeyDictionary[nn.Module, weakref.WeakKeyDictionary[Any, Any]] = (
    weakref.WeakKeyDictionary())


def _versions(model: nn.Module) -> tuple[tuple[int, int], ...]:
    return tuple((t.data_ptr(), t._version) for t in model.state_dict().values())


def dataset_logits(teacher: nn.Module, dataset: Dataset, batch_size: int = 1000) -> Tensor:
    """The teacher's logits (N, C) over ``dataset`` in index order, computed once per
    (teacher weights, dataset) and then reused."""
    per_dataset = _LOGITS.setdefault(teacher, weakref.WeakKeyDictionary())
    hit = per_dataset.get(dataset)
    if hit is not None and hit[0] == _versions(teacher):
        return hit[1]
    with frozen([teacher]):
        logits = predict_logits(teacher, DataLoader(_Indexed(dataset), batch_size=batch_size))[0]
    per_dataset[dataset] = (_versions(teacher), logits)
    return logits


class _Indexed(Dataset):
    """(x, y, index) for each sample of ``dataset``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        x, y = self.dataset[i][:2]
        return x, y, i


class CachedTeacherLoader:
    """A training loader whose batches come with the teachers' logits, computed once.

    It draws indices from the original loader's own sampler, so it yields exactly the
    batches the original would (``fit`` re-seeds ``generator`` each epoch), and it sets
    ``current`` to the teachers' logits for the batch it is about to yield.
    """

    def __init__(self, loader: DataLoader, teachers: Sequence[nn.Module],
                 eval_batch_size: int = 1000) -> None:
        if not isinstance(loader, DataLoader):
            raise ConfigError(f"cache_teacher=True needs a torch DataLoader over an indexable "
                              f"dataset, not {type(loader).__name__}; or set cache_teacher=False")
        if loader.collate_fn is not default_collate:
            raise ConfigError("cache_teacher=True needs a training loader without random "
                              "augmentation (the cached logits would not match augmented "
                              "images): load the data with load_data(..., augment=False)")
        self.generator = loader.generator
        indexed = _Indexed(loader.dataset)
        self.logits = [dataset_logits(t, loader.dataset, eval_batch_size) for t in teachers]
        # the same sampler and generator: the loader draws its base seed from the generator
        # before the sampler shuffles, so both are needed for the original's batch order
        self._loader = DataLoader(indexed, batch_size=loader.batch_size, sampler=loader.sampler,
                                  generator=loader.generator, drop_last=loader.drop_last,
                                  num_workers=0)
        self.current: list[Tensor] = []

    def __len__(self) -> int:
        return len(self._loader)

    def shard_(self, rank: int, world_size: int) -> CachedTeacherLoader:
        """Yield only rank ``rank``'s share of each batch, with its logits (``fit`` under
        torchrun calls this); the batches are still drawn from the original sampler."""
        self._loader = shard_loader(self._loader, rank, world_size)
        return self

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y, index in self._loader:
            self.current = [logits[index] for logits in self.logits]
            yield x, y
