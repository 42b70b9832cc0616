"""What every command module shares: the typer app, the error-handling decorator, the
consoles and the common options. Command modules import this, never ``torchslim.cli``
(which imports them), so the CLI has no import cycle."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from torchslim.errors import ConfigError, TorchslimError

__all__ = ["app", "command", "out_console", "err_console", "state", "one_line", "Threads",
           "BatchSizes", "parse_sizes", "setup_logging"]

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make trained PyTorch models smaller and faster, with measured accuracy.")
out_console = Console()
err_console = Console(stderr=True)
state: dict[str, Any] = {"debug": False}

Threads = Annotated[int, typer.Option(help="CPU threads for torch and ONNX Runtime.")]
BatchSizes = Annotated[str, typer.Option(help="Comma-separated batch sizes for latency.")]


def command(name: str | None = None, *, on: typer.Typer | None = None) -> Callable[[F], F]:
    """``app.command`` (or ``on.command`` for a sub-app) that turns a TorchslimError into one
    line on stderr and exit code 2 (the traceback only with --debug)."""

    def decorator(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except TorchslimError as e:
                if state["debug"]:
                    raise
                err_console.print(f"[bold red]error:[/] {one_line(e)}", highlight=False,
                                  soft_wrap=True)
                raise typer.Exit(2) from None
            except KeyboardInterrupt:
                err_console.print("interrupted")
                raise typer.Exit(130) from None

        (on or app).command(name)(wrapper)
        return fn

    return decorator


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--batch-sizes {text!r} must be comma-separated integers, e.g. 1,32") from None
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"--batch-sizes {text!r} needs at least one size >= 1")
    return sizes


def setup_logging(level: int) -> None:
    from rich.logging import RichHandler

    logger = logging.getLogger("torchslim")
    logger.handlers.clear()
    handler: logging.Handler
    if err_console.is_terminal:
        handler = RichHandler(console=err_console, show_path=False, show_time=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:  # logs and CI: one unwrapped line per record
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
