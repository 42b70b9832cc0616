"""A command's CLI options, generated from its option table (``torchslim.pipeline.options``).

``@with_options(TABLE)`` adds one typer option per table row, where the command's own
``options`` parameter stands, and calls the command with ``options={name: value}``: the
values the user gave or the CLI defaults, ready for ``TABLE.plan(surface="cli", **options)``.
The flag, its type, default and help all come from the row and the config field it sets.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Optional, TypeVar

import typer

from torchslim.pipeline.options import Option, OptionTable

__all__ = ["with_options"]

F = TypeVar("F", bound=Callable[..., Any])


def with_options(table: OptionTable, *, only: Iterable[str] | None = None) -> Callable[[F], F]:
    """Give the decorated command ``table``'s CLI options (or those named in ``only``)."""
    chosen = [o for o in table.options if o.flag is not None
              and (only is None or o.name in set(only))]

    def decorator(fn: F) -> F:
        own = inspect.signature(fn, eval_str=True)
        before, after, seen = [], [], False
        for param in own.parameters.values():
            if param.name == "options":
                seen = True
            else:
                (after if seen else before).append(param)
        added = [_parameter(o) for o in chosen]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            options = {o.name: _value(o, kwargs.pop(o.name)) for o in chosen}
            return fn(*args, options=options, **kwargs)

        params = [*before, *added, *after]
        wrapper.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper  # type: ignore[return-value]

    return decorator


def _parameter(o: Option) -> inspect.Parameter:
    decls = [o.flag] if o.flag else []
    typ = _cli_type(o)
    return inspect.Parameter(o.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                             default=None if _is_list(typ) else o.default_for("cli"),
                             annotation=Annotated[typ, typer.Option(*decls, help=o.help)])


def _cli_type(o: Option) -> Any:
    """What typer parses: the row's ``cli_type``, else the field's type; a variable-length
    tuple becomes a repeatable option (a list), ``X | None`` an ``Optional[X]``."""
    typ = o.cli_type if o.cli_type is not None else o.annotation
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    if typing.get_origin(typ) is tuple or (args and typing.get_origin(args[0]) is tuple):
        return Optional[list[str]]
    if typing.get_origin(typ) in (types.UnionType, typing.Union) and len(args) == 1:
        return Optional[args[0]]
    return typ


def _is_list(typ: Any) -> bool:
    return any(typing.get_origin(a) is list for a in (typ, *typing.get_args(typ)))


def _value(o: Option, value: Any) -> Any:
    """A repeatable option's list as a tuple (``None``: not given, so the default)."""
    if _is_list(_cli_type(o)):
        return o.default_for("cli") if value is None else tuple(value)
    return value
