"""Servers the tests start themselves, on free loopback ports, and v2 clients for them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import serve_helpers as helpers
from serve_helpers import launch

from torchslim.serve import InferenceServer

Start = Callable[..., InferenceServer]


@pytest.fixture
def start() -> Iterator[Start]:
    """``start(models, **server_options)`` (see ``launch``), stopped (drained) when the
    test ends."""
    servers: list[InferenceServer] = []

    def _start(*args: Any, **kwargs: Any) -> InferenceServer:
        servers.append(launch(*args, **kwargs))
        return servers[-1]

    yield _start
    for srv in servers:
        srv.stop()


@pytest.fixture
def linear_repo(tmp_path: Path) -> Path:
    """``lin/1/model.onnx``: y = x @ W0 + b0."""
    helpers.linear(tmp_path / "repo" / "lin" / "1" / "model.onnx", seed=0)
    return tmp_path / "repo" / "lin"
