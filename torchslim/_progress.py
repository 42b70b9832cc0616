"""The one progress helper: a rich bar on a terminal, silence otherwise."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def enabled() -> bool:
    """Progress bars show only on an interactive terminal and not in CI."""
    if os.environ.get("TORCHSLIM_PROGRESS") == "0" or os.environ.get("CI"):
        return False
    return sys.stderr.isatty()


def track(items: Iterable[T], *, description: str, total: int | None = None) -> Iterator[T]:
    if not enabled():
        yield from items
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn)

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, transient=True) as progress:
        yield from progress.track(items, total=total, description=description)
