"""``InferenceServer``: HTTP (uvicorn) and gRPC (grpc.aio) over one service, on one loop.

Start order: bind both listeners (``/v2/health/live`` answers at once), load and warm up
every model, then report ready. Shutdown (``stop()``, or SIGTERM/SIGINT under ``run()``):
report not ready, stop accepting connections and RPCs, let the requests in flight finish
(up to ``drain_timeout_s``), drain every model's queue, close the sessions, return.
SIGHUP reloads every model (a failed reload keeps what was serving).

>>> server = InferenceServer(config).start()     # in a background thread  # doctest: +SKIP
>>> server.http_port, server.grpc_port                                      # doctest: +SKIP
>>> server.stop()                                                           # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry

from torchslim.errors import ConfigError, MissingDependencyError
from torchslim.serve.config import ModelConfig, ServerConfig
from torchslim.serve.metrics import ServerMetrics
from torchslim.serve.repository import ModelRepository
from torchslim.serve.service import InferenceService

__all__ = ["InferenceServer"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


class InferenceServer:
    """Serve ``config``'s models. ``template`` gives the options of models that a load
    request adds from ``config.repository`` later."""

    def __init__(self, config: ServerConfig, *, registry: CollectorRegistry | None = None,
                 template: ModelConfig | None = None) -> None:
        self.config = config
        self.metrics = ServerMetrics(registry)
        root = Path(config.repository) if config.repository else None
        self.repository = ModelRepository(config.models, metrics=self.metrics, root=root,
                                          template=template)
        self.service = InferenceService(config, self.repository, self.metrics)
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._http: _Http | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ running

    def run(self, *, on_ready: Callable[[InferenceServer], None] | None = None) -> None:
        """Serve in this (main) thread until SIGTERM/SIGINT; SIGHUP reloads."""
        asyncio.run(self.serve(on_ready=on_ready, handle_signals=True))

    def start(self, timeout: float = 120.0) -> InferenceServer:
        """Serve on a background thread; return once ready (raise what failed startup)."""
        self._thread = threading.Thread(target=self._run_in_thread, name="torchslim-serve",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the server was not ready within {timeout:g} s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Drain and stop a server started with ``start()``."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        """Run ``coro`` on the server's loop from another thread (tests, embedding)."""
        if self._loop is None:
            raise RuntimeError("the server is not running; start() it first")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def __enter__(self) -> InferenceServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run_in_thread(self) -> None:
        try:
            asyncio.run(self.serve())
        except BaseException as e:  # reported by start()
            self._error = e
        finally:
            self._ready.set()

    async def serve(self, *, on_ready: Callable[[InferenceServer], None] | None = None,
                    handle_signals: bool = False) -> None:
        """Serve until ``request_stop()``; then drain and return."""
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        http = grpc_server = None
        try:
            http = self._http = await self._start_http()
            grpc_server = await self._start_grpc()
            if handle_signals:
                self._handle_signals()
            await self.repository.load_all()
            self.service.started = True
            logger.info("ready: %s", ", ".join(self.repository.names()))
            if on_ready is not None:
                on_ready(self)
            self._ready.set()
            await self._stop.wait()
        finally:
            await self._shutdown(http, grpc_server)

    async def reload(self) -> list[str]:
        """Reload every model (what SIGHUP does); returns the errors, if any."""
        return await self.repository.reload_all()

    # ------------------------------------------------------------------ listeners

    async def _start_http(self) -> _Http:
        try:
            import uvicorn

            from torchslim.serve.http_app import create_app
        except ImportError as e:
            raise MissingDependencyError(f"torchslim serve needs {e.name}: pip install "
                                         "'torchslim[serve]'") from e
        sock = _bind(self.config.host, self.config.http_port)
        self.http_port = sock.getsockname()[1]
        server = _uvicorn_server()(uvicorn.Config(
            create_app(self.service), lifespan="off", log_config=None, access_log=False,
            http="auto", timeout_graceful_shutdown=self.config.drain_timeout_s))
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            task.result()  # raises what stopped it
        return _Http(server, task, sock)

    async def _start_grpc(self) -> Any:
        if self.config.grpc_port is None:
            return None
        try:
            from torchslim.serve.grpc_service import create_grpc_server
        except ImportError as e:
            raise MissingDependencyError(f"torchslim serve needs {e.name}: pip install "
                                         "'torchslim[serve]'") from e
        server = create_grpc_server(self.service)
        address = f"{self.config.host}:{self.config.grpc_port}"
        try:
            self.grpc_port = server.add_insecure_port(address)
        except RuntimeError:  # grpcio raises where older versions returned 0
            self.grpc_port = 0
        if not self.grpc_port:
            raise ConfigError(f"cannot bind gRPC to {address}; pick another --grpc-port")
        await server.start()
        return server

    def _handle_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        reloads: set[asyncio.Task[Any]] = set()   # held, so a running reload is not collected

        def reload() -> None:
            task = loop.create_task(self.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, reload)

    async def _shutdown(self, http: _Http | None, grpc_server: Any) -> None:
        self.service.draining = True
        # after a failed start there is nothing to drain: stay quiet, the error speaks
        log = logger.info if self.service.started else logger.debug
        log("shutting down: draining requests in flight")
        stopping = []
        if grpc_server is not None:
            stopping.append(grpc_server.stop(self.config.drain_timeout_s))
        if http is not None:
            http.server.should_exit = True
            stopping.append(http.task)
        results = await asyncio.gather(*stopping, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                logger.error("a listener stopped with %r", result)
        await self.repository.close()
        if http is not None:
            http.sock.close()
        log("stopped")


class _Http:
    def __init__(self, server: Any, task: asyncio.Task[None], sock: socket.socket) -> None:
        self.server, self.task, self.sock = server, task, sock


def _uvicorn_server() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn that leaves signals to InferenceServer (it drains gRPC too and exits
        0 on SIGTERM, where uvicorn re-raises the signal after its own shutdown)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they
    # are TCP, and without it a response's header and body writes meet Nagle's algorithm
    # and the client's delayed ACK (about 40 ms per request on loopback)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot bind HTTP to {host}:{port} ({e.strerror}); pick another "
                          "--http-port") from None
    sock.set_inheritable(True)
    return sock
