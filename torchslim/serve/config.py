"""What a server serves and how: one frozen config per concern, each validating itself.

``ServerConfig`` holds the listeners and the models; a ``ModelConfig`` names where the
model's versions come from, which of them to serve (``VersionPolicy``), how many session
instances run it and how requests are batched (``BatchingConfig``). The CLI flags and the
YAML repository file (``torchslim.serve.config_file``) both build these, so each option
is defined once, here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from torchslim.errors import ConfigError

__all__ = ["BatchingConfig", "VersionPolicy", "ModelConfig", "ServerConfig", "version_key",
           "FieldError"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class FieldError(ConfigError):
    """A ConfigError that names the option it is about (``field``), so a config file's
    loader can point at the line that set it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.reason = message


def _check(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise FieldError(field_name, message)


def version_key(version: str) -> tuple[Any, ...]:
    """Sort key: numeric and dotted versions by their numbers ("10" after "9",
    "1.10.0" after "1.9.2"), then any other label alphabetically."""
    parts = version.split(".")
    if all(p.isdigit() for p in parts):
        return (0, tuple(int(p) for p in parts), "")
    return (1, (), version)


@dataclass(frozen=True, kw_only=True)
class BatchingConfig:
    """How one model's requests are queued and packed into executions."""

    # rows in one execution; requests carrying their own batch dim are packed whole
    max_batch_size: int = 32
    # the longest the oldest queued request waits for others to join its batch (a request
    # alone right after a batch that was alone too is sent at once: no one to wait for)
    max_queue_delay_ms: float = 2.0
    # sizes the batcher dispatches at as soon as it reaches one (the largest it can form)
    preferred_batch_sizes: tuple[int, ...] = ()
    # requests waiting (not rows); one more is refused at once with 429
    max_queue_size: int = 256
    # a request not answered within this is dropped with 504; None waits forever
    default_timeout_ms: float | None = 30_000.0

    def __post_init__(self) -> None:
        _check(self.max_batch_size >= 1, "max_batch_size",
               f"{self.max_batch_size} must be >= 1 (1 turns batching off)")
        _check(self.max_queue_delay_ms >= 0, "max_queue_delay_ms",
               f"{self.max_queue_delay_ms} must be >= 0 (0 dispatches at once)")
        _check(self.max_queue_size >= 1, "max_queue_size", f"{self.max_queue_size} must be >= 1")
        sizes = tuple(self.preferred_batch_sizes)
        _check(all(1 <= s <= self.max_batch_size for s in sizes), "preferred_batch_sizes",
               f"{list(sizes)} must lie in [1, max_batch_size={self.max_batch_size}]")
        object.__setattr__(self, "preferred_batch_sizes", tuple(sorted(set(sizes))))
        _check(self.default_timeout_ms is None or self.default_timeout_ms > 0,
               "default_timeout_ms", f"{self.default_timeout_ms} must be > 0 or null (no limit)")

    def warmup_sizes(self) -> tuple[int, ...]:
        """The batch sizes warmed up before a version reports ready: 1, every preferred
        size, and the largest, so no client pays a first-call cost at those sizes."""
        return tuple(sorted({1, *self.preferred_batch_sizes, self.max_batch_size}))


@dataclass(frozen=True, kw_only=True)
class VersionPolicy:
    """Which of a model's versions are served: the newest ``latest`` of them, ``all``, or
    the ``specific`` ones listed in ``versions``."""

    kind: str = "latest"
    latest: int = 1
    versions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check(self.kind in ("latest", "all", "specific"), "version_policy",
               f"{self.kind!r} is not a policy; allowed: latest, latest:N, all, or a list "
               "of versions")
        _check(self.latest >= 1, "version_policy", f"latest:{self.latest} must keep >= 1")
        object.__setattr__(self, "versions", tuple(str(v) for v in self.versions))
        _check(self.kind != "specific" or bool(self.versions), "version_policy",
               "a specific policy needs at least one version")

    @classmethod
    def parse(cls, value: str | int | Iterable[str | int]) -> VersionPolicy:
        """``"latest"``, ``"latest:2"``, ``"all"``, ``"1,3"`` or a list of versions."""
        if isinstance(value, (list, tuple)):
            return cls(kind="specific", versions=tuple(str(v) for v in value))
        text = str(value).strip()
        if text in ("latest", "all"):
            return cls(kind=text)
        if text.startswith("latest:"):
            n = text.removeprefix("latest:")
            _check(n.isdigit(), "version_policy", f"{text!r}: latest:N needs a whole number")
            return cls(kind="latest", latest=int(n))
        versions = tuple(v.strip() for v in text.split(",") if v.strip())
        _check(bool(versions), "version_policy", f"{text!r} names no version")
        return cls(kind="specific", versions=versions)

    def select(self, available: Iterable[str]) -> list[str]:
        """The versions to serve out of ``available``, oldest first."""
        ordered = sorted(set(available), key=version_key)
        if self.kind == "all":
            return ordered
        if self.kind == "latest":
            return ordered[-self.latest:]
        return [v for v in ordered if v in self.versions]

    def describe(self) -> str:
        if self.kind == "specific":
            return ",".join(self.versions)
        return "latest" if self.kind == "latest" and self.latest == 1 else (
            f"latest:{self.latest}" if self.kind == "latest" else "all")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """One served model: ``source`` is an artifact file, a directory of versions
    (``MODEL/1/model.onnx``, ``MODEL/2/...``) or a registry reference ``name@alias``."""

    name: str
    source: str
    runtime: str | None = None      # None: the one the artifact's suffix implies
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    instances: int = 1              # sessions, each on its own worker thread
    threads: int | None = None      # intra-op threads per session; None: cores // instances
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    # NaN/Inf in a float input is refused with 400 unless the model is known to take them
    allow_nonfinite: bool = False
    warmup: bool = True

    def __post_init__(self) -> None:
        _check(bool(_NAME.match(self.name)), "name",
               f"{self.name!r} must be letters, digits, '_', '.' or '-' (it is a URL segment)")
        _check(bool(str(self.source).strip()), "source", "is empty; pass a file, a directory "
               "of versions or name@alias")
        _check(self.instances >= 1, "instances", f"{self.instances} must be >= 1")
        _check(self.threads is None or self.threads >= 1, "threads",
               f"{self.threads} must be >= 1")

    def session_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // self.instances)


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """The listeners and the models. A port of 0 picks a free one (the server reports it);
    ``grpc_port=None`` serves HTTP only."""

    models: tuple[ModelConfig, ...]
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int | None = 8001
    max_body_bytes: int = 64 << 20
    drain_timeout_s: float = 30.0
    access_log: bool = True
    # a directory of models: POST /v2/repository/models/NAME/load can add NAME from it
    repository: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        names = [m.name for m in self.models]
        _check(len(set(names)) == len(names), "models", f"two models share a name: {names}")
        for port_field in ("http_port", "grpc_port"):
            port = getattr(self, port_field)
            _check(port is None or 0 <= port <= 65535, port_field, f"{port} is not a port")
        _check(self.max_body_bytes >= 1024, "max_body_bytes",
               f"{self.max_body_bytes} must be >= 1024")
        _check(self.drain_timeout_s >= 0, "drain_timeout_s", f"{self.drain_timeout_s} must be >= 0")
