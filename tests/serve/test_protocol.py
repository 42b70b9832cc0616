"""Tensors and HTTP bodies of the Open Inference Protocol, without a server: datatypes,
JSON data (flat or nested, refusing values the datatype would change), the binary tensor
extension both ways."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from torchslim.serve.errors import BadRequestError
from torchslim.serve.protocol import (DATATYPES, InferResponse, datatype_of, decode_http_request,
                                      encode_http_response, metadata_shape, tensor_from_json,
                                      timeout_from_us)


def test_datatypes_map_both_ways() -> None:
    for name, dtype in DATATYPES.items():
        assert datatype_of(dtype) == name
    assert datatype_of("object") == "BYTES"
    assert metadata_shape(("batch", 3, None)) == [-1, 3, -1] and metadata_shape(None) == [-1]


@pytest.mark.parametrize("data", [[1, 2, 3, 4, 5, 6], [[1, 2, 3], [4, 5, 6]]])
def test_json_data_may_be_flat_or_nested(data: list) -> None:
    out = tensor_from_json(data, "INT64", [2, 3], tensor="t")
    assert out.dtype == np.int64 and out.tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize("data, datatype, words", [
    ([1.5, 2], "INT64", "fractions"), ([300, 1], "UINT8", "out of range"),
    ([True, False], "FP32", "booleans"), ([1, 2, 3], "FP32", "3 values for shape [2]"),
    ([[1, 2], [3]], "FP32", "list of numbers"), (["a", "b"], "FP32", "list of numbers"),
    ([1, 2], "BYTES", "not supported"), ([1, 2], "FP8", "not supported"),
])
def test_json_data_the_datatype_would_change_is_refused(data: list, datatype: str,
                                                         words: str) -> None:
    with pytest.raises(BadRequestError, match=re.escape(words)):
        tensor_from_json(data, datatype, [2], tensor="t")


def test_binary_request_and_response_round_trip() -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    ids = np.array([[7], [9]], dtype=np.int64)
    header = json.dumps({"id": "q", "parameters": {"timeout": 2_500_000},
                         "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4],
                                     "parameters": {"binary_data_size": x.nbytes}},
                                    {"name": "ids", "datatype": "INT64", "shape": [2, 1],
                                     "data": [7, 9]}],
                         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    request = decode_http_request(header + x.tobytes(), len(header), model="m", version="2")
    assert (request.id, request.version, request.timeout_s) == ("q", "2", 2.5)
    np.testing.assert_array_equal(request.inputs["x"], x)
    np.testing.assert_array_equal(request.inputs["ids"], ids)
    assert [(o.name, o.binary) for o in request.outputs] == [("y", True)]
    body, length = encode_http_response(InferResponse(model="m", version="2", id="q",
                                                      outputs={"y": x, "ids": ids},
                                                      binary={"y": True, "ids": False}))
    doc = json.loads(body[:length])
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": x.nbytes}
    assert doc["outputs"][1]["data"] == [7, 9] and doc["id"] == "q"
    np.testing.assert_array_equal(np.frombuffer(body[length:], np.float32).reshape(2, 4), x)


def test_an_all_json_response_has_no_header_length() -> None:
    body, length = encode_http_response(InferResponse(model="m", version="1",
                                                      outputs={"y": np.ones((1, 2), np.float32)}))
    assert length is None and json.loads(body)["outputs"][0]["data"] == [1.0, 1.0]


@pytest.mark.parametrize("value", [0, -1, "10", True])
def test_a_timeout_is_a_positive_number_of_microseconds(value: object) -> None:
    with pytest.raises(BadRequestError, match="microseconds"):
        timeout_from_us(value)
