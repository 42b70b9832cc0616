"""A recipe's validation error as one line: ``file:line: field: message``.

pydantic reports where in the data an error is (``stages[1].target_macs``); the YAML node
tree says on which line that key stands. A config's own refusal (``OptionError``) names
the option at fault, which becomes the last part of the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from torchslim.errors import ConfigError
from torchslim.pipeline.options import OptionError

__all__ = ["Loc", "line_map", "field_name", "line_of", "first_error", "StageKindError"]

Loc = tuple[str | int, ...]


class StageKindError(ValueError):
    """A stage whose ``kind`` no schema has (``allowed`` lists the kinds)."""

    def __init__(self, index: int, message: str) -> None:
        self.index = index
        super().__init__(message)


def line_map(text: str, source: str = "<recipe>") -> dict[Loc, int]:
    """Every mapping key / sequence item of the YAML document -> its 1-based line. A key
    that a mapping repeats (YAML loaders keep the last one silently) is a ConfigError."""
    lines: dict[Loc, int] = {}

    def walk(node: yaml.Node, loc: Loc) -> None:
        lines[loc] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, child in node.value:
                if (*loc, key.value) in lines and key.tag != "tag:yaml.org,2002:merge":
                    raise ConfigError(
                        f"{source}:{key.start_mark.line + 1}: {field_name((*loc, key.value))}: "
                        f"duplicate key (first at line {lines[(*loc, key.value)]}); keep one "
                        "of them")
                lines[(*loc, key.value)] = key.start_mark.line + 1
                walk_child(child, (*loc, key.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, child in enumerate(node.value):
                walk(child, (*loc, i))

    def walk_child(child: yaml.Node, loc: Loc) -> None:
        line = lines[loc]
        walk(child, loc)
        lines[loc] = line  # the key's line, not the value's

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def field_name(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def line_of(lines: dict[Loc, int], loc: Loc) -> int:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return 1


def _clean(loc: Loc, kinds: set[str]) -> Loc:
    """Drop the union tag pydantic puts after ``stages[i]`` (the stage kind)."""
    return tuple(p for i, p in enumerate(loc)
                 if not (i >= 2 and loc[i - 2] == "stages" and isinstance(loc[i - 1], int)
                         and p in kinds))


def _message(err: dict[str, Any]) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        return "unknown option"
    if isinstance(value, (str, int, float, bool)) and repr(value) not in msg:
        msg += f" (got {value!r})"
    return msg


def first_error(e: ValidationError, source: str, lines: dict[Loc, int], *, kinds: set[str],
                allowed_keys: Callable[[Loc], list[str]], prefix: Loc = ()) -> ConfigError:
    """The first of pydantic's errors as one ConfigError line; ``allowed_keys(loc)`` lists
    the options the schema at ``loc`` accepts (for "unknown option")."""
    errors = e.errors()
    err = errors[0]
    loc = (*prefix, *_clean(tuple(err["loc"]), kinds))
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, StageKindError):
        loc = ("stages", cause.index, "kind")
    elif isinstance(cause, OptionError) and cause.key is not None:
        loc = (*loc, cause.key)
    msg = _message(err)
    if err["type"] == "extra_forbidden":
        allowed = allowed_keys(loc)
        msg += f"; allowed: {', '.join(allowed)}" if allowed else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ConfigError(f"{source}:{line_of(lines, loc)}: {field_name(loc)}: {msg}{more}")


def model_keys(root: type[BaseModel], loc: Loc) -> list[str]:
    """The fields of the nested pydantic model that holds ``loc[-1]`` (``[]`` if none)."""
    model: Any = root
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        model = getattr(field, "annotation", None)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return sorted(model.model_fields)
