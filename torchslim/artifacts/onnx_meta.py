"""ONNX specifics: the ``torchslim.*`` entries of ``metadata_props``, external data files,
and the format / precision a graph's operators imply.

A stamp rewrites only the ``.onnx`` protobuf (loaded without its external data, so the
tensors keep pointing at their data files, which stay byte for byte untouched); the file
is replaced atomically.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from torchslim import _io
from torchslim.errors import ManifestError

__all__ = ["PROP_REGISTRY_ID", "PROP_PARENT_DIGEST", "PROP_RECIPE_HASH", "load_proto",
           "read_props", "stamp", "stamped_bytes", "external_files", "onnx_format"]

PROP_REGISTRY_ID = "torchslim.registry_id"
PROP_PARENT_DIGEST = "torchslim.parent_digest"
PROP_RECIPE_HASH = "torchslim.recipe_hash"

_DYNAMIC = {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul",
            "DynamicQuantizeLSTM"}
_STATIC = {"QuantizeLinear", "QLinearConv", "QLinearMatMul"}
_WEIGHT_ONLY = {"DequantizeLinear", "MatMulNBits"}


def load_proto(path: str | os.PathLike[str], data: bytes | None = None) -> Any:
    """The model's protobuf without its external data, from the file or from ``data``
    (the file's bytes); ManifestError if it does not parse."""
    import onnx

    try:
        if data is None:
            data = Path(path).read_bytes()
        proto = onnx.ModelProto()
        proto.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError and friends have no common base
        raise ManifestError(f"{path} is not a readable ONNX file ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else 'no detail'}); "
                            "export it again") from e
    if not proto.graph.node and not proto.graph.output:
        raise ManifestError(f"{path} is not an ONNX model (it parses to an empty graph); "
                            "export it again")
    return proto


def read_props(path: str | os.PathLike[str]) -> dict[str, str]:
    """Every ``torchslim.*`` entry of the file's ``metadata_props``."""
    return {p.key: p.value for p in load_proto(path).metadata_props
            if p.key.startswith("torchslim.")}


def _apply(proto: Any, props: Mapping[str, str | None]) -> bool:
    """Set (or, for None, remove) ``props`` in ``proto``; True when anything changed."""
    current = {p.key: p.value for p in proto.metadata_props}
    wanted = {**current, **{k: v for k, v in props.items() if v is not None}}
    for key, value in props.items():
        if value is None:
            wanted.pop(key, None)
    if wanted == current:
        return False
    del proto.metadata_props[:]
    for key, value in wanted.items():
        proto.metadata_props.add(key=key, value=value)
    return True


def stamped_bytes(path: str | os.PathLike[str], props: Mapping[str, str | None],
                  data: bytes | None = None) -> bytes | None:
    """The ``.onnx`` file's bytes (or ``data``) with ``props`` set, or None when they
    already carry them."""
    proto = load_proto(path, data)
    return proto.SerializeToString() if _apply(proto, props) else None


def stamp(path: str | os.PathLike[str], props: Mapping[str, str | None]) -> bool:
    """Write ``props`` into the file's ``metadata_props`` (atomically); False when the file
    already carried them (and was left alone)."""
    data = stamped_bytes(path, props)
    if data is None:
        return False
    _io.write_bytes(path, data)
    return True


def external_files(path: str | os.PathLike[str], proto: Any = None) -> list[str]:
    """Relative paths of the external data files the model's tensors point at."""
    proto = proto if proto is not None else load_proto(path)
    found: set[str] = set()
    for tensor in _tensors(proto.graph):
        for entry in tensor.external_data:
            if entry.key == "location":
                found.add(_inside(Path(path), entry.value))
    return sorted(found)


def _inside(path: Path, location: str) -> str:
    p = PurePosixPath(location.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts:
        raise ManifestError(f"{path.name} keeps tensor data at {location!r}, outside its "
                            "directory; save it with a relative location beside the model")
    return str(p)


def _tensors(graph: Any) -> Iterator[Any]:
    """Every tensor of ``graph``: initializers, sparse ones, and those in node attributes
    (constants, subgraphs of If / Loop / Scan)."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def onnx_format(proto: Any) -> tuple[str, str]:
    """``(format, precision)`` from the graph's operators: integer MatMuls with runtime
    activation scales are onnx-dynamic, QuantizeLinear on activations onnx-qdq, weights
    dequantized without any activation quantizer onnx-weight-only."""
    ops = {node.op_type for node in proto.graph.node}
    if ops & _DYNAMIC:
        return "onnx-dynamic", "int8"
    if ops & _STATIC:
        return "onnx-qdq", "int8"
    if ops & _WEIGHT_ONLY:
        return "onnx-weight-only", f"int{_weight_bits(proto)}-weight-only"
    return "onnx-fp32", "fp32"


def _weight_bits(proto: Any) -> int:
    import onnx

    for node in proto.graph.node:
        if node.op_type == "MatMulNBits":
            return next((a.i for a in node.attribute if a.name == "bits"), 4)
    four = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
    dq_inputs = {n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    types = {t.data_type for t in proto.graph.initializer if t.name in dq_inputs}
    return 4 if types and types <= four else 8
