"""The Open Inference Protocol over HTTP: a FastAPI app over ``InferenceService``.

Routes (KServe v2): ``GET /v2/health/live|ready``, ``GET /v2``,
``GET /v2/models/{m}[/versions/{v}][/ready]``, ``POST /v2/models/{m}[/versions/{v}]/infer``,
``POST /v2/repository/index``, ``POST /v2/repository/models/{m}/load|unload``, and
``GET /metrics``. Every error is ``{"error": "<one line>"}`` with the status of its class
(400 bad input, 404 unknown model/version, 413 body too large, 429 queue full, 503
loading or shutting down, 504 timeout). One JSON line per request goes to the
``torchslim.serve.access`` logger.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from torchslim.serve.errors import (BadRequestError, PayloadTooLargeError, error_message,
                                    status_of)
from torchslim.serve.metrics import CONTENT_TYPE
from torchslim.serve.protocol import decode_http_request, encode_http_response
from torchslim.serve.service import InferenceService, access_logger

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

# bodies larger than this are parsed on a worker thread, so one big request does not
# stall every other connection on the event loop
_OFFLOAD_BYTES = 256 << 10


def create_app(service: InferenceService) -> Any:
    """The ASGI app: the protocol's routes, wrapped in the access log."""
    app = FastAPI(title="torchslim", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def _no_route(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}; "
                      "the protocol's routes are under /v2")

    _health_and_metadata(app, service)
    _repository(app, service)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    return AccessLog(app, service)


def _health_and_metadata(app: FastAPI, service: InferenceService) -> None:
    @app.get("/v2/health/live")
    async def live() -> Response:
        return _flag("live", service.live())

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return _flag("ready", service.ready())

    @app.get("/v2")
    @_answers
    async def server_metadata() -> Response:
        return JSONResponse(service.server_metadata())

    @app.get("/v2/models/{model}")
    @app.get("/v2/models/{model}/versions/{version}")
    @_answers
    async def model_metadata(model: str, version: str | None = None) -> Response:
        return JSONResponse(service.model_metadata(model, version))

    @app.get("/v2/models/{model}/ready")
    @app.get("/v2/models/{model}/versions/{version}/ready")
    async def model_ready(model: str, version: str | None = None) -> Response:
        return _flag("ready", service.model_ready(model, version))


async def _infer(service: InferenceService, body: bytes, header_length: str | None,
                 model: str, version: str | None) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers) of one infer request, errors included."""
    try:
        header = _header_length(header_length)
        parsed = await _maybe_offload(len(body), decode_http_request, body, header,
                                      model=model, version=version)
        result = await service.infer(parsed)
    except Exception as e:
        return _failure(e)
    payload, json_length = encode_http_response(result)
    if json_length is None:
        return 200, payload, _JSON
    return 200, payload, {"content-type": "application/octet-stream",
                          "inference-header-content-length": str(json_length)}


def _failure(e: Exception) -> tuple[int, bytes, dict[str, str]]:
    """The protocol's ``{"error": ...}`` answer to ``e``, with the status of its class."""
    status, _ = status_of(e)
    if status >= 500:
        logger.exception("HTTP request failed")
    return status, json.dumps({"error": error_message(e)}).encode(), _JSON


_JSON = {"content-type": "application/json"}
# POST .../infer, answered by AccessLog without FastAPI's middleware, router and Request
_INFER_PATH = re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")


def _repository(app: FastAPI, service: InferenceService) -> None:
    limit = service.config.max_body_bytes

    @app.post("/v2/repository/index")
    @_answers
    async def repository_index(request: Request) -> Response:
        doc = await _json_body(request, limit)
        return JSONResponse(service.index(ready_only=bool(doc.get("ready", False))))

    @app.post("/v2/repository/models/{model}/load")
    @_answers
    async def load(request: Request, model: str) -> Response:
        params = (await _json_body(request, limit)).get("parameters") or {}
        if set(params) - {"unload_dependents"}:
            raise BadRequestError(f"load parameters {sorted(params)} are not supported; the "
                                  "model's source is read from its directory or registry")
        return JSONResponse({"name": model, "versions": await service.load(model)})

    @app.post("/v2/repository/models/{model}/unload")
    @_answers
    async def unload(request: Request, model: str) -> Response:
        await service.unload(model)
        return JSONResponse({})


def _answers(route: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """Turn any exception of a route into the protocol's ``{"error": ...}`` response."""

    @functools.wraps(route)
    async def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return await route(*args, **kwargs)
        except Exception as e:
            status, _ = status_of(e)
            if status >= 500:
                logger.exception("HTTP request failed")
            return _error(status, error_message(e))

    return wrapper


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _flag(name: str, value: bool) -> Response:
    # the protocol: 200 means true, a 4xx status false
    return JSONResponse({name: value}, status_code=200 if value else 400)


def _header_length(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.strip().isdigit():
        raise BadRequestError(f"Inference-Header-Content-Length {value!r} must be a byte count")
    return int(value)


async def _maybe_offload(size: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    if size < _OFFLOAD_BYTES:
        return fn(*args, **kwargs)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))


async def _read_body(request: Request, limit: int) -> bytes:
    return await _receive_body(request.receive, request.headers, limit)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise BadRequestError(f"the body is not valid {encoding} data: {e}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise _too_large(len(out), limit)
    return out


def _too_large(size: int, limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"request body of {size} bytes is over the server's limit of "
                                f"{limit} bytes; send smaller batches or raise max_body_bytes")


async def _json_body(request: Request, limit: int) -> dict[str, Any]:
    body = await _read_body(request, limit)
    if not body.strip():
        return {}
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequestError(f"malformed JSON in the request: {e}") from None
    if not isinstance(doc, dict):
        raise BadRequestError("the request body must be a JSON object")
    return doc


class AccessLog:
    """The ASGI front: answers ``.../infer`` itself (``_infer``), passes every other
    request to the FastAPI app, and counts and logs one JSON line for each."""

    def __init__(self, app: Any, service: InferenceService) -> None:
        self.app, self.service = app, service
        self.enabled = service.config.access_log

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            found = _INFER_PATH.fullmatch(scope["path"])
            if found is None:
                await self.app(scope, receive, send_status)
            else:
                await self._infer(scope, receive, send_status, found)
        finally:
            self.service.metrics.request_done("http", status[0])
            if self.enabled and access_logger.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("", 0)
                access_logger.info(json.dumps({
                    "ts": round(time.time(), 3), "protocol": "http", "client": client[0],
                    "method": scope["method"], "path": scope["path"], "status": status[0],
                    "ms": round((time.perf_counter() - start) * 1000, 3)}))

    async def _infer(self, scope: dict[str, Any], receive: Any, send: Any,
                     found: re.Match[str]) -> None:
        """The hot path in plain ASGI: per request, FastAPI's middleware stack, routing
        and Request/Response objects cost about as much as decoding a small tensor."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        limit = self.service.config.max_body_bytes
        if scope["method"] != "POST":
            message = (f"Method Not Allowed: {scope['method']} {scope['path']}; inference is "
                       "POST")
            answer = 405, json.dumps({"error": message}).encode(), {**_JSON, "allow": "POST"}
        else:
            try:
                body = await _receive_body(receive, headers, limit)
            except _Disconnected:
                return
            except Exception as e:   # 413, a bad Content-Encoding or compressed body
                answer = _failure(e)
            else:
                answer = await _infer(self.service, body,
                                      headers.get("inference-header-content-length"),
                                      found["model"], found["version"])
        status, payload, extra = answer
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-length", str(len(payload)).encode()),
            *((k.encode(), v.encode()) for k, v in extra.items())]})
        await send({"type": "http.response.body", "body": payload})


class _Disconnected(Exception):
    """The client went away before its request body arrived: nobody to answer."""


async def _receive_body(receive: Any, headers: Any, limit: int) -> bytes:
    """The request body from raw ASGI messages, refused with 413 past ``limit`` bytes (also
    once decompressed). ``headers``: lower-case names -> values."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
        more = message.get("more_body", False)
    body = b"".join(chunks)
    encoding = headers.get("content-encoding", "identity").lower()
    if encoding in ("gzip", "deflate"):
        body = _decompress(body, encoding, limit)
    elif encoding != "identity":
        raise BadRequestError(f"Content-Encoding {encoding!r} is not supported; send gzip, "
                              "deflate or an uncompressed body")
    return body
