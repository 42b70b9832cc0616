"""What a manifest records about the software that made an artifact: package versions and
the git revision of the torchslim code, when that code is a git checkout."""

from __future__ import annotations

import datetime as _dt
import functools
import importlib.metadata
import importlib.util
import platform
import subprocess
from pathlib import Path

__all__ = ["versions", "git_revision", "utc_now"]

# import name -> distribution name; recorded only when importable here
_PACKAGES = {"torchslim": "torchslim", "torch": "torch", "onnx": "onnx",
             "onnxruntime": "onnxruntime", "openvino": "openvino"}


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """``{package: version}`` for torchslim, torch, onnx, onnxruntime and openvino (those
    importable here, found without importing them) and python."""
    found = {}
    for module, dist in _PACKAGES.items():
        if importlib.util.find_spec(module) is None:
            continue
        try:
            found[module] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    found["python"] = platform.python_version()
    return found


@functools.lru_cache(maxsize=1)
def git_revision() -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the checkout holding the torchslim package, or (None, None)
    when it is not in one (an installed wheel) or git is missing."""
    here = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "-C", str(here), "status", "--porcelain",
                                 "--untracked-files=no", "--", "."], check=True,
                                capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return head or None, bool(status.strip())


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
