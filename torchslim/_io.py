"""Atomic file writes, output directories and the lock that keeps two runs out of one.

A write goes to a temp file in the same directory, is fsynced, renamed over the target,
and the directory is fsynced: an interrupted run leaves either the old file or the new
one, never half of one, and the rename itself survives a power cut. New files get the
mode the umask allows (0644 under the usual 022), like any other program's.

``output_dir(path, command)`` checks an output directory before any work starts and holds
an exclusive lock on it for the run: a second run on the same directory is refused at
once with one line. ``inside(root, relative)`` is how a path that came from a file (a
recipe) is placed under an output directory: it refuses one that would land outside.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from torchslim.errors import ConfigError, OutputLockedError

__all__ = ["atomic_path", "write_bytes", "write_text", "write_json", "write_with",
           "fsync_dir", "current_umask", "output_dir", "lock_dir", "check_output_dir",
           "inside", "LOCK_NAME"]

LOCK_NAME = ".torchslim.lock"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~current_umask())   # mkstemp makes 0600 whatever the umask
        os.replace(tmp_path, target)
        fsync_dir(target.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_with(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
    """Let ``writer`` fill a temp path (e.g. ``torch.onnx.export``), then rename it into place."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename (or a new entry) in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process umask, read without changing it where the kernel says (Linux >= 4.7)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)   # elsewhere: the only portable way, briefly changing it
    os.umask(mask)
    return mask


# ------------------------------------------------------------------ output directories


def check_output_dir(path: str | os.PathLike[str], *, option: str = "--out") -> Path:
    """``path`` as an output directory: an existing directory, or one that can be made. A
    file in its place, or a parent that is a file, is refused before any work starts."""
    p = Path(path)
    for part in (p, *p.parents):
        if part.exists() and not part.is_dir():
            what = "is a file" if part == p else f"is inside {part}, which is a file"
            raise ConfigError(f"{option} {p} {what}; pass a directory (an existing one or a "
                              "new name)")
        if part.exists():
            if not os.access(part, os.W_OK | os.X_OK):
                raise ConfigError(f"{option} {p}: cannot write in {part} (permission denied); "
                                  "pass a directory you can write to")
            break
    return p


_held: dict[Path, int] = {}            # directories this process holds -> depth
_held_guard = threading.Lock()


@contextlib.contextmanager
def lock_dir(path: str | os.PathLike[str], *, command: str = "torchslim") -> Iterator[Path]:
    """Hold an exclusive lock on the directory ``path`` (created if missing) for the block.

    The lock is ``fcntl.flock`` on ``path/.torchslim.lock``: the kernel drops it when the
    process dies, so a killed run never leaves a stale lock. Another process that asks
    for the same directory gets ``OutputLockedError`` at once. Re-entrant within one
    process (a command's lock and its library call's). The lock file is removed on exit;
    so are the directories this call made (the output and missing parents) when the
    block left nothing in them. The processes of one torchrun job are one run: only its
    rank 0 takes the lock.
    """
    root = Path(path)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("RANK", "0") != "0":
        root.mkdir(parents=True, exist_ok=True)
        yield root
        return
    key = Path(os.path.realpath(root))
    with _held_guard:
        if key in _held:
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield root
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    made = [d for d in (root, *root.parents) if not d.exists()]   # deepest first
    root.mkdir(parents=True, exist_ok=True)
    fd = _acquire(root / LOCK_NAME, command)
    with _held_guard:
        _held[key] = 1
    try:
        yield root
    finally:
        with _held_guard:
            del _held[key]
        with contextlib.suppress(OSError):
            os.unlink(root / LOCK_NAME)   # unlinked while held: see _acquire
        os.close(fd)
        for d in made:                    # what this call made, if the run left it empty
            try:
                d.rmdir()
            except OSError:
                break


def _acquire(lock: Path, command: str) -> int:
    """An fd holding ``flock(LOCK_EX)`` on ``lock``. The holder unlinks the file before it
    lets go, so a lock won on an unlinked file is stale and taken again on the new one."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise OutputLockedError(
                f"output {lock.parent} is in use by {holder}; wait for that run to finish "
                "or pass another output directory") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{command} (pid {os.getpid()})".encode(), 0)
            return fd
        os.close(fd)


@contextlib.contextmanager
def output_dir(path: str | os.PathLike[str], *, command: str = "torchslim",
               option: str = "--out") -> Iterator[Path]:
    """``check_output_dir`` then ``lock_dir``: what every command that writes a directory
    does before it starts working."""
    with lock_dir(check_output_dir(path, option=option), command=command) as root:
        yield root


def inside(root: str | os.PathLike[str], *parts: str | os.PathLike[str]) -> Path:
    """``root / parts``, refused unless it stays inside ``root`` once ``..`` and symlinks
    are resolved (an absolute part, ``../x`` or a symlink out of ``root`` all escape)."""
    base = Path(root)
    path = base.joinpath(*parts)
    real_root = base.resolve()
    real = path.resolve()
    if real != real_root and real_root not in real.parents:
        rel = os.path.join(*map(str, parts)) if parts else "."
        links = [p for p in (path, *path.parents) if p.is_symlink() and base in (p, *p.parents)]
        fix = (f"through the symlink {links[-1]}; remove it or pass another output"
               if links else "use a plain relative name")
        raise ConfigError(f"{rel!r} would be written outside the output directory {base} "
                          f"(it resolves to {real}); {fix}")
    return path
