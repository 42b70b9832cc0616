"""The one interface every runtime adapter implements, and the checks its inputs pass.

A session is opened once and then called, possibly from several threads at once:
``run(inputs)`` returns the first output, ``infer(inputs)`` every output by name. Inputs
are one array, a tuple of arrays (in signature order) or a dict by input name; each array
keeps its dtype kind (token ids stay integers) and is checked against the signature
before the runtime sees it, so a mismatch is one clear error instead of a runtime's
``INVALID_ARGUMENT``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Union, runtime_checkable

import numpy as np

from torchslim.errors import InvalidInputError

__all__ = ["Session", "TensorSpec", "Inputs", "as_feeds", "describe_shape"]

Dim = Union[int, str, None]   # fixed size, a named dynamic dim ("batch"), or unknown
Inputs = Union[np.ndarray, Sequence[np.ndarray], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an artifact: its name, numpy dtype name and shape.

    ``shape`` is None when the rank is unknown (an in-memory torch model opened without
    example inputs); a dim is an int when fixed, a name (``"batch"``, ``"sequence"``) when
    dynamic, or None when dynamic and unnamed.
    """

    name: str
    dtype: str
    shape: tuple[Dim, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype,
                "shape": None if self.shape is None else list(self.shape)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        shape = d.get("shape")
        return cls(name=str(d["name"]), dtype=str(d["dtype"]),
                   shape=None if shape is None else tuple(shape))


@runtime_checkable
class Session(Protocol):
    """Runs batches on some runtime; safe to call from several threads at once.

    ``runtime`` names the engine ("torch", "onnxruntime", "openvino"); ``precision`` what it
    computes in ("fp32", "int8", ...); ``artifact`` is the file the session was loaded from,
    or None for an in-memory model; ``inputs`` / ``outputs`` are its signature.
    """

    runtime: str
    precision: str
    threads: int
    artifact: Path | None

    @property
    def name(self) -> str: ...

    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]: ...

    def run(self, inputs: Inputs) -> np.ndarray:
        """The first output for ``inputs`` (one array, a tuple or a dict by name)."""
        ...

    def infer(self, inputs: Inputs) -> dict[str, np.ndarray]:
        """Every output, by name."""
        ...

    def close(self) -> None:
        """Release the runtime's resources; the session cannot run afterwards."""
        ...


def describe_shape(shape: Sequence[Dim] | None) -> str:
    if shape is None:
        return "(any)"
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def as_feeds(specs: Sequence[TensorSpec], inputs: Inputs) -> dict[str, np.ndarray]:
    """``{input name: array}`` for ``inputs``, each checked against its spec.

    Raises InvalidInputError for a missing or unknown input, a float array fed to an
    integer input, or a rank / fixed dimension that differs from the signature.
    """
    arrays = _by_name(specs, inputs)
    return {spec.name: _checked(spec, arrays[spec.name]) for spec in specs}


def _by_name(specs: Sequence[TensorSpec], inputs: Inputs) -> dict[str, Any]:
    names = [s.name for s in specs]
    if isinstance(inputs, Mapping):
        missing = [n for n in names if n not in inputs]
        unknown = [str(k) for k in inputs if k not in names]
        if missing or unknown:
            raise InvalidInputError(
                f"inputs {sorted(map(str, inputs))} do not match the model's inputs {names}"
                + (f": missing {missing}" if missing else "")
                + (f"; unknown {unknown}" if unknown else "")
                + "; pass one array per input name")
        return dict(inputs)
    if isinstance(inputs, (tuple, list)):
        if len(inputs) != len(names):
            raise InvalidInputError(f"{len(inputs)} input arrays for a model with "
                                    f"{len(names)} inputs {names}; pass them in that order "
                                    "or as a dict by name")
        return dict(zip(names, inputs))
    if len(names) != 1:
        raise InvalidInputError(f"one array for a model with {len(names)} inputs {names}; "
                                "pass a tuple in that order or a dict by name")
    return {names[0]: inputs}


def _checked(spec: TensorSpec, value: Any) -> np.ndarray:
    array = _to_numpy(value)
    want = np.dtype(spec.dtype)
    if array.dtype != want:
        if array.dtype.kind == "f" and want.kind in "iub":
            raise InvalidInputError(
                f"input {spec.name!r} takes {want.name} (e.g. token ids or a mask), got "
                f"{array.dtype.name}; pass integers, not floats that would be rounded")
        if array.dtype.kind not in "fiub":
            raise InvalidInputError(f"input {spec.name!r} takes {want.name}, got "
                                    f"{array.dtype.name} data")
        array = array.astype(want)
    if spec.shape is not None:
        _check_shape(spec, array.shape)
    return np.ascontiguousarray(array)


def _check_shape(spec: TensorSpec, shape: tuple[int, ...]) -> None:
    wrong = len(shape) != len(spec.shape) or any(
        isinstance(d, int) and not isinstance(d, bool) and d != n
        for d, n in zip(spec.shape, shape))
    if wrong:
        raise InvalidInputError(
            f"input {spec.name!r} expects shape {describe_shape(spec.shape)}, got "
            f"{describe_shape(shape)}; the artifact was exported for other inputs: "
            "pass data of that shape or export the model again for this data")


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        return value.detach().cpu().numpy()
    return np.asarray(value)
