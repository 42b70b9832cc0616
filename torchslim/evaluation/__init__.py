"""Evaluate any ``Session`` the way a deployment team would.

``evaluate(session, data)`` measures accuracy (top-1/5, per class, confusion), agreement
with a reference, latency percentiles and throughput per batch size, size and peak memory,
and returns an ``EvalResult`` whose ``to_dict()`` is a report.json candidate. The same
code measures the PyTorch model and every exported artifact, so their numbers compare.

``data`` yields ``(inputs, target)`` batches. ``inputs`` is what the model takes: one
tensor, a tuple of tensors or a dict of tensors by input name, of any dtypes (token ids
stay integers). ``target`` is one class label per sample for a classifier; anything else
(embeddings to match, masks, None) is measured by a ``metric=`` such as ``output_cosine``,
whose named figures land in ``EvalResult.metrics``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchslim import config
from torchslim._progress import track
from torchslim.errors import ConfigError
from torchslim.evaluation.latency import (Batch, as_arrays, batch_size_of, concat,
                                          measure_latency, take, tile_batch)
from torchslim.evaluation.memory import measure_peak_memory
from torchslim.evaluation.metrics import (Metric, agreement, confusion_matrix, mean_cosine,
                                          output_cosine, per_class_accuracy, run_metric,
                                          topk_accuracy)
from torchslim.evaluation.model_stats import (count_macs, count_nonzero, count_params,
                                              onnx_param_counts, state_dict_bytes)
from torchslim.evaluation.result import EvalResult
from torchslim.evaluation.timing import Ratio, Timings, interleaved_speedups, time_interleaved
from torchslim.runtime.base import Session

__all__ = ["EvalResult", "evaluate", "measure_latency", "measure_peak_memory",
           "topk_accuracy", "per_class_accuracy", "confusion_matrix", "agreement",
           "mean_cosine", "Metric", "output_cosine", "count_params", "count_nonzero",
           "count_macs", "time_interleaved", "interleaved_speedups", "Timings", "Ratio"]

logger = logging.getLogger(__name__)


@dataclass
class _Collected:
    outputs: np.ndarray          # (N, ...) the session's first output
    targets: np.ndarray | None   # (N, ...) or None when the data yields None
    samples: Batch               # the first samples of the inputs, for timing


def _split(batch: Any) -> tuple[Any, Any]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ConfigError(f"each batch must be (inputs, target), got {type(batch).__name__}"
                          + (f" of length {len(batch)}" if isinstance(batch, (tuple, list))
                             else "") + "; inputs may be a tensor, a tuple or a dict")
    return batch[0], batch[1]


def _target(target: Any, n: int) -> np.ndarray | None:
    if target is None:
        return None
    array = np.asarray(as_arrays(target))
    if array.ndim == 0 or array.shape[0] != n:
        raise ConfigError(f"a batch of {n} samples came with targets of shape {array.shape}; "
                          "give one target per sample (or None)")
    return array


def _collect(session: Session, data: Iterable, keep: int) -> _Collected:
    """Run ``session`` over ``data``, keeping the first ``keep`` samples for timing."""
    outputs, targets, kept = [], [], []
    n_kept = 0
    total = len(data) if hasattr(data, "__len__") else None
    for batch in track(data, description=f"evaluating {session.name}", total=total):
        inputs, target = _split(batch)
        feed = as_arrays(inputs)
        n = batch_size_of(feed)
        out = np.asarray(session.run(feed))
        if out.ndim == 0 or out.shape[0] != n:
            raise ConfigError(f"{session.name} returned shape {out.shape} for a batch of {n}; "
                              "the first output needs one row per sample")
        outputs.append(out)
        targets.append(_target(target, n))
        if n_kept < keep:
            kept.append(take(feed, keep - n_kept))
            n_kept += batch_size_of(kept[-1])
    if not outputs:
        raise ConfigError("the data yielded no batches; pass a DataLoader of (inputs, target) "
                          "batches")
    given = [t is not None for t in targets]
    if any(given) and not all(given):
        raise ConfigError("some batches have targets and some None; give every batch a "
                          "target or none")
    joined = np.concatenate(targets) if all(given) else None
    return _Collected(np.concatenate(outputs), joined, concat(kept))


def _labels(collected: _Collected) -> np.ndarray | None:
    """The targets as one integer class label per sample, or None when they are not."""
    t = collected.targets
    if t is None or t.dtype.kind not in "iu" or t.reshape(len(t), -1).shape[1] != 1:
        return None
    return t.reshape(-1).astype(np.int64)


def _compare(outputs: np.ndarray, labels: np.ndarray | None, reference: EvalResult | None
             ) -> tuple[float | None, float | None, np.ndarray | None]:
    """``(agreement, cosine, reference outputs)`` against ``reference``; agreement only for
    class scores."""
    if reference is None:
        return None, None, None
    if reference.logits is None:
        raise ConfigError(f"reference {reference.name!r} carries no logits (a result read "
                          "from JSON); pass the EvalResult returned by evaluate()")
    ref = reference.logits
    if ref.shape != outputs.shape:
        raise ConfigError(f"reference {reference.name!r} has outputs of shape "
                          f"{ref.shape} but this run produced {outputs.shape}; "
                          "evaluate both on the same data in the same order")
    a, b = ref.reshape(len(ref), -1), outputs.reshape(len(outputs), -1)
    return (agreement(a, b) if labels is not None else None), mean_cosine(a, b), ref


def _as_torch(batch: Batch) -> Any:
    if isinstance(batch, dict):
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in batch)
    return torch.from_numpy(np.ascontiguousarray(batch))


def _model_stats(session: Session, model: nn.Module | None, sample: Batch
                 ) -> dict[str, int | None]:
    """params / nonzero / macs / bytes from the model, else from the ONNX artifact."""
    stats: dict[str, int | None] = dict.fromkeys(("params", "nonzero_params", "macs", "bytes"))
    artifact = session.artifact
    if model is not None:
        stats["params"], stats["nonzero_params"] = count_params(model), count_nonzero(model)
        try:
            stats["macs"] = count_macs(model, example_inputs=_as_torch(take(sample, 1)))
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


def _classification(outputs: np.ndarray, labels: np.ndarray | None,
                    class_names: Sequence[str] | None) -> dict[str, Any]:
    """top1/top5/per_class/worst_class/confusion, all empty when there are no labels."""
    if labels is None:
        return {"top1": None, "top5": None, "per_class": [], "worst_class": -1,
                "confusion": []}
    logits = outputs.reshape(len(outputs), -1)
    num_classes = logits.shape[1]
    if class_names is not None and len(class_names) != num_classes:
        raise ConfigError(f"{len(class_names)} class names for {num_classes} model outputs")
    preds = logits.argmax(axis=1)
    per_class = per_class_accuracy(preds, labels, num_classes)
    return {"top1": topk_accuracy(logits, labels, 1), "top5": topk_accuracy(logits, labels, 5),
            "per_class": per_class.tolist(), "worst_class": _worst_class(per_class),
            "confusion": confusion_matrix(preds, labels, num_classes).tolist()}


def _peak_memory(session: Session, samples: Batch, batch: int, extra: dict[str, Any]
                 ) -> int | None:
    """Peak memory at ``batch``; the probe feeds one float input, so other inputs are
    skipped with the reason in ``extra``."""
    if not isinstance(samples, np.ndarray) or samples.dtype.kind != "f":
        extra["peak_mem_skipped"] = ("the memory probe feeds one float input; this model "
                                     "takes other inputs")
        logger.warning("peak memory not measured for %s: %s", session.name,
                       extra["peak_mem_skipped"])
        return None
    peak = measure_peak_memory(session, tile_batch(samples, batch))
    if peak is not None:
        extra["peak_mem_batch"] = batch
    return peak


def evaluate(session: Session, data: Iterable, *, name: str | None = None,
             reference: EvalResult | None = None, batch_sizes: Sequence[int] = (1, 32),
             repeats: int = 20, warmup: int = 3, model: nn.Module | None = None,
             measure_memory: bool = True, class_names: Sequence[str] | None = None,
             metric: Metric | None = None) -> EvalResult:
    """Measure ``session`` on ``data``, an iterable of ``(inputs, target)`` batches.

    ``inputs``: a tensor, a tuple or a dict of tensors (any dtypes). With one integer
    class label per sample as the target, the classification figures are measured; any
    other target needs ``metric`` (see ``Metric``; ``output_cosine`` compares with float
    targets or the reference), whose figures go to ``EvalResult.metrics``. ``reference``
    (an earlier result of this process) adds output cosine, and agreement for
    classifiers. ``model`` gives exact params/MACs; for a torch session its own model is
    used, for an ONNX artifact params come from its initializers. Latency is timed on real
    samples from ``data`` at each of ``batch_sizes``; peak memory at the largest.
    """
    if not batch_sizes:
        raise ConfigError("batch_sizes is empty; pass e.g. (1, 32)")
    if model is None and isinstance(getattr(session, "model", None), nn.Module):
        model = session.model  # type: ignore[attr-defined]
    largest = max(int(b) for b in batch_sizes)
    collected = _collect(session, data, keep=largest)
    labels = _labels(collected)
    if labels is None and metric is None:
        shape = None if collected.targets is None else collected.targets.shape
        raise ConfigError(f"the targets (shape {shape}) are not one class label per sample; "
                          "pass metric=output_cosine (or your own Metric) to measure these "
                          "outputs")
    figures = _classification(collected.outputs, labels, class_names)
    agree, cosine, ref_outputs = _compare(collected.outputs, labels, reference)
    extra: dict[str, Any] = {}
    if metric is not None:
        extra["metrics"] = run_metric(metric, collected.outputs, collected.targets, ref_outputs)
    latency_ms, items_per_s = measure_latency(session, collected.samples,
                                              batch_sizes=batch_sizes, repeats=repeats,
                                              warmup=warmup)
    stats = _model_stats(session, model, collected.samples)
    peak = _peak_memory(session, collected.samples, largest, extra) if measure_memory \
        else None
    if class_names is not None:
        extra["class_names"] = list(class_names)
    return EvalResult(
        name=name or session.name, runtime=session.runtime, precision=session.precision,
        threads=session.threads, **figures, agreement=agree, cosine=cosine,
        latency_ms=latency_ms, items_per_s=items_per_s, peak_mem_bytes=peak,
        artifact=None if session.artifact is None else str(session.artifact),
        n=len(collected.outputs), machine=config.machine(session.threads), extra=extra,
        logits=collected.outputs, **stats)
