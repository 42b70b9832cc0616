"""What the server tests share: tiny ONNX models built with onnx.helper (milliseconds, no
torch export) — a linear layer (dynamic or fixed batch) and a two-input/two-output model
with an INT64 input — and tritonclient helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from torchslim.serve import InferenceServer, ServerConfig
from torchslim.serve.config_file import build_model_config


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def linear_weights(seed: int, features: int = 4, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((features, classes)).astype(np.float32),
            rng.standard_normal(classes).astype(np.float32))


def linear(path: Path, *, seed: int = 0, features: int = 4, classes: int = 3,
           batch: int | str = "batch") -> Path:
    """y = x @ W + b: x FP32 (batch, features) -> y FP32 (batch, classes)."""
    w, b = linear_weights(seed, features, classes)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, classes])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return _save(graph, path)


def two_io(path: Path) -> Path:
    """x FP32 (batch, 4), ids INT64 (batch, 2) -> y = 2x FP32 (batch, 4), s = ids summed
    over dim 1 INT64 (batch, 1)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"]),
         helper.make_node("ReduceSum", ["ids", "axes"], ["s"], keepdims=1)],
        "two_io",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("s", TensorProto.INT64, ["batch", 1])],
        initializer=[numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
                     numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")])
    return _save(graph, path)


def expected_linear(x: np.ndarray, seed: int = 0) -> np.ndarray:
    w, b = linear_weights(seed, x.shape[1])
    return x @ w + b


def launch(models: dict[str, tuple[Path | str, dict[str, Any]]], *, template: Any = None,
           **server: Any) -> InferenceServer:
    """A running server for ``{"name": (source, {options})}`` on free loopback ports."""
    configs = tuple(build_model_config(name, str(src), opts) for name, (src, opts) in models.items())
    options = {"http_port": 0, "grpc_port": 0, "access_log": False, **server}
    return InferenceServer(ServerConfig(models=configs, **options), template=template).start()


def http_client(server: Any, **kwargs: Any) -> Any:
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}", **kwargs)


def grpc_client(server: Any) -> Any:
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")


def http_input(name: str, array: np.ndarray, *, binary: bool = True) -> Any:
    import tritonclient.http as httpclient
    from tritonclient.utils import np_to_triton_dtype

    tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def grpc_input(name: str, array: np.ndarray) -> Any:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def rows(n: int, seed: int = 0, features: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, features)).astype(np.float32)


def scrape(server: Any) -> str:
    import httpx

    reply = httpx.get(f"http://127.0.0.1:{server.http_port}/metrics")
    reply.raise_for_status()
    return reply.text


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))
