"""Server configs from a YAML model-repository file, or from one path on the command line.

.. code-block:: yaml

    http_port: 8000
    grpc_port: 8001            # null: HTTP only
    repository: models/        # optional: every MODEL/VERSION/ directory in it is served
    defaults:                  # options for the models found in the repository
      max_batch_size: 32
    models:
      fashion:
        source: runs/demo/student-int8.onnx   # a file, MODEL/VERSION dir or name@alias
        version_policy: latest                 # latest | latest:N | all | [1, 3]
        instances: 1
        threads: 2
        max_batch_size: 32
        max_queue_delay_ms: 2
        preferred_batch_sizes: [8, 16]
        max_queue_size: 256
        default_timeout_ms: 30000
        allow_nonfinite: false

Relative paths are relative to the file. Every error is one ``ConfigError`` line naming
the file, the line and the field: ``repo.yaml:7: models.fashion.max_batch_size: 0 must be
>= 1 (1 turns batching off)``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from torchslim.errors import ConfigError
from torchslim.serve.config import (BatchingConfig, FieldError, ModelConfig, ServerConfig,
                                    VersionPolicy)
from torchslim.serve.sources import is_reference, model_name_for, repository_models

__all__ = ["load_config", "parse_config", "config_for_source", "build_model_config",
           "BATCHING_FIELDS", "MODEL_FIELDS"]

Loc = tuple[Union[str, int], ...]
BATCHING_FIELDS = tuple(f.name for f in dataclasses.fields(BatchingConfig))
MODEL_FIELDS = ("runtime", "version_policy", "instances", "threads", "allow_nonfinite",
                "warmup")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Options(_Strict):
    """A model's options; None means "the default" (defined once, in ModelConfig)."""

    runtime: str | None = None
    version_policy: Union[str, int, list[Union[str, int]], None] = None
    instances: int | None = None
    threads: int | None = None
    allow_nonfinite: bool | None = None
    warmup: bool | None = None
    max_batch_size: int | None = None
    max_queue_delay_ms: float | None = None
    preferred_batch_sizes: list[int] | None = None
    max_queue_size: int | None = None
    default_timeout_ms: float | None = None


class _Model(_Options):
    source: str


class _File(_Strict):
    host: str | None = None
    http_port: int | None = None
    grpc_port: int | None = None
    max_body_bytes: int | None = None
    drain_timeout_s: float | None = None
    access_log: bool | None = None
    repository: str | None = None
    defaults: _Options | None = None
    models: dict[str, _Model] = {}


def build_model_config(name: str, source: str, options: dict[str, Any]) -> ModelConfig:
    """A ModelConfig from flat options (the YAML keys / CLI flags); FieldError on a bad one."""
    batching = {k: v for k, v in options.items() if k in BATCHING_FIELDS and v is not None}
    if "preferred_batch_sizes" in batching:
        batching["preferred_batch_sizes"] = tuple(batching["preferred_batch_sizes"])
    rest = {k: v for k, v in options.items() if k in MODEL_FIELDS and v is not None}
    if "version_policy" in rest:
        rest["version_policy"] = VersionPolicy.parse(rest["version_policy"])
    return ModelConfig(name=name, source=source, batching=BatchingConfig(**batching), **rest)


Built = tuple[ServerConfig, Union[ModelConfig, None]]


def parse_config(text: str, *, source: str = "<config>", base: Path | None = None,
                 overrides: dict[str, Any] | None = None) -> Built:
    """(server config, template for models a load request adds from the repository).
    ``overrides`` are flat options (CLI flags) applied to every model and the server."""
    base = base or Path.cwd()
    raw, lines = _read_yaml(text, source)
    doc = _validated(raw, source, lines)
    overrides = overrides or {}
    at = functools.partial(_guarded, file=source, lines=lines)
    model_options = _model_overrides(overrides)
    defaults = {**(doc.defaults.model_dump() if doc.defaults else {}), **model_options}
    root = _path(doc.repository, base) if doc.repository else None
    models, template = [], None
    if root is not None:
        found = repository_models(Path(root))
        models += [at(("defaults",), build_model_config, name, str(path), defaults)
                   for name, path in found.items() if name not in doc.models]
        template = at(("defaults",), build_model_config, "template", root, defaults)
    for name, m in doc.models.items():
        src = m.source if is_reference(m.source) else _path(m.source, base)
        options = {**m.model_dump(exclude={"source"}), **model_options}
        models.append(at(("models", name), build_model_config, name, src, options))
    server = {k: v for k, v in doc.model_dump(exclude={"models", "defaults"}).items()
              if v is not None or (k == "grpc_port" and k in raw)}   # null: no gRPC
    server.update({k: v for k, v in overrides.items() if k in _SERVER_FIELDS})
    server["repository"] = root
    return at((), ServerConfig, models=tuple(models), **server), template


def _validated(raw: dict[str, Any], source: str, lines: dict[Loc, int]) -> _File:
    try:
        return _File.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        msg = "unknown option" if err["type"] == "extra_forbidden" else err["msg"]
        value = err.get("input")
        if err["type"] != "extra_forbidden" and isinstance(value, (str, int, float, bool)):
            msg += f" (got {value!r})"
        raise ConfigError(f"{source}:{_line(lines, loc)}: {_field(loc)}: {msg}") from None


def load_config(path: str | os.PathLike[str], *, overrides: dict[str, Any] | None = None) -> Built:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; pass a YAML model-repository file")
    return parse_config(p.read_text(), source=str(path), base=p.resolve().parent,
                        overrides=overrides)


def config_for_source(source: str, *, overrides: dict[str, Any] | None = None) -> Built:
    """The config for ``torchslim serve SOURCE``: one model (a file, a MODEL/VERSION
    directory or name@alias) or every model of a repository directory."""
    overrides = overrides or {}
    options = _model_overrides(overrides)
    server = {k: v for k, v in overrides.items() if k in _SERVER_FIELDS}
    found = {} if is_reference(source) else repository_models(Path(source).expanduser())
    try:
        if found:
            template = build_model_config("template", source, options)
            models = tuple(build_model_config(n, str(p), options) for n, p in found.items())
            return ServerConfig(models=models, repository=source, **server), template
        model = build_model_config(model_name_for(source), source, options)
        return ServerConfig(models=(model,), **server), None
    except FieldError as e:
        raise ConfigError(f"--{e.field.replace('_', '-')}: {e.reason}") from None


_SERVER_FIELDS = ("host", "http_port", "grpc_port", "max_body_bytes", "drain_timeout_s",
                  "access_log")


def _model_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in overrides.items()
            if (k in BATCHING_FIELDS or k in MODEL_FIELDS) and v is not None}


def _path(value: str, base: Path) -> str:
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def _guarded(loc: Loc, build: Any, *args: Any, file: str, lines: dict[Loc, int],
             **kwargs: Any) -> Any:
    """``build(*args, **kwargs)``, a FieldError turned into file:line: field: message."""
    try:
        return build(*args, **kwargs)
    except FieldError as e:
        where = (*loc, e.field) if e.field != "name" else loc
        raise ConfigError(f"{file}:{_line(lines, where)}: {_field(where)}: {e.reason}") from None


def _read_yaml(text: str, source: str) -> tuple[dict[str, Any], dict[Loc, int]]:
    try:
        raw = yaml.safe_load(text)
        lines = _line_map(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        line = mark.line + 1 if mark is not None else 1
        problem = " ".join(str(problem).split())
        raise ConfigError(f"{source}:{line}: invalid YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}:1: (top level): a server config is a mapping with "
                          f"'models' and/or 'repository', got {type(raw).__name__}")
    return raw, lines


def _line_map(text: str) -> dict[Loc, int]:
    """Every mapping key / sequence item of the document -> its 1-based line."""
    lines: dict[Loc, int] = {}

    def walk(node: yaml.Node, loc: Loc) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, child in node.value:
                lines[(*loc, key.value)] = key.start_mark.line + 1
                walk(child, (*loc, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, child in enumerate(node.value):
                lines[(*loc, i)] = child.start_mark.line + 1
                walk(child, (*loc, i))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def _line(lines: dict[Loc, int], loc: Loc) -> int:
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return 1


def _field(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"
