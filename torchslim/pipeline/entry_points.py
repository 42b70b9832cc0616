"""What a recipe may name: plain names for what it writes, ``package.module:function``
entry points for the code it runs.

Checking a recipe never imports anything: ``entry_point_syntax`` only reads the
spelling. ``resolve_entry_point`` imports the module (which runs it) and ``call`` calls
the function; both happen when the run starts, and both turn whatever the user's code
raises into one ``EntryPointError`` line that names the recipe's file, line and field.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from torchslim.errors import EntryPointError, TorchslimError

__all__ = ["plain_name", "entry_point_syntax", "resolve_entry_point", "call"]

_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_ENTRY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*", re.ASCII)


def plain_name(value: str, what: str = "name") -> str:
    """``value`` if it is a plain name (letters, digits, ``_``, ``-``, ``.``; no path)."""
    if not _PLAIN.fullmatch(value) or ".." in value:
        raise ValueError(f"{what} {value!r} must be a plain name (letters, digits, _ - .; "
                         "at most 64, no path separators or '..')")
    return value


def entry_point_syntax(text: str) -> str:
    """``text`` if it is spelled ``package.module:function``; nothing is imported."""
    if not _ENTRY.fullmatch(text):
        raise ValueError(f"entry point {text!r} must look like package.module:function")
    return text


def resolve_entry_point(text: str, *, where: str = "") -> Callable[..., Any]:
    """``package.module:function`` -> the function: this imports (runs) the module. An
    error (the module missing, or raising or failing to compile on import) is one
    EntryPointError line that starts with ``where`` (the recipe's file:line: field)."""
    prefix = f"{where}: " if where else ""
    try:
        entry_point_syntax(text)
    except ValueError as e:
        raise EntryPointError(f"{prefix}{e}") from None
    module_name, _, attr = text.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise EntryPointError(f"{prefix}entry point {text!r}: cannot import {module_name!r} "
                              f"({e}); install the package or fix the name") from None
    except Exception as e:  # the user's module itself failed: a syntax error, a raise
        raise EntryPointError(f"{prefix}entry point {text!r}: importing {module_name!r} "
                              f"raised {type(e).__name__}: {e}; fix the module (--debug "
                              "shows its traceback)") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise EntryPointError(f"{prefix}entry point {text!r}: module {module_name!r} has no "
                              f"function {attr!r}")
    return fn


def call(fn: Callable[..., Any], text: str, *, where: str = "", **kwargs: Any) -> Any:
    """``fn(**kwargs)``, the user's function named ``text``; what it raises becomes one
    EntryPointError line (the original is its cause: ``--debug`` shows the traceback)."""
    try:
        return fn(**kwargs)
    except Exception as e:
        prefix = f"{where}: " if where else ""
        what = str(e) if isinstance(e, TorchslimError) else f"{type(e).__name__}: {e}"
        raise EntryPointError(f"{prefix}entry point {text!r} raised {what}; fix the function "
                              "or its arguments (--debug shows the traceback)") from e
