"""The gRPC front end (inference.GRPCInferenceService), driven by tritonclient.grpc and, for
what no client sends, by a stub from our own generated modules; plus a check that those
modules match tritonclient's messages field for field (the wire contract)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import serve_helpers as h
from serve_helpers import launch
from tritonclient.utils import InferenceServerException

from torchslim.runtime import open as open_session
from torchslim.serve.proto import grpc_predict_v2_pb2 as pb
from torchslim.serve.proto import grpc_predict_v2_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("grpc")
    artifact = h.linear(root / "lin" / "1" / "model.onnx")
    h.two_io(root / "two" / "1" / "model.onnx")
    server = launch({"lin": (root / "lin", {"max_batch_size": 8, "max_queue_delay_ms": 1}),
                     "two": (root / "two", {})}, max_body_bytes=64 << 10)
    yield server, artifact
    server.stop()


def test_health_readiness_and_metadata(served) -> None:  # noqa: ANN001
    server, _ = served
    client = h.grpc_client(server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("lin") and client.is_model_ready("lin", "1")
    assert not client.is_model_ready("lin", "2") and not client.is_model_ready("nope")
    assert client.get_server_metadata().name == "torchslim"
    meta = client.get_model_metadata("two", as_json=True)
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("x", "FP32", ["-1", "4"]), ("ids", "INT64", ["-1", "2"])]


def test_round_trip_matches_the_session_bit_for_bit(served) -> None:  # noqa: ANN001
    import tritonclient.grpc as grpcclient

    server, artifact = served
    client = h.grpc_client(server)
    reference = open_session(artifact)
    for n in (1, 5, 8):
        x = h.rows(n, seed=10 + n)
        result = client.infer("lin", [h.grpc_input("x", x)], request_id=f"g{n}",
                              outputs=[grpcclient.InferRequestedOutput("y")])
        assert result.get_response().id == f"g{n}"
        assert result.get_response().model_version == "1"
        np.testing.assert_array_equal(result.as_numpy("y"), reference.run(x))


def test_two_inputs_two_outputs_and_int64(served) -> None:  # noqa: ANN001
    server, _ = served
    x, ids = h.rows(3), np.arange(6, dtype=np.int64).reshape(3, 2)
    result = h.grpc_client(server).infer("two", [h.grpc_input("x", x), h.grpc_input("ids", ids)])
    np.testing.assert_array_equal(result.as_numpy("y"), 2 * x)
    np.testing.assert_array_equal(result.as_numpy("s"), [[1], [5], [9]])


def test_bad_input_maps_to_the_protocol_codes(served) -> None:  # noqa: ANN001
    server, _ = served
    client = h.grpc_client(server)
    nan = h.rows(1)
    nan[0, 0] = np.inf
    cases = [("lin", "", [h.grpc_input("x", h.rows(1, features=5))], "INVALID_ARGUMENT",
              "expects shape"),
             ("lin", "", [h.grpc_input("x", h.rows(1).astype(np.float64))], "INVALID_ARGUMENT",
              "takes FP32"),
             ("two", "", [h.grpc_input("x", h.rows(1))], "INVALID_ARGUMENT", "missing ['ids']"),
             ("lin", "", [h.grpc_input("x", nan)], "INVALID_ARGUMENT", "NaN/Inf"),
             ("lin", "", [h.grpc_input("x", h.rows(9))], "INVALID_ARGUMENT", "max_batch_size=8"),
             ("lin", "4", [h.grpc_input("x", h.rows(1))], "NOT_FOUND", "no version '4'"),
             ("nope", "", [h.grpc_input("x", h.rows(1))], "NOT_FOUND", "unknown model")]
    for model, version, inputs, code, words in cases:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, inputs, model_version=version)
        assert caught.value.status() == f"StatusCode.{code}", caught.value.message()
        assert words in caught.value.message()
    assert client.infer("lin", [h.grpc_input("x", h.rows(1))]).as_numpy("y").shape == (1, 3)


def _stub(server) -> pb_grpc.GRPCInferenceServiceStub:  # noqa: ANN001
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    return pb_grpc.GRPCInferenceServiceStub(channel)


def _request(raw: list[bytes], shape: list[int], **typed) -> pb.ModelInferRequest:  # noqa: ANN003
    request = pb.ModelInferRequest(model_name="lin", raw_input_contents=raw)
    tensor = request.inputs.add(name="x", datatype="FP32", shape=shape)
    for field, values in typed.items():
        getattr(tensor.contents, field).extend(values)
    return request


@pytest.mark.parametrize("request_, code", [
    (_request([b"\0" * 8], [1, 4]), grpc.StatusCode.INVALID_ARGUMENT),        # 8 bytes, 16 wanted
    (_request([b"\0" * 16, b"\0"], [1, 4]), grpc.StatusCode.INVALID_ARGUMENT),  # 2 raw for 1 input
    (_request([], [1, 4], fp32_contents=[1, 2, 3]), grpc.StatusCode.INVALID_ARGUMENT),
    (_request([b"\0" * (80 << 10)], [1, 20480]), grpc.StatusCode.RESOURCE_EXHAUSTED),  # > limit
])
def test_malformed_messages_are_refused(served, request_, code) -> None:  # noqa: ANN001
    server, _ = served
    with pytest.raises(grpc.RpcError) as caught:
        _stub(server).ModelInfer(request_, timeout=10)
    assert caught.value.code() == code


def test_typed_contents_are_read_as_well_as_raw_bytes(served) -> None:  # noqa: ANN001
    server, artifact = served
    x = h.rows(2)
    reply = _stub(server).ModelInfer(_request([], [2, 4], fp32_contents=x.ravel().tolist()),
                                     timeout=10)
    y = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(y, open_session(artifact).run(x))


def _fields(descriptor) -> dict:  # noqa: ANN001
    out = {}
    for f in descriptor.fields:
        out[f.name] = (f.number, f.type, f.message_type.full_name if f.message_type else None)
    for nested in descriptor.nested_types:
        out[nested.name] = _fields(nested)
    return out


def test_our_messages_match_tritonclients_on_the_wire() -> None:
    from tritonclient.grpc import service_pb2 as triton

    ours = pb.DESCRIPTOR
    for name, message in ours.message_types_by_name.items():
        assert _fields(message) == _fields(triton.DESCRIPTOR.message_types_by_name[name]), name
    service = ours.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    theirs = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    for method in service.methods:
        other = theirs.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            other.input_type.full_name, other.output_type.full_name)
