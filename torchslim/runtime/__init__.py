"""Sessions that run a model on a runtime; ``open(path)`` is the one way to get one.

>>> session = torchslim.runtime.open("model-int8.onnx", threads=2)   # doctest: +SKIP
>>> session.inputs, session.outputs                                   # the signature
>>> session.run(batch)                                                # the first output

A file's suffix picks the runtime (``.onnx`` ONNX Runtime, ``.xml`` OpenVINO,
``.safetensors`` PyTorch); ``runtime=`` picks another one that reads the same file
(OpenVINO reads ONNX directly). Every session is safe to call from several threads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from torchslim._registry import Registry
from torchslim.errors import ArtifactError
from torchslim.runtime.base import Inputs, Session, TensorSpec, as_feeds
from torchslim.runtime.onnxruntime import OnnxRuntimeSession
from torchslim.runtime.openvino import OpenVinoSession  # imports openvino only when used
from torchslim.runtime.torch_session import TorchSession, open_checkpoint, register_model_loader

__all__ = ["Session", "TensorSpec", "Inputs", "TorchSession", "OnnxRuntimeSession",
           "OpenVinoSession", "open", "RUNTIMES", "runtime_for", "runtimes_reading", "as_feeds",
           "register_model_loader"]

Opener = Callable[..., Session]
RUNTIMES: Registry[Opener] = Registry("runtime")
RUNTIMES.add("onnxruntime", OnnxRuntimeSession)
RUNTIMES.add("openvino", OpenVinoSession)
RUNTIMES.add("torch", open_checkpoint)

# suffix -> (default runtime, runtimes that read it)
_SUFFIXES: dict[str, tuple[str, tuple[str, ...]]] = {
    ".onnx": ("onnxruntime", ("onnxruntime", "openvino")),
    ".xml": ("openvino", ("openvino",)),
    ".safetensors": ("torch", ("torch",)),
}


def runtimes_reading(suffix: str) -> tuple[str, ...]:
    """The runtimes that open files with ``suffix`` (".onnx": onnxruntime, openvino)."""
    return _SUFFIXES[suffix][1] if suffix in _SUFFIXES else ()


def runtime_for(path: str | os.PathLike[str], runtime: str | None = None) -> str:
    """The runtime that opens ``path`` (``runtime`` if it can read the file)."""
    p = Path(path)
    if runtime is not None:
        RUNTIMES.get(runtime)  # UnknownNameError listing the runtimes
    if p.suffix not in _SUFFIXES:
        raise ArtifactError(f"no runtime for {p.name!r} (suffix {p.suffix or 'none'}); pass "
                            "an .onnx file, an OpenVINO .xml or a .safetensors checkpoint")
    default, readers = _SUFFIXES[p.suffix]
    if runtime is not None and runtime not in readers:
        raise ArtifactError(f"runtime {runtime!r} cannot read {p.name!r}; "
                            f"{p.suffix} files run on {', '.join(readers)}")
    return runtime or default


def open(path: str | os.PathLike[str], runtime: str | None = None, *,  # noqa: A001
         threads: int | None = None, precision: str | None = None,
         spin: bool | None = None) -> Session:
    """Open the artifact at ``path`` on ``runtime`` (default: the one its suffix implies)
    with ``threads`` intra-op threads. A directory must hold exactly one artifact.
    ``spin``: whether ONNX Runtime's idle intra-op threads busy-wait for the next run (None
    keeps its default, on); the other runtimes manage their own threads and ignore it."""
    p = _artifact_in(Path(path))
    name = runtime_for(p, runtime)
    if not p.is_file():
        raise ArtifactError(f"artifact not found: {p}; check the path (torchslim train writes "
                            "a .safetensors checkpoint, quantize / prune / run an .onnx file)")
    options = {"spin": spin} if spin is not None and name == "onnxruntime" else {}
    return RUNTIMES.get(name)(p, threads=threads, precision=precision, **options)


def _artifact_in(p: Path) -> Path:
    if not p.is_dir():
        return p.with_suffix(".safetensors") if p.suffix == ".json" else p
    found = sorted(f for f in p.iterdir() if f.suffix in _SUFFIXES)
    if len(found) != 1:
        names = ", ".join(f.name for f in found) or "none"
        raise ArtifactError(f"{p} holds {len(found)} artifacts ({names}); pass one file")
    return found[0]
