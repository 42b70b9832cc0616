"""The HTTP front end, driven by tritonclient.http (and by hand for what no client sends):
health, metadata, bit-exact round trips in JSON and binary form, and every bad input
answered with a one-line {"error": ...} while the server keeps serving."""

from __future__ import annotations

import json
import zlib

import httpx
import numpy as np
import pytest
import serve_helpers as h
from serve_helpers import launch
from tritonclient.utils import InferenceServerException

from torchslim.runtime import open as open_session


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """One server for the module (every test leaves it as it found it)."""
    root = tmp_path_factory.mktemp("http")
    artifact = h.linear(root / "lin" / "1" / "model.onnx")
    h.two_io(root / "two" / "1" / "model.onnx")
    h.linear(root / "fixed.onnx", batch=1)
    h.linear(root / "nan_ok.onnx")
    server = launch({"lin": (root / "lin", {"max_batch_size": 8, "max_queue_delay_ms": 1}),
                     "two": (root / "two", {}), "fixed": (root / "fixed.onnx", {}),
                     "nan_ok": (root / "nan_ok.onnx", {"allow_nonfinite": True})},
                    max_body_bytes=64 << 10)
    yield server, artifact
    server.stop()


@pytest.fixture(scope="module")
def web() -> httpx.Client:  # noqa: ANN201
    with httpx.Client() as client:
        yield client


def test_health_readiness_and_metadata(served) -> None:  # noqa: ANN001
    server, _ = served
    client = h.http_client(server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("lin") and client.is_model_ready("lin", "1")
    assert not client.is_model_ready("lin", "7") and not client.is_model_ready("nope")
    meta = client.get_server_metadata()
    assert meta["name"] == "torchslim" and "binary_tensor_data" in meta["extensions"]
    lin = client.get_model_metadata("lin")
    assert lin == {"name": "lin", "versions": ["1"], "platform": "onnxruntime_onnx",
                   "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                   "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]}
    two = client.get_model_metadata("two", "1")
    assert [(t["name"], t["datatype"]) for t in two["inputs"]] == [("x", "FP32"), ("ids", "INT64")]
    assert [(t["name"], t["datatype"]) for t in two["outputs"]] == [("y", "FP32"), ("s", "INT64")]
    assert client.get_model_metadata("fixed")["inputs"][0]["shape"] == [1, 4]


@pytest.mark.parametrize("binary", [True, False])
def test_round_trip_matches_the_session_bit_for_bit(served, binary: bool) -> None:  # noqa: ANN001
    import tritonclient.http as httpclient

    server, artifact = served
    client = h.http_client(server)
    reference = open_session(artifact)
    for n in (1, 3, 8):
        x = h.rows(n, seed=n)
        outputs = [httpclient.InferRequestedOutput("y", binary_data=binary)]
        result = client.infer("lin", [h.http_input("x", x, binary=binary)], outputs=outputs,
                              request_id=f"r{n}")
        assert result.get_response()["id"] == f"r{n}"
        assert result.get_response()["model_version"] == "1"
        np.testing.assert_array_equal(result.as_numpy("y"), reference.run(x))


def test_two_inputs_two_outputs_and_int64(served) -> None:  # noqa: ANN001
    server, _ = served
    x = h.rows(2)
    ids = np.array([[1, 2], [30, 40]], dtype=np.int64)
    result = h.http_client(server).infer("two", [h.http_input("x", x), h.http_input("ids", ids)])
    np.testing.assert_array_equal(result.as_numpy("y"), 2 * x)
    assert result.as_numpy("s").dtype == np.int64
    np.testing.assert_array_equal(result.as_numpy("s"), [[3], [70]])


def test_a_model_with_a_fixed_batch_dim_is_served_unbatched(served) -> None:  # noqa: ANN001
    server, _ = served
    x = h.rows(1)
    result = h.http_client(server).infer("fixed", [h.http_input("x", x)])
    np.testing.assert_allclose(result.as_numpy("y"), h.expected_linear(x), rtol=1e-5, atol=1e-6)


def test_nan_passes_where_the_model_allows_it(served) -> None:  # noqa: ANN001
    server, _ = served
    x = h.rows(1)
    x[0, 0] = np.nan
    result = h.http_client(server).infer("nan_ok", [h.http_input("x", x)])
    assert np.isnan(result.as_numpy("y")).all()


def _infer(x: list | None = None, **extra) -> dict:  # noqa: ANN003
    data = [0.5] * 4 if x is None else x
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": data}], **extra}


def _binary_body(declared: int, actual: int) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                     "parameters": {"binary_data_size": declared}}]}).encode()
    return header + b"\0" * actual, {"Inference-Header-Content-Length": str(len(header))}


BAD_REQUESTS = {
    "malformed JSON": ("lin", b'{"inputs": [', {}, 400),
    "a JSON list": ("lin", b"[1, 2]", {}, 400),
    "no inputs": ("lin", json.dumps({"outputs": []}).encode(), {}, 400),
    "wrong shape": ("lin", json.dumps({"inputs": [{"name": "x", "datatype": "FP32",
                                                   "shape": [1, 5], "data": [1] * 5}]}).encode(),
                    {}, 400),
    "wrong dtype": ("lin", json.dumps({"inputs": [{"name": "x", "datatype": "FP64",
                                                   "shape": [1, 4], "data": [1] * 4}]}).encode(),
                    {}, 400),
    "data count": ("lin", json.dumps(_infer([1, 2, 3])).encode(), {}, 400),
    "strings as data": ("lin", json.dumps(_infer(["a", "b", "c", "d"])).encode(), {}, 400),
    "unknown input": ("lin", json.dumps({"inputs": [{"name": "z", "datatype": "FP32",
                                                     "shape": [1, 4], "data": [1] * 4}]}).encode(),
                      {}, 400),
    "missing input": ("two", json.dumps(_infer()).encode(), {}, 400),
    "fractions for INT64": ("two", json.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1] * 4},
        {"name": "ids", "datatype": "INT64", "shape": [1, 2], "data": [1.5, 2]}]}).encode(), {}, 400),
    "Infinity": ("lin", b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], '
                        b'"data": [1, Infinity, 2, 3]}]}', {}, 400),
    "batch over max_batch_size": ("lin", json.dumps({"inputs": [
        {"name": "x", "datatype": "FP32", "shape": [9, 4], "data": [0] * 36}]}).encode(), {}, 400),
    "unknown output": ("lin", json.dumps(_infer(outputs=[{"name": "logits"}])).encode(), {}, 400),
    "negative timeout": ("lin", json.dumps(_infer(parameters={"timeout": -5})).encode(), {}, 400),
    "binary size too small": ("lin", *_binary_body(8, 8), 400),
    "binary past the body": ("lin", *_binary_body(16, 8), 400),
    "bytes left over": ("lin", *_binary_body(16, 20), 400),
    "header length past the body": ("lin", b"{}", {"Inference-Header-Content-Length": "99"}, 400),
    "unknown model": ("nope", json.dumps(_infer()).encode(), {}, 404),
    "body over the limit": ("lin", b" " * (65 << 10), {}, 413),
    "gzip bomb": ("lin", zlib.compress(b" " * (1 << 20)), {"Content-Encoding": "deflate"}, 413),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_a_one_line_error_and_the_server_keeps_serving(served, web, case: str
                                                                   ) -> None:  # noqa: ANN001
    server, _ = served
    model, body, headers, status = BAD_REQUESTS[case]
    base = f"http://127.0.0.1:{server.http_port}"
    reply = web.post(f"{base}/v2/models/{model}/infer", content=body, headers=headers)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert isinstance(error, str) and error and "\n" not in error and len(reply.json()) == 1
    good = web.post(f"{base}/v2/models/lin/infer", content=json.dumps(_infer()).encode())
    assert good.status_code == 200 and len(good.json()["outputs"][0]["data"]) == 3


def test_tritonclient_sees_the_status_and_message(served) -> None:  # noqa: ANN001
    server, _ = served
    client = h.http_client(server)
    cases = [("lin", "", [h.http_input("x", h.rows(1, features=5))], "400", "expects shape"),
             ("lin", "", [h.http_input("x", h.rows(1).astype(np.float64))], "400", "takes FP32"),
             ("two", "", [h.http_input("x", h.rows(1))], "400", "missing ['ids']"),
             ("lin", "3", [h.http_input("x", h.rows(1))], "404", "no version '3'"),
             ("nope", "", [h.http_input("x", h.rows(1))], "404", "unknown model 'nope'")]
    nan = h.rows(1)
    nan[0, 2] = np.nan
    cases.append(("lin", "", [h.http_input("x", nan)], "400", "NaN/Inf"))
    for model, version, inputs, status, words in cases:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, inputs, model_version=version)
        assert caught.value.status() == status and words in caught.value.message()


def test_compressed_request_bodies_are_read(served) -> None:  # noqa: ANN001
    server, artifact = served
    x = h.rows(2)
    result = h.http_client(server).infer("lin", [h.http_input("x", x)],
                                         request_compression_algorithm="gzip")
    np.testing.assert_array_equal(result.as_numpy("y"), open_session(artifact).run(x))


def test_unknown_routes_answer_in_the_protocol_error_shape(served, web) -> None:  # noqa: ANN001
    server, _ = served
    reply = web.get(f"http://127.0.0.1:{server.http_port}/v3/nothing")
    assert reply.status_code == 404 and "/v2" in reply.json()["error"]


def test_infer_takes_only_post_and_names_the_method(served, web) -> None:  # noqa: ANN001
    server, _ = served
    for path in ("/v2/models/lin/infer", "/v2/models/lin/versions/1/infer"):
        reply = web.get(f"http://127.0.0.1:{server.http_port}{path}")
        assert reply.status_code == 405 and reply.headers["allow"] == "POST"
        assert "GET" in reply.json()["error"] and "\n" not in reply.json()["error"]
