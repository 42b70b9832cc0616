"""The test tree itself: pytest's default import mode needs unique basenames."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def test_test_modules_have_unique_basenames() -> None:
    root = Path(__file__).parent
    names = Counter(p.name for p in root.rglob("test_*.py"))
    clashes = sorted(name for name, count in names.items() if count > 1)
    assert not clashes, f"rename these test files (rootdir-relative import clash): {clashes}"
