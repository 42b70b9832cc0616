"""``EvalResult``: one candidate's measurements, in the shape report.json promises.

Values are rounded to report precision when the object is built, so
``EvalResult.from_dict(r.to_dict()) == r`` holds for every result, not only for
hand-made ones.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from torchslim import _io
from torchslim.errors import ConfigError

__all__ = ["EvalResult"]

_FRACTION_DIGITS = 6  # 1e-6 resolves one sample in a million
_COSINE_DIGITS = 8  # cosine differences that matter sit in the 5th-7th decimal
_REQUIRED = ("name", "runtime", "precision", "top1")


def _round_fraction(x: float | None, digits: int = _FRACTION_DIGITS) -> float | None:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None  # JSON has no NaN; null means "not measured / no samples"
    return round(float(x), digits)


@dataclass
class EvalResult:
    """Accuracy, latency and size of one model on one runtime.

    ``per_class`` holds None for a class with no samples in the data. ``latency_ms`` and
    ``items_per_s`` are keyed by batch size as a string ("1", "32"). ``bytes`` is the
    artifact's size on disk (or the safetensors size of an in-memory torch model).
    A model evaluated without class labels (an encoder measured by a ``metric``) has
    ``top1``/``top5`` None and empty ``per_class``/``confusion``; its metric's figures are
    ``metrics`` (``extra["metrics"]`` in the JSON). ``logits`` (the first output, ``(N,
    ...)``) stay in memory only, to compare a later candidate against this one.
    """

    name: str
    runtime: str
    precision: str
    threads: int
    top1: float | None
    top5: float | None
    per_class: list[float | None]
    worst_class: int
    confusion: list[list[int]]
    agreement: float | None
    cosine: float | None
    latency_ms: dict[str, dict[str, float]]
    items_per_s: dict[str, float]
    bytes: int | None
    params: int | None
    nonzero_params: int | None
    macs: int | None
    peak_mem_bytes: int | None
    artifact: str | None
    n: int
    machine: dict
    extra: dict = field(default_factory=dict)
    logits: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.threads = int(self.threads)
        if "metrics" in self.extra:  # plain floats: JSON round-trips them exactly
            self.extra = {**self.extra, "metrics": {str(k): float(v) for k, v
                                                    in self.extra["metrics"].items()}}
        self.top1 = _round_fraction(self.top1)
        self.top5 = _round_fraction(self.top5)
        self.per_class = [_round_fraction(x) for x in self.per_class]
        self.worst_class = int(self.worst_class)
        self.confusion = [[int(v) for v in row] for row in self.confusion]
        self.agreement = _round_fraction(self.agreement)
        self.cosine = _round_fraction(self.cosine, _COSINE_DIGITS)
        self.latency_ms = {str(b): {k: round(float(v), 4) for k, v in s.items()}
                           for b, s in self.latency_ms.items()}
        self.items_per_s = {str(b): round(float(v), 2) for b, v in self.items_per_s.items()}
        for name in ("bytes", "params", "nonzero_params", "macs", "peak_mem_bytes"):
            value = getattr(self, name)
            setattr(self, name, None if value is None else int(value))
        self.artifact = None if self.artifact is None else str(self.artifact)
        self.n = int(self.n)

    @property
    def metrics(self) -> dict[str, float]:
        """The named figures of the ``metric`` this result was evaluated with."""
        return dict(self.extra.get("metrics") or {})

    def to_dict(self) -> dict[str, Any]:
        """The report.json form: every field except ``logits``, JSON-native types only."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "logits"}
        out["per_class"] = list(self.per_class)
        out["confusion"] = [list(row) for row in self.confusion]
        out["latency_ms"] = {b: dict(s) for b, s in self.latency_ms.items()}
        out["items_per_s"] = dict(self.items_per_s)
        out["machine"] = dict(self.machine)
        out["extra"] = dict(self.extra)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        """Rebuild from a ``to_dict`` / report.json candidate.

        Keys this version does not know go into ``extra`` rather than being dropped, since
        the contract allows extra keys; missing optional keys become None or empty.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"a candidate must be a JSON object, got {type(d).__name__}")
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise ConfigError(f"candidate {d.get('name', '?')!r} lacks keys {missing}; "
                              "was it written by torchslim?")
        known = {f.name for f in fields(cls)} - {"logits"}
        defaults: dict[str, Any] = {"threads": 0, "top5": d["top1"], "per_class": [],
                                    "worst_class": -1, "confusion": [], "latency_ms": {},
                                    "items_per_s": {}, "n": 0, "machine": {}}
        kwargs = {name: d.get(name, defaults.get(name)) for name in known - {"extra"}}
        extra = dict(d.get("extra") or {})
        extra.update({k: v for k, v in d.items() if k not in known})
        return cls(**kwargs, extra=extra)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``to_dict()`` as JSON, atomically."""
        return _io.write_json(path, self.to_dict())
