"""What the server answers when a request cannot be served, and with which status.

Every class carries its HTTP status and gRPC status-code name, so the HTTP and gRPC front
ends map an exception the same way (``status_of``). Messages are one line naming what was
wrong and how to fix it; the protocol's error body is ``{"error": message}``.
"""

from __future__ import annotations

from torchslim.errors import ArtifactError, ConfigError, InvalidInputError, TorchslimError

__all__ = ["ServeError", "BadRequestError", "ModelNotFoundError", "ModelNotReadyError",
           "PayloadTooLargeError", "ServerBusyError", "RequestTimeoutError", "ModelLoadError",
           "ShuttingDownError", "status_of", "error_message"]


class ServeError(TorchslimError):
    """A request the server refuses; ``http_status`` and ``grpc_code`` say how."""

    http_status = 500
    grpc_code = "INTERNAL"


class BadRequestError(ServeError, InvalidInputError):
    """A request that does not follow the protocol or the model's signature."""

    http_status, grpc_code = 400, "INVALID_ARGUMENT"


class ModelNotFoundError(ServeError, LookupError):
    """A model or version the server does not serve."""

    http_status, grpc_code = 404, "NOT_FOUND"


class ModelNotReadyError(ServeError):
    """A known model that is still loading."""

    http_status, grpc_code = 503, "UNAVAILABLE"


class PayloadTooLargeError(ServeError):
    http_status, grpc_code = 413, "RESOURCE_EXHAUSTED"


class ServerBusyError(ServeError):
    """The model's queue is full: retry later (HTTP 429, gRPC RESOURCE_EXHAUSTED)."""

    http_status, grpc_code = 429, "RESOURCE_EXHAUSTED"


class RequestTimeoutError(ServeError, TimeoutError):
    """The request waited longer than its timeout."""

    http_status, grpc_code = 504, "DEADLINE_EXCEEDED"


class ModelLoadError(ServeError, ArtifactError):
    """A (re)load that failed; the versions served before keep serving."""

    http_status, grpc_code = 400, "INVALID_ARGUMENT"


class ShuttingDownError(ServeError):
    http_status, grpc_code = 503, "UNAVAILABLE"


def status_of(e: BaseException) -> tuple[int, str]:
    """(HTTP status, gRPC code name) for an exception raised while serving a request."""
    if isinstance(e, ServeError):
        return e.http_status, e.grpc_code
    if isinstance(e, (InvalidInputError, ConfigError)):
        return 400, "INVALID_ARGUMENT"
    return 500, "INTERNAL"


def error_message(e: BaseException) -> str:
    """The one-line message a client sees; unexpected errors name their type."""
    text = " ".join(str(e).split())
    if isinstance(e, TorchslimError):
        return text or type(e).__name__
    return f"internal error ({type(e).__name__}){': ' + text if text else ''}"
