"""What both front ends (HTTP and gRPC) call: health, metadata, inference, load/unload.

The front ends only translate their wire format to ``InferRequest`` and back; every rule
(which version, the checks, the queue, the timeout, the metrics) lives here once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from torchslim.config import VERSION
from torchslim.errors import InvalidInputError
from torchslim.serve.config import ServerConfig
from torchslim.serve.errors import (BadRequestError, RequestTimeoutError, ServeError,
                                    ServerBusyError)
from torchslim.serve.metrics import ServerMetrics
from torchslim.serve.model import PLATFORMS
from torchslim.serve.protocol import InferRequest, InferResponse
from torchslim.serve.repository import ModelRepository

__all__ = ["InferenceService", "EXTENSIONS", "access_logger"]

logger = logging.getLogger(__name__)
# one JSON line per request, from both front ends
access_logger = logging.getLogger("torchslim.serve.access")

EXTENSIONS = ["binary_tensor_data", "model_repository", "metrics"]


class InferenceService:
    def __init__(self, config: ServerConfig, repository: ModelRepository,
                 metrics: ServerMetrics) -> None:
        self.config = config
        self.repository = repository
        self.metrics = metrics
        self.draining = False
        self.started = False   # every model loaded once

    # ------------------------------------------------------------------ health, metadata

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.started and not self.draining and self.repository.ready()

    def model_ready(self, name: str, version: str | None) -> bool:
        try:
            self.repository.get(name, version or None)
        except ServeError:
            return False
        return not self.draining

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "torchslim", "version": VERSION, "extensions": EXTENSIONS}

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        mv = self.repository.get(name, version or None)
        served = list(self.repository.entry(name).versions)
        return {"name": name, "versions": served,
                "platform": PLATFORMS.get(mv.runtime, mv.runtime), **mv.tensor_metadata()}

    # ------------------------------------------------------------------ inference

    async def infer(self, request: InferRequest) -> InferResponse:
        """Check, queue and run ``request``; raises a ServeError (or InvalidInputError)
        that says what the caller did wrong or why the server could not answer."""
        mv = self.repository.get(request.model, request.version or None)
        observer = self.metrics.for_version(mv.name, mv.version)
        try:
            prepared = mv.prepare(request)
            assert mv.batcher is not None  # started before it is reachable
            timeout = request.timeout_s
            if timeout is None and mv.config.batching.default_timeout_ms is not None:
                timeout = mv.config.batching.default_timeout_ms / 1000.0
            outputs = await mv.batcher.submit(prepared.feeds, prepared.rows, prepared.key,
                                              timeout)
        except BaseException as e:
            observer.failed(_reason(e))
            raise
        observer.succeeded()
        return InferResponse(model=mv.name, version=mv.version, id=request.id,
                             outputs={n: outputs[n] for n, _ in prepared.outputs},
                             binary=dict(prepared.outputs))

    # ------------------------------------------------------------------ repository

    async def load(self, name: str) -> list[str]:
        return await self.repository.load(name)

    async def unload(self, name: str) -> None:
        await self.repository.unload(name)

    def index(self, *, ready_only: bool = False) -> list[dict[str, Any]]:
        rows = self.repository.index()
        return [r for r in rows if r["state"] == "READY"] if ready_only else rows


def _reason(e: BaseException) -> str:
    if isinstance(e, ServerBusyError):
        return "rejected"
    if isinstance(e, RequestTimeoutError):
        return "timeout"
    if isinstance(e, (BadRequestError, InvalidInputError)):
        return "invalid"
    if isinstance(e, ServeError):
        return "unavailable"
    return "cancelled" if isinstance(e, asyncio.CancelledError) else "error"
