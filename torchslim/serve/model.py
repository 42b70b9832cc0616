"""One loaded version of a model: its session instances, the checks every request passes
before it may join a batch, the warm-up, and its batcher.

A request is checked in full before it is queued — input names, datatype (exactly the
signature's), rank and fixed dims, a batch of 1..max_batch_size rows, and no NaN/Inf in
float inputs unless the model allows them — so one bad request never fails the batch it
would have shared with others.

NaN/Inf rule: refused with 400 by default, because a classifier (every torchslim zoo
model) has no meaning for them and would silently answer NaN scores; set
``allow_nonfinite: true`` for a model that takes them on purpose (masks, padding).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from torchslim.runtime import Session, TensorSpec
from torchslim.runtime import open as open_session
from torchslim.runtime.base import describe_shape
from torchslim.serve.batcher import Batcher, BatchObserver
from torchslim.serve.config import ModelConfig
from torchslim.serve.errors import BadRequestError
from torchslim.serve.protocol import InferRequest, datatype_of, metadata_shape
from torchslim.serve.sources import VersionFiles

__all__ = ["ModelVersion", "Prepared", "PLATFORMS"]

logger = logging.getLogger(__name__)

# the protocol's "platform" for each runtime (Triton's names where it has one)
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "openvino": "openvino", "torch": "pytorch"}


@dataclass(frozen=True)
class Prepared:
    """A checked request, ready to queue: its feeds, rows, packing key and outputs."""

    feeds: dict[str, np.ndarray]
    rows: int
    key: Hashable
    outputs: tuple[tuple[str, bool], ...]   # (name, binary) in response order


class ModelVersion:
    """Sessions for one version of a model. Build with ``load`` (blocking: run it on a
    worker thread), then ``start`` on the event loop, ``retire`` to drain and close."""

    def __init__(self, config: ModelConfig, files: VersionFiles, sessions: Sequence[Session]):
        self.config = config
        self.name, self.version, self.files = config.name, files.version, files
        self.sessions = list(sessions)
        first = self.sessions[0]
        self.runtime, self.precision = first.runtime, first.precision
        self.inputs: tuple[TensorSpec, ...] = tuple(first.inputs)
        self.outputs: tuple[TensorSpec, ...] = tuple(first.outputs)
        self.batched = _takes_batches(self.inputs, self.outputs)
        self.max_batch_size = config.batching.max_batch_size if self.batched else 1
        self._dtypes = {s.name: _numpy_dtype(s) for s in self.inputs}
        self.batcher: Batcher | None = None

    @classmethod
    def load(cls, config: ModelConfig, files: VersionFiles) -> ModelVersion:
        """Open ``config.instances`` sessions on the artifact and warm every one up."""
        sessions: list[Session] = []
        try:
            # ONNX Runtime's idle threads busy-wait by default, taking the cores that the
            # event loop needs to parse the next requests: off in a server
            for _ in range(config.instances):
                sessions.append(open_session(files.artifact, config.runtime,
                                             threads=config.session_threads(), spin=False))
            version = cls(config, files, sessions)
            if config.warmup:
                version.warm_up()
        except BaseException:
            for session in sessions:
                session.close()
            raise
        return version

    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}"

    def warm_up(self) -> None:
        """Run every warm-up batch size once on every instance, so the first request at a
        size pays no allocation or kernel-selection cost."""
        sizes = self.config.batching.warmup_sizes() if self.batched else (1,)
        sizes = tuple(n for n in sizes if n <= self.max_batch_size)
        feeds = {n: self._zeros(n) for n in sizes}
        if any(f is None for f in feeds.values()):
            logger.info("%s: no warm-up (an input has a dynamic non-batch dim)", self.label)
            return
        for session in self.sessions:
            for n in sizes:
                session.infer(feeds[n])
        logger.info("%s: warmed up %d instance(s) at batch sizes %s", self.label,
                    len(self.sessions), list(sizes))

    def _zeros(self, rows: int) -> dict[str, np.ndarray] | None:
        out = {}
        for spec in self.inputs:
            if spec.shape is None:
                return None
            dims = spec.shape[1:] if self.batched else spec.shape
            if not all(isinstance(d, int) for d in dims):
                return None
            shape = (rows, *dims) if self.batched else tuple(dims)
            out[spec.name] = np.zeros(shape, dtype=self._dtypes[spec.name])
        return out

    def start(self, observer: BatchObserver) -> None:
        self.batcher = Batcher(self.sessions, self.config.batching, batched=self.batched,
                               label=self.label, observer=observer)
        self.batcher.start()

    async def retire(self) -> None:
        """Answer every queued request, then close the sessions."""
        if self.batcher is not None:
            await self.batcher.close()
        for session in self.sessions:
            session.close()
        logger.info("%s: unloaded", self.label)

    # ------------------------------------------------------------------ requests

    def prepare(self, request: InferRequest) -> Prepared:
        """Check ``request`` against the signature (BadRequestError naming the problem)."""
        names = [s.name for s in self.inputs]
        missing = [n for n in names if n not in request.inputs]
        unknown = [n for n in request.inputs if n not in names]
        if missing or unknown:
            raise BadRequestError(
                f"model {self.name!r} takes inputs {names}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unknown {unknown}" if unknown else ""))
        rows = {spec.name: self._check(spec, request.inputs[spec.name]) for spec in self.inputs}
        if self.batched and len(set(rows.values())) > 1:
            raise BadRequestError(f"inputs of one request must share the batch size, got {rows}")
        n = next(iter(rows.values())) if self.batched else 1
        feeds = {name: request.inputs[name] for name in names}
        key = tuple(a.shape[1:] if self.batched else a.shape for a in feeds.values())
        return Prepared(feeds, n, key, self._outputs_for(request))

    def _check(self, spec: TensorSpec, array: np.ndarray) -> int:
        want = self._dtypes[spec.name]
        if array.dtype != want:
            raise BadRequestError(f"input {spec.name!r} takes {datatype_of(want)}, got "
                                  f"{datatype_of(array.dtype)}")
        if spec.shape is not None and (array.ndim != len(spec.shape) or any(
                isinstance(d, int) and d != n for d, n in zip(spec.shape, array.shape))):
            raise BadRequestError(f"input {spec.name!r} expects shape "
                                  f"{describe_shape(spec.shape)}, got {list(array.shape)}")
        rows = 1
        if self.batched:
            rows = array.shape[0] if array.ndim else 0
            if not 1 <= rows <= self.max_batch_size:
                raise BadRequestError(
                    f"input {spec.name!r}: a batch of {rows} rows; model {self.name!r} takes "
                    f"1 to max_batch_size={self.max_batch_size} rows per request")
        if want.kind == "f" and not self.config.allow_nonfinite:
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            if bad:
                raise BadRequestError(f"input {spec.name!r} holds {bad} NaN/Inf value(s); model "
                                      f"{self.name!r} takes finite numbers only (set "
                                      "allow_nonfinite: true if it takes them)")
        return rows

    def _outputs_for(self, request: InferRequest) -> tuple[tuple[str, bool], ...]:
        names = [s.name for s in self.outputs]
        if request.outputs is None:
            return tuple((n, request.binary_output) for n in names)
        unknown = [o.name for o in request.outputs if o.name not in names]
        if unknown:
            raise BadRequestError(f"model {self.name!r} has no output(s) {unknown}; its outputs "
                                  f"are {names}")
        return tuple((o.name, request.binary_output if o.binary is None else o.binary)
                     for o in request.outputs)

    def tensor_metadata(self) -> dict[str, list[dict[str, object]]]:
        return {kind: [{"name": s.name, "datatype": datatype_of(_numpy_dtype(s)),
                        "shape": metadata_shape(s.shape)} for s in specs]
                for kind, specs in (("inputs", self.inputs), ("outputs", self.outputs))}


def _takes_batches(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> bool:
    """Every input and output has a dynamic first dim (or an unknown shape)."""
    def dynamic_first(spec: TensorSpec) -> bool:
        return spec.shape is None or (len(spec.shape) > 0 and not isinstance(spec.shape[0], int))
    return all(dynamic_first(s) for s in (*inputs, *outputs))


def _numpy_dtype(spec: TensorSpec) -> np.dtype:
    try:
        return np.dtype(spec.dtype)
    except TypeError:
        return np.dtype(object)   # reported as BYTES; requests for it are refused

