"""What every command module shares: the typer app, the error-handling decorator, the
consoles and the common options. Command modules import this, never ``torchslim.cli``
(which imports them), so the CLI has no import cycle."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from torchslim import _io
from torchslim.errors import ConfigError, TorchslimError

__all__ = ["app", "command", "out_console", "err_console", "state", "one_line", "print_error",
           "Threads", "Nproc", "MaxRestarts",
           "BatchSizes", "parse_sizes", "setup_logging"]

F = TypeVar("F", bound=Callable[..., Any])


class _OneLineUsageErrors(TyperGroup):
    """The root command: a usage error (an unknown option, ``--threads abc``) is one line on
    stderr and exit code 2, like every other bad input, instead of click's framed box."""

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        prog_name = prog_name or "torchslim"
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as e:   # click's UsageError, BadParameter, ...
            print_error(usage_line(e) if hasattr(e, "ctx") else e.format_message())
            sys.exit(2 if hasattr(e, "ctx") else e.exit_code)
        except typer.Abort:
            err_console.print("interrupted")
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


def usage_line(e: typer.TyperException) -> str:
    """``Invalid value for '--threads': ...; see `torchslim train --help```."""
    ctx = getattr(e, "ctx", None)
    where = ctx.command_path if ctx is not None else "torchslim"
    return f"{one_line(e.format_message()).rstrip('.')}; see `{where} --help`"


app = typer.Typer(cls=_OneLineUsageErrors, add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False,
                  help="Make trained PyTorch models smaller and faster, with measured accuracy.")
# soft_wrap: a printed path stays on one line at any terminal width (tables still fit it)
out_console = Console(soft_wrap=True)
err_console = Console(stderr=True)
state: dict[str, Any] = {"debug": False}

Threads = Annotated[int, typer.Option(min=1, help="CPU threads for torch and ONNX Runtime.")]
BatchSizes = Annotated[str, typer.Option(help="Comma-separated batch sizes for latency.")]
# read by ``command``'s wrapper, before the output is locked; the commands only declare them
Nproc = Annotated[int, typer.Option(min=1, help="Data-parallel processes on this machine: starts `torchrun --standalone` with N workers running this same command (1: this process only).")]
MaxRestarts = Annotated[int, typer.Option(min=0, help="With --nproc: times torchrun restarts the workers after one fails (they resume from the last checkpoint).")]


def command(name: str | None = None, *, on: typer.Typer | None = None, group: str = "",
            writes: str | None = None) -> Callable[[F], F]:
    """``app.command`` (or ``on.command`` for a sub-app) that turns a TorchslimError into one
    line on stderr and exit code 2 (the traceback only with --debug).

    ``writes`` names the parameter that holds the command's output directory: it is
    checked before any work starts (a file in its place is refused) and locked for the
    whole command, so a second run on the same directory is refused at once. ``group`` is
    the sub-app's name (``llm``), for the lock's label."""

    def decorator(fn: F) -> F:
        label = " ".join(w for w in ("torchslim", group, name or fn.__name__) if w)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _relaunch_under_torchrun(kwargs)
            try:
                if writes is None:
                    return fn(*args, **kwargs)
                option = "--out" if writes == "out" else writes.upper()   # or an argument
                with _io.output_dir(kwargs[writes], command=label, option=option):
                    return fn(*args, **kwargs)
            except TorchslimError as e:
                _fail(e)
            except OSError as e:   # the disk, not the program: full, read-only, permissions
                if e.filename is None:
                    raise
                _fail(e, f"{e.strerror or e}: {e.filename}; check the path, its permissions "
                         "and the free space")
            except KeyboardInterrupt:
                err_console.print("interrupted")
                raise typer.Exit(130) from None

        (on or app).command(name)(wrapper)
        return fn

    return decorator


def _relaunch_under_torchrun(kwargs: dict[str, Any]) -> None:
    """``--nproc N`` (N > 1) outside torchrun: run this command line again in N workers under
    ``torchrun --standalone`` and exit with its code. Inside torchrun the option is moot:
    the job's own ``--nproc-per-node`` decides, and a different N is said."""
    nproc = kwargs.get("nproc", 1)
    if nproc == 1:
        return
    from torchslim.train.distributed import relaunch
    from torchslim.train.world import under_torchrun

    if not under_torchrun():
        raise typer.Exit(relaunch(nproc, max_restarts=kwargs.get("max_restarts", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != nproc:
        logging.getLogger("torchslim").warning(
            "--nproc %d ignored: already running under torchrun with %d processes", nproc, world)


def _fail(e: BaseException, message: str | None = None) -> None:
    if state["debug"]:
        raise e
    print_error(message or e)
    raise typer.Exit(2) from None


def print_error(message: BaseException | str) -> None:
    """``error: <message>`` as one unwrapped line on stderr (the message is not markup)."""
    err_console.print(f"[bold red]error:[/] {escape(one_line(message))}", highlight=False,
                      soft_wrap=True)


def one_line(e: BaseException | str) -> str:
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
