"""Content-addressed blobs on disk, and the lock that keeps ``gc`` off a running push.

Layout under the registry root::

    blobs/sha256/ab/cdef...     one read-only file per distinct content (its sha256)
    tmp/                        blobs being written; whatever is here when gc runs is
                                left over from a killed process
    lock                        flock: pushes, pulls and verify hold it shared, gc exclusive

A blob is streamed into ``tmp/``, hashed on the way, fsynced, renamed into place and its
directory fsynced, so a blob path exists only once its bytes are complete and durable.
The index names a blob only after that (see ``registry.push``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from torchslim.artifacts.digest import CHUNK, is_hex_digest, sha256_file
from torchslim.errors import IntegrityError, VersionConflictError

__all__ = ["BlobStore", "crash_point", "CRASH_ENV"]

# Tests set this to a point name (see crash_point calls) to SIGKILL the process there.
CRASH_ENV = "TORCHSLIM_REGISTRY_CRASH"
LOCK_TIMEOUT_S = 120.0


def crash_point(name: str) -> None:
    """Die with SIGKILL here when ``$TORCHSLIM_REGISTRY_CRASH`` names this point, so
    tests can prove that a push killed at any point leaves the registry consistent."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.tmp = root / "tmp"

    def path(self, sha256: str) -> Path:
        return self.blobs / sha256[:2] / sha256[2:]

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put_file(self, src: Path, sha256: str) -> None:
        """Store the file ``src`` whose content must hash to ``sha256``."""
        if not self.has(sha256):
            with open(src, "rb") as f:
                self.put_stream(f, sha256, source=str(src))

    def put_bytes(self, data: bytes, sha256: str) -> None:
        if not self.has(sha256):
            import io

            self.put_stream(io.BytesIO(data), sha256, source="stamped bytes")

    def put_stream(self, f: BinaryIO, sha256: str, *, source: str) -> None:
        """Copy ``f`` into a blob, checking on the way that it hashes to ``sha256``."""
        import hashlib

        self.tmp.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="blob-", suffix=".tmp", dir=self.tmp)
        try:
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    out.flush()
                    crash_point("blob-partial")
                out.flush()
                os.fsync(out.fileno())
            if h.hexdigest() != sha256:
                raise IntegrityError(f"{source} hashes to {h.hexdigest()[:12]}…, expected "
                                     f"{sha256[:12]}…; it changed while being stored: retry")
            os.chmod(tmp, 0o444)  # blobs are immutable; a stray write fails loudly
            final = self.path(sha256)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def check(self, sha256: str, size: int) -> str | None:
        """None when the blob is present and intact, else what is wrong with it."""
        p = self.path(sha256)
        if not p.is_file():
            return f"blob {sha256[:12]}… is missing"
        actual, actual_size = sha256_file(p)
        if actual != sha256 or actual_size != size:
            return (f"blob {sha256[:12]}… holds {actual_size} bytes hashing to "
                    f"{actual[:12]}… (tampered or damaged; expected {size} bytes)")
        return None

    def copy_out(self, sha256: str, size: int, dest: Path) -> None:
        """Write the blob to ``dest`` (atomically), verifying its digest on the way."""
        from torchslim import _io

        problem = self.check(sha256, size)
        if problem:
            raise IntegrityError(f"cannot pull {dest.name}: {problem}; run `torchslim "
                                 "registry verify` and restore the version (import it again)")
        with _io.atomic_path(dest) as tmp, open(self.path(sha256), "rb") as src, \
                open(tmp, "wb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)

    def digests(self) -> Iterator[str]:
        """Every blob's sha256 (names that are not a digest are skipped)."""
        if not self.blobs.is_dir():
            return
        for sub in self.blobs.iterdir():
            for p in sub.iterdir() if sub.is_dir() else ():
                if is_hex_digest(sub.name + p.name):
                    yield sub.name + p.name

    def remove(self, sha256: str) -> int:
        p = self.path(sha256)
        size = p.stat().st_size
        p.unlink()
        return size

    @contextlib.contextmanager
    def lock(self, *, shared: bool) -> Iterator[None]:
        """Hold the registry lock; the kernel drops it when the process dies. A reader of a
        registry that does not exist yet creates nothing."""
        if shared and not self.root.is_dir():
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise VersionConflictError(
                            f"registry {self.root} stayed locked for {LOCK_TIMEOUT_S:.0f} s "
                            "(a gc or push in another process); retry when it is done") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # releases the flock


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
