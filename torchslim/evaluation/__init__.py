"""Evaluate any ``Session`` the way a deployment team would.

``evaluate(session, data)`` measures accuracy (top-1/5, per class, confusion), agreement
with a reference, latency percentiles and throughput per batch size, size and peak memory,
and returns an ``EvalResult`` whose ``to_dict()`` is a report.json candidate. The same
code measures the PyTorch model and every exported artifact, so their numbers compare.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim import config
from torchslim._progress import track
from torchslim.errors import ConfigError
from torchslim.evaluation.latency import measure_latency, tile_batch
from torchslim.evaluation.memory import measure_peak_memory
from torchslim.evaluation.metrics import (agreement, confusion_matrix, mean_cosine,
                                        per_class_accuracy, topk_accuracy)
from torchslim.evaluation.model_stats import (count_macs, count_nonzero, count_params,
                                            onnx_param_counts, state_dict_bytes)
from torchslim.evaluation.result import EvalResult
from torchslim.evaluation.timing import Ratio, Timings, time_interleaved
from torchslim.runtime.base import Session

__all__ = ["EvalResult", "evaluate", "measure_latency", "measure_peak_memory",
           "topk_accuracy", "per_class_accuracy", "confusion_matrix", "agreement",
           "mean_cosine", "count_params", "count_nonzero", "count_macs", "time_interleaved",
           "Timings", "Ratio"]

logger = logging.getLogger(__name__)


def _as_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _collect(session: Session, data: Iterable, keep: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run ``session`` over ``data``: ``(logits, labels, first `keep` inputs)``."""
    logits, labels, kept = [], [], []
    n_kept = 0
    total = len(data) if hasattr(data, "__len__") else None
    for x, y in track(data, description=f"evaluating {session.name}", total=total):
        x = np.ascontiguousarray(_as_numpy(x), dtype=np.float32)
        out = np.asarray(session.run(x))
        logits.append(out.reshape(out.shape[0], -1))
        labels.append(_as_numpy(y).reshape(-1).astype(np.int64))
        if n_kept < keep:
            kept.append(x[: keep - n_kept])
            n_kept += kept[-1].shape[0]
    if not logits:
        raise ConfigError("the data yielded no batches; pass a DataLoader of (x, y) batches")
    return np.concatenate(logits), np.concatenate(labels), np.concatenate(kept)


def _compare(logits: np.ndarray, reference: EvalResult | None
             ) -> tuple[float | None, float | None]:
    """``(agreement, cosine)`` against ``reference``'s logits, or (None, None)."""
    if reference is None:
        return None, None
    if reference.logits is None:
        raise ConfigError(f"reference {reference.name!r} carries no logits (a result read "
                          "from JSON); pass the EvalResult returned by evaluate()")
    if reference.logits.shape != logits.shape:
        raise ConfigError(f"reference {reference.name!r} has outputs of shape "
                          f"{reference.logits.shape} but this run produced {logits.shape}; "
                          "evaluate both on the same data in the same order")
    return agreement(reference.logits, logits), mean_cosine(reference.logits, logits)


def _model_stats(session: Session, model: nn.Module | None, input_shape: tuple[int, ...]
                 ) -> dict[str, int | None]:
    """params / nonzero / macs / bytes from the model, else from the ONNX artifact."""
    stats: dict[str, int | None] = dict.fromkeys(("params", "nonzero_params", "macs", "bytes"))
    artifact = session.artifact
    if model is not None:
        stats["params"], stats["nonzero_params"] = count_params(model), count_nonzero(model)
        try:
            stats["macs"] = count_macs(model, input_shape)
        except Exception as e:  # an exotic forward should not cost the whole evaluation
            logger.warning("MACs not counted for %s: %s", type(model).__name__, e)
    elif artifact is not None and Path(artifact).suffix == ".onnx":
        stats["params"], stats["nonzero_params"] = onnx_param_counts(artifact)
    if artifact is not None and Path(artifact).is_file():
        stats["bytes"] = os.path.getsize(artifact)
    elif model is not None:
        try:
            stats["bytes"] = state_dict_bytes(model)
        except Exception as e:
            logger.warning("size not measured for %s: %s", type(model).__name__, e)
    return stats


def _worst_class(per_class: np.ndarray) -> int:
    if np.all(np.isnan(per_class)):
        return -1
    return int(np.nanargmin(per_class))


def evaluate(session: Session, data: Iterable, *, name: str | None = None,
             reference: EvalResult | None = None, batch_sizes: Sequence[int] = (1, 32),
             repeats: int = 20, warmup: int = 3, model: nn.Module | None = None,
             measure_memory: bool = True, class_names: Sequence[str] | None = None
             ) -> EvalResult:
    """Measure ``session`` on ``data`` (an iterable of ``(x, y)`` batches).

    ``reference`` (an earlier result of this process) adds agreement and output cosine.
    ``model`` gives exact params/MACs; for a torch session its own model is used, for an
    ONNX artifact params come from its initializers. Latency is timed on real samples from
    ``data`` at each of ``batch_sizes``; peak memory at the largest batch size.
    """
    if not batch_sizes:
        raise ConfigError("batch_sizes is empty; pass e.g. (1, 32)")
    if model is None and isinstance(getattr(session, "model", None), nn.Module):
        model = session.model  # type: ignore[attr-defined]
    largest = max(int(b) for b in batch_sizes)
    logits, labels, samples = _collect(session, data, keep=largest)
    num_classes = logits.shape[1]
    if class_names is not None and len(class_names) != num_classes:
        raise ConfigError(f"{len(class_names)} class names for {num_classes} model outputs")
    preds = logits.argmax(axis=1)
    per_class = per_class_accuracy(preds, labels, num_classes)
    agree, cosine = _compare(logits, reference)
    latency_ms, items_per_s = measure_latency(session, samples, batch_sizes=batch_sizes,
                                              repeats=repeats, warmup=warmup)
    stats = _model_stats(session, model, tuple(samples.shape[1:]))
    peak = measure_peak_memory(session, tile_batch(samples, largest)) if measure_memory \
        else None
    extra: dict[str, Any] = {"peak_mem_batch": largest} if peak is not None else {}
    if class_names is not None:
        extra["class_names"] = list(class_names)
    return EvalResult(
        name=name or session.name, runtime=session.runtime, precision=session.precision,
        threads=session.threads, top1=topk_accuracy(logits, labels, 1),
        top5=topk_accuracy(logits, labels, 5), per_class=per_class.tolist(),
        worst_class=_worst_class(per_class),
        confusion=confusion_matrix(preds, labels, num_classes).tolist(),
        agreement=agree, cosine=cosine, latency_ms=latency_ms, items_per_s=items_per_s,
        peak_mem_bytes=peak, artifact=None if session.artifact is None else str(session.artifact),
        n=int(labels.shape[0]), machine=config.machine(session.threads), extra=extra,
        logits=logits, **stats)
