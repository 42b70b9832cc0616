"""Process-wide settings: version, cache directory, machine description."""

from __future__ import annotations

import os
import platform
from pathlib import Path

VERSION = "0.1.0"


def cache_dir() -> Path:
    """Where cached teachers live: ``$TORCHSLIM_CACHE`` or ``~/.cache/torchslim``."""
    root = os.environ.get("TORCHSLIM_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "torchslim"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(threads: int) -> dict[str, object]:
    """The ``machine`` block of report.json and bench results."""
    return {"cpu": cpu_name(), "threads": threads, "cores": os.cpu_count(),
            "platform": platform.platform()}
