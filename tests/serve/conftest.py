"""Servers the tests start themselves, on free loopback ports, and v2 clients for them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import serve_helpers as helpers

from torchslim.serve import InferenceServer, ServerConfig
from torchslim.serve.config_file import build_model_config

Start = Callable[..., InferenceServer]


@pytest.fixture
def start(request: pytest.FixtureRequest) -> Iterator[Start]:
    """``start(models={"name": (source, {options})}, **server_options)`` -> a running
    server on free ports, stopped (drained) when the test ends."""
    servers: list[InferenceServer] = []

    def _start(models: dict[str, tuple[Path | str, dict[str, Any]]], *,
               template: Any = None, **server: Any) -> InferenceServer:
        configs = tuple(build_model_config(name, str(src), opts)
                        for name, (src, opts) in models.items())
        options = {"http_port": 0, "grpc_port": 0, "access_log": False, **server}
        srv = InferenceServer(ServerConfig(models=configs, **options), template=template)
        servers.append(srv.start())
        return srv

    yield _start
    for srv in servers:
        srv.stop()


@pytest.fixture
def linear_repo(tmp_path: Path) -> Path:
    """``lin/1/model.onnx``: y = x @ W0 + b0."""
    helpers.linear(tmp_path / "repo" / "lin" / "1" / "model.onnx", seed=0)
    return tmp_path / "repo" / "lin"
