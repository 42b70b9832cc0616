"""One fixed robustness sample, its corrupted and adversarial versions, scored per session.

``RobustnessSuite`` draws the stratified subset once, corrupts it once per (corruption,
severity), attacks it once white-box on the baseline's torch model, and then scores any
number of sessions on exactly the same arrays, so every candidate's figures pair with the
baseline's. ``suite.evaluate(session, baseline=block)`` returns a JSON-able block.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.evaluation.metrics import per_class_accuracy
from torchslim.evaluation.robustness._pixels import Stat, check_images
from torchslim.evaluation.robustness.adversarial import (AdversarialSet, AttackSpec, attack,
                                                         make_adversarial)
from torchslim.evaluation.robustness.calibration import calibration
from torchslim.evaluation.robustness.config import RobustnessConfig
from torchslim.evaluation.robustness.corruptions import CORRUPTIONS, corrupt
from torchslim.evaluation.robustness.flips import compare_predictions
from torchslim.runtime.base import Session

__all__ = ["RobustnessSuite", "stratified_subset", "collect_split", "attack_specs"]

logger = logging.getLogger(__name__)

# Corrupted subsets are kept between sessions up to this size, and recomputed (identically,
# being seeded) beyond it: 18 sets of 1,000 Fashion-MNIST images are 56 MB, of 224x224 RGB 11 GB.
CACHE_BYTES = 256 * 2**20


def collect_split(data: Iterable | tuple[Any, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` numpy from a loader of ``(x, y)`` batches, or from an ``(x, y)`` pair."""
    if isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], tuple):
        xs, ys = [data[0]], [data[1]]
    else:
        batches = list(data)
        if not batches:
            raise ConfigError("the data yielded no batches; pass a DataLoader of (x, y) batches")
        xs, ys = zip(*batches)
    x = np.concatenate([_numpy(b) for b in xs]).astype(np.float32, copy=False)
    y = np.concatenate([_numpy(b).reshape(-1) for b in ys]).astype(np.int64)
    if x.shape[0] != y.shape[0]:
        raise ConfigError(f"{x.shape[0]} images but {y.shape[0]} labels")
    return x, y


def _numpy(a: Any) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def stratified_subset(labels: np.ndarray, n: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` samples with each class in its share of ``labels``
    (largest remainders get the leftover places), drawn by ``seed``; all when n is None."""
    labels = np.asarray(labels).reshape(-1)
    if n is None or n >= labels.size:
        return np.arange(labels.size)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / labels.size                        # (K,) exact shares
    take = np.floor(quota).astype(np.int64)
    leftover = np.argsort(-(quota - take), kind="stable")[: n - int(take.sum())]
    take[leftover] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:t] for c, t in zip(classes, take)]
    return np.sort(np.concatenate(picked))


def attack_specs(config: RobustnessConfig) -> list[AttackSpec]:
    return [*(AttackSpec(attack="fgsm", eps=e) for e in config.fgsm_eps),
            *(AttackSpec(attack="pgd", eps=e, steps=config.pgd_steps,
                         step_ratio=config.pgd_step_ratio) for e in config.pgd_eps)]


def _fingerprint(labels: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()[:16]


class RobustnessSuite:
    """The robustness sample of one split and everything derived from it.

    ``data`` is a loader of normalised ``(x, y)`` batches (or an ``(x, y)`` pair);
    ``mean``/``std`` its normalisation (``DatasetInfo.mean``/``std``). ``attack_model``, the
    float torch baseline, makes the adversarial batches that every session is scored on
    (none without it: the block then has no ``adversarial`` figures).
    """

    def __init__(self, data: Iterable | tuple[Any, Any], *, mean: Stat, std: Stat,
                 config: RobustnessConfig | None = None, attack_model: nn.Module | None = None,
                 source: str = "baseline") -> None:
        self.config = config or RobustnessConfig()
        x, y = collect_split(data)
        check_images(x)
        self.split_n = int(y.size)
        keep = stratified_subset(y, self.config.n, self.config.seed)
        self.x, self.y = np.ascontiguousarray(x[keep]), y[keep]
        self.mean, self.std = mean, std
        self.attack_model = attack_model
        self.specs = attack_specs(self.config)
        sets = len(self.config.corruptions) * len(self.config.severities)
        self._cache = self.x.nbytes * sets <= CACHE_BYTES
        self._corrupted: dict[tuple[str, int], np.ndarray] = {}
        self.adversarial: AdversarialSet | None = None
        if attack_model is not None and self.specs:
            t0 = time.perf_counter()
            self.adversarial = make_adversarial(
                attack_model, self.x, self.y, self.specs, mean=mean, std=std, source=source,
                seed=self.config.seed, batch_size=self.config.batch_size)
            logger.info("adversarial batches on %s: %.1f s", source, time.perf_counter() - t0)

    def corrupted(self, name: str, severity: int) -> np.ndarray:
        """The subset under ``name`` at ``severity`` (normalised); the same arrays every call."""
        key = (name, severity)
        if key in self._corrupted:
            return self._corrupted[key]
        x = corrupt(self.x, name, severity, mean=self.mean, std=self.std, seed=self.config.seed)
        if self._cache:
            self._corrupted[key] = x
        return x

    def evaluate(self, session: Session, *, baseline: dict[str, Any] | None = None,
                 model: nn.Module | None = None,
                 clean: tuple[np.ndarray, np.ndarray] | None = None,
                 class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """The robustness block of ``session``; with ``baseline`` (the baseline's block), the
        changes against it and the paired flips.

        ``model`` (default: a torch session's own model) is attacked white-box as well,
        unless it is the suite's attack model. ``clean``: the ``(logits, labels)`` that
        ``evaluate`` already collected on the whole split; calibration and the flips then
        use them (more samples at no extra cost) instead of the subset.
        """
        t0 = time.perf_counter()
        cfg = self.config
        if model is None and isinstance(getattr(session, "model", None), nn.Module):
            model = session.model  # type: ignore[attr-defined]
        sub_logits = self._logits(session, self.x)
        clean_logits, clean_labels = clean if clean is not None else (sub_logits, self.y)
        clean_logits = np.asarray(clean_logits).reshape(len(clean_labels), -1)
        clean_labels = np.asarray(clean_labels, dtype=np.int64).reshape(-1)
        preds = clean_logits.argmax(axis=1)
        block: dict[str, Any] = {
            "session": session.name, "runtime": session.runtime,
            "sample": {"n": int(self.y.size), "of": self.split_n, "seed": cfg.seed,
                       "stratified": True},
            "clean_top1": _top1(sub_logits, self.y),
            "corruptions": self._corruption_block(session),
            "adversarial": self._adversarial_block(session, model),
            "calibration": calibration(clean_logits, clean_labels, cfg.bins),
            "per_class_top1": _per_class(preds, clean_labels, clean_logits.shape[1]),
            "paired": {"n": int(clean_labels.size), "labels_sha1": _fingerprint(clean_labels),
                       "predictions": preds.astype(int).tolist()},
            "flips": None}
        if baseline is not None:
            _add_deltas(block, baseline)
            block["flips"] = self._flips(baseline, preds, clean_labels,
                                         clean_logits.shape[1], class_names)
        block["seconds"] = round(time.perf_counter() - t0, 3)
        return block

    # ------------------------------------------------------------------ the parts
    def _logits(self, session: Session, x: np.ndarray) -> np.ndarray:
        bs = self.config.batch_size
        out = [np.asarray(session.run(np.ascontiguousarray(x[i:i + bs])))
               for i in range(0, len(x), bs)]
        return np.concatenate([o.reshape(o.shape[0], -1) for o in out])

    def _corruption_block(self, session: Session) -> dict[str, Any]:
        by: dict[str, Any] = {}
        for name in self.config.corruptions:
            levels = CORRUPTIONS.get(name).levels
            sev = {str(s): {"level": levels[s - 1] if s else None,
                            "top1": _top1(self._logits(session, self.corrupted(name, s)), self.y)}
                   for s in self.config.severities}
            by[name] = {"unit": CORRUPTIONS.get(name).unit, "severities": sev,
                        "mean_top1": _mean(v["top1"] for v in sev.values())}
        every = [v["top1"] for c in by.values() for v in c["severities"].values()]
        return {"mean_top1": _mean(every), "by_corruption": by}

    def _adversarial_block(self, session: Session, model: nn.Module | None
                           ) -> dict[str, Any] | None:
        adv = self.adversarial
        if adv is None:
            return None
        is_source = model is not None and model is self.attack_model
        white = self.config.white_box and model is not None and not is_source
        attacks = {}
        for spec in adv.specs:
            transfer = _top1(self._logits(session, adv.images[spec.key]), self.y)
            wb = transfer if is_source else (self._white_box(session, model, spec) if white
                                             else None)
            worst = transfer if wb is None else min(transfer, wb)
            attacks[spec.key] = {**spec.to_dict(), "transfer_top1": transfer,
                                 "white_box_top1": wb, "worst_top1": worst}
        return {"source": adv.source, "is_source": is_source, "attacks": attacks}

    def _white_box(self, session: Session, model: nn.Module, spec: AttackSpec) -> float | None:
        try:
            x = attack(model, self.x, self.y, spec, mean=self.mean, std=self.std,
                       seed=self.config.seed, batch_size=self.config.batch_size)
        except RuntimeError as e:  # e.g. a converted int8 torch model has no autograd
            logger.warning("no white-box %s on %s: %s", spec.key, session.name,
                           str(e).splitlines()[0] if str(e) else type(e).__name__)
            return None
        return _top1(self._logits(session, x), self.y)

    def _flips(self, baseline: dict[str, Any], preds: np.ndarray, labels: np.ndarray,
               num_classes: int, class_names: Sequence[str] | None) -> dict[str, Any]:
        paired = baseline.get("paired") or {}
        if paired.get("labels_sha1") != _fingerprint(labels):
            raise ConfigError(f"the baseline block's predictions are on other samples "
                              f"({paired.get('n')} vs {labels.size}); evaluate the baseline "
                              "and the candidate with the same suite and the same `clean` split")
        return compare_predictions(np.asarray(paired["predictions"]), preds, labels,
                                   num_classes=num_classes, alpha=self.config.alpha,
                                   holm=self.config.holm, class_names=class_names)


def _top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return round(float(np.mean(logits.argmax(axis=1) == labels)), 6) if labels.size else 0.0


def _per_class(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float | None]:
    acc = per_class_accuracy(preds, labels, num_classes)
    return [None if np.isnan(a) else round(float(a), 6) for a in acc]


def _mean(values: Iterable[float]) -> float | None:
    v = list(values)
    return round(float(np.mean(v)), 6) if v else None


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 6)


def _add_deltas(block: dict[str, Any], base: dict[str, Any]) -> None:
    """``delta_*`` = candidate - baseline, beside each figure both blocks have. Under
    attack the baseline's figure is its worst case (white-box on itself, being the source)."""
    block["delta_clean_top1"] = _delta(block["clean_top1"], base.get("clean_top1"))
    cor, base_cor = block["corruptions"], base.get("corruptions") or {}
    cor["delta_mean_top1"] = _delta(cor["mean_top1"], base_cor.get("mean_top1"))
    for name, c in cor["by_corruption"].items():
        bc = (base_cor.get("by_corruption") or {}).get(name, {})
        c["delta_mean_top1"] = _delta(c["mean_top1"], bc.get("mean_top1"))
        for s, v in c["severities"].items():
            v["delta"] = _delta(v["top1"], (bc.get("severities") or {}).get(s, {}).get("top1"))
    base_adv = (base.get("adversarial") or {}).get("attacks") or {}
    for key, a in ((block.get("adversarial") or {}).get("attacks") or {}).items():
        ba = base_adv.get(key, {})
        a["delta_transfer"] = _delta(a["transfer_top1"], ba.get("worst_top1"))
        a["delta_worst"] = _delta(a["worst_top1"], ba.get("worst_top1"))
    cal, base_cal = block["calibration"], base.get("calibration") or {}
    block["calibration"]["delta_ece"] = _delta(cal["ece"], base_cal.get("ece"))
    block["calibration"]["delta_nll"] = _delta(cal["nll"], base_cal.get("nll"))
