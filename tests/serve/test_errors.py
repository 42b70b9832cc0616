"""Every error maps to one HTTP status and one gRPC code, the same from both front ends."""

from __future__ import annotations

import pytest

from torchslim.errors import ArtifactError, ConfigError, InvalidInputError
from torchslim.serve.errors import (BadRequestError, ModelLoadError, ModelNotFoundError,
                                    ModelNotReadyError, PayloadTooLargeError, RequestTimeoutError,
                                    ServerBusyError, ShuttingDownError, error_message, status_of)


@pytest.mark.parametrize("error, status", [
    (InvalidInputError("input 'x' expects shape (batch, 4)"), (400, "INVALID_ARGUMENT")),
    (BadRequestError("malformed JSON"), (400, "INVALID_ARGUMENT")),
    (ConfigError("bad option"), (400, "INVALID_ARGUMENT")),
    (ModelNotFoundError("unknown model"), (404, "NOT_FOUND")),
    (ModelLoadError("version 2 failed"), (400, "INVALID_ARGUMENT")),
    (PayloadTooLargeError("too big"), (413, "RESOURCE_EXHAUSTED")),
    (ServerBusyError("queue full"), (429, "RESOURCE_EXHAUSTED")),
    (ModelNotReadyError("loading"), (503, "UNAVAILABLE")),
    (ShuttingDownError("draining"), (503, "UNAVAILABLE")),
    (RequestTimeoutError("late"), (504, "DEADLINE_EXCEEDED")),
    (ArtifactError("session closed"), (500, "INTERNAL")),
    (RuntimeError("boom"), (500, "INTERNAL")),
])
def test_status_of(error: BaseException, status: tuple[int, str]) -> None:
    assert status_of(error) == status


def test_messages_are_one_line_and_unexpected_errors_name_their_type() -> None:
    assert error_message(BadRequestError("bad\n  input")) == "bad input"
    assert error_message(KeyError("y")) == "internal error (KeyError): 'y'"
