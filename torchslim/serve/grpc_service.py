"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` (grpc.aio).

ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer, and the
repository RPCs tritonclient calls (RepositoryIndex, RepositoryModelLoad/Unload). Tensors
come as ``raw_input_contents`` (what tritonclient sends) or typed ``contents``; outputs go
back as ``raw_output_contents``. Errors abort the RPC with the code of their class
(INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, UNAVAILABLE).
The request timeout is the ``timeout`` parameter (microseconds) or the call's deadline,
whichever is sooner.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np

from torchslim.serve.errors import BadRequestError, error_message, status_of
from torchslim.serve.protocol import (InferRequest, InferResponse, RequestedOutput,
                                      datatype_of, numpy_dtype, tensor_from_bytes,
                                      timeout_from_us)
from torchslim.serve.proto import grpc_predict_v2_pb2 as pb
from torchslim.serve.proto import grpc_predict_v2_pb2_grpc as pb_grpc
from torchslim.serve.service import InferenceService, access_logger

__all__ = ["InferenceServicer", "create_grpc_server"]

logger = logging.getLogger(__name__)

# typed contents field for each datatype family (when a client does not send raw bytes)
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
             "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
             "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
             "FP32": "fp32_contents", "FP64": "fp64_contents"}


def create_grpc_server(service: InferenceService) -> grpc.aio.Server:
    limit = service.config.max_body_bytes
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", -1)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(service), server)
    return server


def _rpc(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Abort with the protocol's status for any error; count and log every call."""

    async def wrapper(self: InferenceServicer, request: Any, context: Any) -> Any:
        start, code = time.perf_counter(), "OK"
        try:
            return await method(self, request, context)
        except Exception as e:
            status, code = status_of(e)
            if status >= 500:
                logger.exception("gRPC %s failed", method.__name__)
            await context.abort(getattr(grpc.StatusCode, code), error_message(e))
        finally:
            self.service.metrics.request_done("grpc", code)
            if self.service.config.access_log and access_logger.isEnabledFor(logging.INFO):
                access_logger.info(json.dumps({
                    "ts": round(time.time(), 3), "protocol": "grpc", "client": context.peer(),
                    "method": method.__name__, "status": code,
                    "ms": round((time.perf_counter() - start) * 1000, 3)}))

    wrapper.__name__ = method.__name__
    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: InferenceService) -> None:
        self.service = service

    @_rpc
    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802 (protocol)
        return pb.ServerLiveResponse(live=self.service.live())

    @_rpc
    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ServerReadyResponse(ready=self.service.ready())

    @_rpc
    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ModelReadyResponse(ready=self.service.model_ready(request.name,
                                                                    request.version))

    @_rpc
    async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        return pb.ServerMetadataResponse(**self.service.server_metadata())

    @_rpc
    async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        doc = self.service.model_metadata(request.name, request.version)
        tensors = {k: [pb.ModelMetadataResponse.TensorMetadata(**t) for t in doc[k]]
                   for k in ("inputs", "outputs")}
        return pb.ModelMetadataResponse(name=doc["name"], versions=doc["versions"],
                                        platform=doc["platform"], **tensors)

    @_rpc
    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        parsed = decode_grpc_request(request, context.time_remaining())
        return encode_grpc_response(await self.service.infer(parsed))

    @_rpc
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:  # noqa: N802
        rows = self.service.index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(models=[
            pb.RepositoryIndexResponse.ModelIndex(**{k: str(v) for k, v in r.items()})
            for r in rows])

    @_rpc
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:  # noqa: N802
        unsupported = set(request.parameters) - {"unload_dependents"}
        if unsupported:
            raise BadRequestError(f"load parameters {sorted(unsupported)} are not supported; "
                                  "the model's source is read from its directory or registry")
        await self.service.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:  # noqa: N802
        await self.service.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def decode_grpc_request(request: Any, time_remaining: float | None) -> InferRequest:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise BadRequestError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; "
                              "send one per input, in order")
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.name in inputs:
            raise BadRequestError(f"input {tensor.name!r} is given twice")
        shape = list(tensor.shape)
        if any(d < 0 for d in shape):
            raise BadRequestError(f"input {tensor.name!r}: shape {shape} has a negative size")
        if raw:
            inputs[tensor.name] = tensor_from_bytes(raw[i], tensor.datatype, shape,
                                                    tensor=tensor.name)
        else:
            inputs[tensor.name] = _from_contents(tensor, shape)
    if not inputs:
        raise BadRequestError("the request has no inputs")
    params = request.parameters
    timeout = timeout_from_us(_param(params["timeout"])) if "timeout" in params else None
    if time_remaining is not None:
        timeout = time_remaining if timeout is None else min(timeout, time_remaining)
    outputs = tuple(RequestedOutput(o.name, True) for o in request.outputs) or None
    return InferRequest(model=request.model_name, version=request.model_version or None,
                        inputs=inputs, id=request.id or None, outputs=outputs,
                        timeout_s=timeout, binary_output=True)


def _from_contents(tensor: Any, shape: list[int]) -> np.ndarray:
    dtype = numpy_dtype(tensor.datatype, tensor=tensor.name)
    values = getattr(tensor.contents, _CONTENTS.get(tensor.datatype, "fp32_contents"))
    if tensor.datatype == "FP16":
        raise BadRequestError(f"input {tensor.name!r}: FP16 tensors must come as "
                              "raw_input_contents")
    if len(values) != math.prod(shape):
        raise BadRequestError(f"input {tensor.name!r}: {len(values)} values for shape {shape}")
    array = np.asarray(values)
    if dtype.kind in "iu" and array.size and not np.array_equal(array.astype(dtype), array):
        raise BadRequestError(f"input {tensor.name!r}: values out of range for {tensor.datatype}")
    return array.astype(dtype).reshape(shape)


def _param(value: Any) -> Any:
    kind = value.WhichOneof("parameter_choice")
    return None if kind is None else getattr(value, kind)


def encode_grpc_response(response: InferResponse) -> Any:
    out = pb.ModelInferResponse(model_name=response.model, model_version=response.version,
                                id=response.id or "")
    for name, array in response.outputs.items():
        out.outputs.add(name=name, datatype=datatype_of(array.dtype), shape=list(array.shape))
        out.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    return out
