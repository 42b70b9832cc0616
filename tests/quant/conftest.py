"""Fixtures shared by the quantization tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread: None) -> None:
    """Tiny convs on shared CPUs run faster (and steadier) on one thread."""
