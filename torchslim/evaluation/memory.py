"""Peak memory of a model on its runtime, measured in a fresh child process."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from torchslim import _io
from torchslim.runtime.base import Session

__all__ = ["measure_peak_memory", "status_bytes", "reset_high_water_mark"]

logger = logging.getLogger(__name__)

_TIMEOUT_S = 120
_KIB = 1024
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding torchslim/


def status_bytes(key: str) -> int:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * _KIB  # the kernel reports kB
    raise RuntimeError(f"{key} not in /proc/self/status")


def reset_high_water_mark() -> bool:
    """Set VmHWM to the current VmRSS ("5" in clear_refs); False where that is refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _probe_target(session: Session) -> Iterator[tuple[str, str] | None]:
    """``(kind, path)`` the child can load, or None for a session it cannot rebuild."""
    artifact = getattr(session, "artifact", None)
    if artifact is not None and session.runtime in ("onnxruntime", "openvino"):
        yield session.runtime, str(Path(artifact).resolve())  # the child runs elsewhere
        return
    model = getattr(session, "model", None)
    if session.runtime != "torch" or model is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="torchslim-memprobe-") as tmp:
        path = Path(tmp) / "model.pkl"
        try:
            # Stdlib pickle of our own in-memory model, read back only by our child.
            _io.write_bytes(path, pickle.dumps(model))
        except Exception as e:  # a local class or a lambda cannot be pickled
            logger.warning("peak memory not measured: cannot pickle %s (%s)",
                           type(model).__name__, e)
            yield None
            return
        yield "torch", str(path)


def child_command(module: str, *args: str) -> list[str]:
    """``python -m module args`` that cannot import code from the working directory.

    ``-m`` puts the current directory first on ``sys.path``, so a file named
    ``onnxruntime.py`` there would run inside the child. ``-P`` (Python 3.11+) leaves it
    out; the child also starts in an empty directory of its own (see ``run_child``).
    """
    flags = ["-P"] if sys.version_info >= (3, 11) else []
    return [sys.executable, *flags, "-m", module, *args]


def run_child(module: str, args: list[str], *, timeout: float) -> subprocess.CompletedProcess:
    """Run ``python -m module`` isolated from the working directory; see child_command."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT),
                                                    env.get("PYTHONPATH")) if p)
    env.pop("PYTHONSTARTUP", None)
    with tempfile.TemporaryDirectory(prefix="torchslim-child-") as cwd:
        return subprocess.run(child_command(module, *args), capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=cwd, check=False)


def _run_child(args: list[str]) -> dict:
    proc = run_child("torchslim.evaluation._memprobe", args, timeout=_TIMEOUT_S)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"probe exited with {proc.returncode}: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_peak_memory(session: Session, sample_batch: np.ndarray) -> int | None:
    """Bytes of memory that serving ``sample_batch`` on this session's model costs.

    Definition: the peak resident memory (VmHWM) of a fresh process that loads the
    artifact (or the in-memory torch model) and runs one batch of zeros of the shape of
    ``sample_batch``, minus that process's resident memory right after importing the
    runtime. That is weights + activations + runtime arenas, without the interpreter and
    library code every candidate pays alike. The high-water mark is reset after loading,
    so a loader's transient second copy of the weights is not counted.

    A fresh process is used because the evaluating process holds other models, data and
    allocator caches. Returns None, with a warning, on non-Linux systems, for a session
    the probe cannot rebuild, or when the probe fails: memory is never worth failing an
    evaluation for.
    """
    if not sys.platform.startswith("linux"):
        logger.warning("peak memory not measured: the probe reads /proc, Linux only")
        return None
    batch = np.asarray(sample_batch)
    shape = ",".join(str(int(s)) for s in batch.shape[1:])
    with _probe_target(session) as target:
        if target is None:
            logger.warning("peak memory not measured: no probe for %s sessions",
                           session.runtime)
            return None
        kind, path = target
        args = [kind, path, str(batch.shape[0]), shape, str(session.threads)]
        try:
            result = _run_child(args)
        except (OSError, RuntimeError, ValueError, IndexError,
                subprocess.TimeoutExpired) as e:
            logger.warning("peak memory not measured for %s: %s", session.name, e)
            return None
    if not result.get("hwm_reset", False):
        logger.warning("the kernel refused to reset VmHWM; peak memory of %s includes "
                       "transient load-time copies", session.name)
    return int(result["peak_bytes"])
