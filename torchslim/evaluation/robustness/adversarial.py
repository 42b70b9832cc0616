"""White-box L-inf attacks (FGSM, PGD) on a float torch model, kept as arrays to transfer.

Both attacks work in pixel units: the normalised batch is mapped back to [0, 1], the
perturbation ``delta`` obeys ``|delta| <= eps`` per pixel and ``pixels + delta`` stays in
[0, 1], and the model sees ``(pixels + delta - mean) / std`` (the gradient flows through
the normalisation). The adversarial batches come back normalised, like the loader's, so
any ``Session`` (ONNX Runtime, OpenVINO, torch) can be scored on them: that is the
transfer attack. ``eps = 0`` returns the input batch itself, so predictions cannot move.

PGD (Madry et al., 2018): a seeded uniform start in the eps-ball, ``steps`` signed-gradient
steps of ``step_ratio * eps / steps``, each projected back onto the ball and the pixel range.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torchslim._registry import Registry
from torchslim.errors import ConfigError
from torchslim.evaluation.robustness._pixels import Stat, channel_stat, check_images

__all__ = ["ATTACKS", "AttackSpec", "AdversarialSet", "fgsm", "pgd", "attack", "make_adversarial"]

# name -> fn(model, pixels, labels, spec, mean, std, generator) -> adversarial pixels
AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, "AttackSpec", torch.Tensor,
                     torch.Tensor, torch.Generator], torch.Tensor]
ATTACKS: Registry[AttackFn] = Registry("attack")


@dataclass(frozen=True, kw_only=True)
class AttackSpec:
    """One attack setting: ``eps`` in pixel units [0, 1], ``steps`` (1 for FGSM)."""

    attack: str
    eps: float
    steps: int = 1
    step_ratio: float = 2.5   # PGD step = step_ratio * eps / steps

    def __post_init__(self) -> None:
        ATTACKS.get(self.attack)
        if not 0 <= self.eps <= 1:
            raise ConfigError(f"eps={self.eps} must be in [0, 1] (pixel units; 8/255 = 0.031)")
        if self.steps < 1:
            raise ConfigError(f"steps={self.steps} must be >= 1")

    @property
    def key(self) -> str:
        """``"fgsm eps=2/255"``; ``"pgd-5 eps=..."`` names PGD's step count too."""
        in_255 = self.eps * 255
        eps = f"{round(in_255):d}/255" if abs(in_255 - round(in_255)) < 1e-6 else f"{self.eps:.4g}"
        name = self.attack if self.attack == "fgsm" else f"{self.attack}-{self.steps}"
        return f"{name} eps={eps}"

    def to_dict(self) -> dict[str, float | int | str]:
        return {"attack": self.attack, "eps": round(self.eps, 6), "steps": self.steps}


@dataclass
class AdversarialSet:
    """Adversarial batches made white-box on ``source``, by attack key, normalised like
    ``x``; ``y`` are the true labels. Score any session on ``images[key]`` to transfer."""

    source: str
    specs: list[AttackSpec]
    images: dict[str, np.ndarray] = field(repr=False)
    y: np.ndarray = field(repr=False)


@contextlib.contextmanager
def _attack_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen weights for the duration: only the input gets a gradient
    (no weight gradients, so none of oneDNN's NHWC weight-gradient kernels run)."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _input_grad(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor,
                mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """d(sum of cross-entropy) / d(pixels), through the normalisation."""
    pixels = pixels.detach().requires_grad_(True)
    logits = model((pixels - mean) / std)
    loss = F.cross_entropy(logits.reshape(logits.shape[0], -1), labels, reduction="sum")
    (grad,) = torch.autograd.grad(loss, pixels)
    return grad


@ATTACKS.register("fgsm")
def _fgsm(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, spec: AttackSpec,
          mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Goodfellow et al. (2015): one step of eps along the sign of the input gradient."""
    grad = _input_grad(model, pixels, labels, mean, std)
    return (pixels + spec.eps * grad.sign()).clamp_(0.0, 1.0)


@ATTACKS.register("pgd")
def _pgd(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, spec: AttackSpec,
         mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    lo, hi = (pixels - spec.eps).clamp(0.0, 1.0), (pixels + spec.eps).clamp(0.0, 1.0)
    step = spec.step_ratio * spec.eps / spec.steps
    start = torch.rand(pixels.shape, generator=generator, dtype=pixels.dtype) * 2 - 1
    adv = torch.minimum(torch.maximum(pixels + spec.eps * start, lo), hi)
    for _ in range(spec.steps):
        grad = _input_grad(model, adv, labels, mean, std)
        adv = torch.minimum(torch.maximum(adv + step * grad.sign(), lo), hi)  # project
    return adv


def attack(model: nn.Module, x: np.ndarray, y: np.ndarray, spec: AttackSpec, *, mean: Stat,
           std: Stat, seed: int = 0, batch_size: int = 500) -> np.ndarray:
    """Normalised images ``x`` (N, C, H, W) under ``spec`` white-box on ``model``."""
    x = np.asarray(x, dtype=np.float32)
    check_images(x)
    if spec.eps == 0:
        return x  # nothing may move, not even by the rounding of the pixel round trip
    c = x.shape[1]
    m = torch.from_numpy(channel_stat(mean, c, "mean"))
    s = torch.from_numpy(channel_stat(std, c, "std"))
    fn = ATTACKS.get(spec.attack)
    generator = torch.Generator().manual_seed(seed)
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
    out = []
    with _attack_mode(model):
        for i in range(0, len(x), batch_size):
            pixels = (torch.from_numpy(x[i:i + batch_size]) * s + m).clamp_(0.0, 1.0)
            adv = fn(model, pixels, labels[i:i + batch_size], spec, m, s, generator)
            out.append(((adv - m) / s).detach().numpy())
    return np.concatenate(out) if out else x.copy()


def fgsm(model: nn.Module, x: np.ndarray, y: np.ndarray, *, eps: float, mean: Stat, std: Stat,
         batch_size: int = 500) -> np.ndarray:
    return attack(model, x, y, AttackSpec(attack="fgsm", eps=eps), mean=mean, std=std,
                  batch_size=batch_size)


def pgd(model: nn.Module, x: np.ndarray, y: np.ndarray, *, eps: float, mean: Stat, std: Stat,
        steps: int = 5, step_ratio: float = 2.5, seed: int = 0,
        batch_size: int = 500) -> np.ndarray:
    return attack(model, x, y, AttackSpec(attack="pgd", eps=eps, steps=steps,
                                          step_ratio=step_ratio),
                  mean=mean, std=std, seed=seed, batch_size=batch_size)


def make_adversarial(model: nn.Module, x: np.ndarray, y: np.ndarray, specs: Sequence[AttackSpec],
                     *, mean: Stat, std: Stat, source: str = "baseline", seed: int = 0,
                     batch_size: int = 500) -> AdversarialSet:
    """Every attack in ``specs`` white-box on ``model``, kept for transfer."""
    images = {s.key: attack(model, x, y, s, mean=mean, std=std, seed=seed,
                            batch_size=batch_size) for s in specs}
    return AdversarialSet(source=source, specs=list(specs), images=images,
                          y=np.asarray(y, dtype=np.int64))
