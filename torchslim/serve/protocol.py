"""The Open Inference Protocol's tensors and requests, independent of the transport.

Datatype names are the protocol's (``FP32``, ``INT64``, ...). Over HTTP a request is a
JSON object whose tensors carry their ``data`` inline, or — the binary tensor extension
that tritonclient's HTTP client uses by default — a JSON header of
``Inference-Header-Content-Length`` bytes followed by each tensor's raw little-endian
bytes, in input order, with ``parameters.binary_data_size`` on each such tensor. Responses
use the same two forms (binary when the request asks, with ``binary_data_output`` or an
output's ``binary_data``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from torchslim.serve.errors import BadRequestError

__all__ = ["DATATYPES", "datatype_of", "numpy_dtype", "metadata_shape", "InferRequest",
           "InferResponse", "RequestedOutput", "tensor_from_bytes", "decode_http_request",
           "encode_http_response", "timeout_from_us"]

# protocol datatype -> numpy dtype name
DATATYPES: dict[str, str] = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32",
    "UINT64": "uint64", "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64",
}
_NAMES = {v: k for k, v in DATATYPES.items()}


def datatype_of(dtype: str | np.dtype) -> str:
    """``"FP32"`` for float32; ``"BYTES"`` for strings and other non-numeric dtypes."""
    return _NAMES.get(np.dtype(dtype).name, "BYTES")


def numpy_dtype(datatype: str, *, tensor: str) -> np.dtype:
    if datatype not in DATATYPES:
        hint = "BYTES (string) tensors are not served" if datatype == "BYTES" else (
            f"allowed: {', '.join(DATATYPES)}")
        raise BadRequestError(f"input {tensor!r}: datatype {datatype!r} is not supported; {hint}")
    return np.dtype(DATATYPES[datatype])


def metadata_shape(shape: Sequence[int | str | None] | None) -> list[int]:
    """A signature's shape as the protocol writes it: -1 for every dynamic dim."""
    if shape is None:
        return [-1]
    return [d if isinstance(d, int) and not isinstance(d, bool) else -1 for d in shape]


def timeout_from_us(value: Any) -> float | None:
    """The protocol's ``timeout`` parameter (microseconds, as tritonclient sends it) in s."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise BadRequestError(f"parameter timeout={value!r} must be a positive number of "
                              "microseconds")
    return float(value) / 1e6


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None = None   # None: the request's default


@dataclass
class InferRequest:
    """One decoded inference request, the same for HTTP and gRPC."""

    model: str
    version: str | None
    inputs: dict[str, np.ndarray]
    id: str | None = None
    outputs: tuple[RequestedOutput, ...] | None = None   # None: every output
    timeout_s: float | None = None
    binary_output: bool = False


@dataclass
class InferResponse:
    model: str
    version: str
    outputs: dict[str, np.ndarray]    # in the order they are returned
    id: str | None = None
    binary: dict[str, bool] = field(default_factory=dict)


def tensor_from_bytes(raw: bytes | memoryview, datatype: str, shape: Sequence[int], *,
                      tensor: str) -> np.ndarray:
    dtype = numpy_dtype(datatype, tensor=tensor)
    want = math.prod(shape) * dtype.itemsize
    if len(raw) != want:
        raise BadRequestError(f"input {tensor!r}: {len(raw)} bytes of data for shape "
                              f"{list(shape)} {datatype} ({want} bytes); send the tensor's "
                              "row-major bytes")
    return np.frombuffer(raw, dtype=dtype).reshape(tuple(shape))


def tensor_from_json(data: Any, datatype: str, shape: Sequence[int], *, tensor: str) -> np.ndarray:
    """A tensor from JSON ``data`` (flat or nested, row-major), refusing values that the
    datatype would silently change (1.5 for INT64, 300 for UINT8, true for FP32)."""
    dtype = numpy_dtype(datatype, tensor=tensor)
    try:
        parsed = np.asarray(data)
    except ValueError:
        parsed = np.asarray([], dtype=object)
    if parsed.dtype == object or parsed.dtype.kind not in "biuf":
        raise BadRequestError(f"input {tensor!r}: 'data' must be a (nested) list of numbers")
    if parsed.size and not _kind_fits(parsed.dtype.kind, dtype.kind):
        raise BadRequestError(f"input {tensor!r}: {datatype} data holds "
                              f"{'booleans' if parsed.dtype.kind == 'b' else 'fractions'}; "
                              f"send {datatype} values")
    cast = parsed.astype(dtype)
    if dtype.kind in "iu" and parsed.size and not np.array_equal(cast, parsed):
        raise BadRequestError(f"input {tensor!r}: values out of range for {datatype}")
    if cast.size != math.prod(shape):
        raise BadRequestError(f"input {tensor!r}: {cast.size} values for shape {list(shape)}; "
                              "the data must hold exactly prod(shape) values")
    return cast.reshape(tuple(shape))


def _kind_fits(got: str, want: str) -> bool:
    if want == "b":
        return got == "b"
    if want in "iu":
        return got in "iu"
    return got in "iuf"


# ----------------------------------------------------------------------- HTTP bodies


def decode_http_request(body: bytes, header_length: int | None, *, model: str,
                        version: str | None) -> InferRequest:
    """Parse a POST .../infer body (JSON, or JSON header + binary tensors)."""
    size = len(body) if header_length is None else header_length
    if not 0 < size <= len(body):
        raise BadRequestError(f"Inference-Header-Content-Length {header_length} does not fit a "
                              f"{len(body)}-byte body")
    doc = _json_object(body[:size])
    inputs_doc = doc.get("inputs")
    if not isinstance(inputs_doc, list) or not inputs_doc:
        raise BadRequestError("the request has no 'inputs' list; send "
                              '{"inputs": [{"name", "shape", "datatype", "data"}]}')
    tail, offset = memoryview(body)[size:], 0
    inputs: dict[str, np.ndarray] = {}
    for entry in inputs_doc:
        name, datatype, shape, params = _tensor_header(entry)
        if name in inputs:
            raise BadRequestError(f"input {name!r} is given twice")
        if "binary_data_size" in params:
            n = params["binary_data_size"]
            if not isinstance(n, int) or n < 0 or offset + n > len(tail):
                raise BadRequestError(f"input {name!r}: binary_data_size {n!r} runs past the "
                                      f"{len(tail)} bytes after the JSON header")
            inputs[name] = tensor_from_bytes(tail[offset:offset + n], datatype, shape, tensor=name)
            offset += n
        elif "data" in entry:
            inputs[name] = tensor_from_json(entry["data"], datatype, shape, tensor=name)
        else:
            raise BadRequestError(f"input {name!r} has neither 'data' nor binary_data_size")
    if offset != len(tail):
        raise BadRequestError(f"{len(tail) - offset} bytes after the tensors belong to no "
                              "input; check binary_data_size")
    params = _mapping(doc.get("parameters", {}), "parameters")
    return InferRequest(model=model, version=version, inputs=inputs, id=_optional_id(doc),
                        outputs=_requested_outputs(doc.get("outputs")),
                        timeout_s=timeout_from_us(params.get("timeout")),
                        binary_output=bool(params.get("binary_data_output", False)))


def _json_object(raw: bytes | memoryview) -> dict[str, Any]:
    try:
        doc = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequestError(f"malformed JSON in the request: {e}; send a JSON object") from None
    if not isinstance(doc, dict):
        raise BadRequestError(f"the request must be a JSON object, got {type(doc).__name__}")
    return doc


def _tensor_header(entry: Any) -> tuple[str, str, list[int], Mapping[str, Any]]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise BadRequestError("each input must be an object with a 'name'")
    name = entry["name"]
    datatype, shape = entry.get("datatype"), entry.get("shape")
    if not isinstance(datatype, str):
        raise BadRequestError(f"input {name!r} has no 'datatype' (e.g. \"FP32\")")
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadRequestError(f"input {name!r}: 'shape' must be a list of sizes >= 0, got "
                              f"{shape!r}")
    params = _mapping(entry.get("parameters", {}), f"input {name!r} parameters")
    return name, datatype, shape, params


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise BadRequestError(f"{what} must be a JSON object")
    return value


def _optional_id(doc: Mapping[str, Any]) -> str | None:
    value = doc.get("id")
    return None if value is None else str(value)


def _requested_outputs(value: Any) -> tuple[RequestedOutput, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadRequestError("'outputs' must be a list of {\"name\": ...} objects")
    wanted = []
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise BadRequestError("each requested output must be an object with a 'name'")
        params = _mapping(entry.get("parameters", {}), f"output {entry['name']!r} parameters")
        if "classification" in params:
            raise BadRequestError("the classification extension is not supported; request "
                                  "the raw output and take its top-k")
        binary = params.get("binary_data")
        wanted.append(RequestedOutput(entry["name"], None if binary is None else bool(binary)))
    return tuple(wanted)


def encode_http_response(response: InferResponse) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when the body is all JSON)."""
    outputs, chunks = [], []
    for name, array in response.outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array.dtype),
                                 "shape": list(array.shape)}
        if response.binary.get(name):
            raw = np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.ravel().tolist()
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": response.model, "model_version": response.version,
                           "outputs": outputs}
    if response.id is not None:
        doc["id"] = response.id
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
