"""Pushes killed with SIGKILL at every stage, and two processes pushing at once.

The pushing processes are forked children (the parent has imported everything already,
so each starts in milliseconds); they die by a real SIGKILL, from the crash hook
(``$TORCHSLIM_REGISTRY_CRASH``) or from the parent after a delay.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from torchslim.artifacts.registry import ModelRegistry
from torchslim.artifacts.store import CRASH_ENV
from torchslim.errors import VersionConflictError

_fork = multiprocessing.get_context("fork")
KILLED = -signal.SIGKILL
WIDE = 600_000  # 2.4 MB of weights: a blob of three 1 MiB chunks


def _push(root: Path, paths: list[Path], crash: str, start, version: str | None) -> None:
    os.environ[CRASH_ENV] = crash
    if start is not None:
        start.wait(10)
    try:
        for path in paths:
            ModelRegistry(root).push(path, "m", version=version)
    except VersionConflictError:
        os._exit(3)


def _child(root: Path, paths: list[Path], *, crash: str = "", start=None,
           version: str | None = None):
    p = _fork.Process(target=_push, args=(root, paths, crash, start, version))
    p.start()
    return p


@pytest.mark.parametrize("point,versions,blobs,temps", [
    ("blob-partial", 1, 0, 1),    # killed inside a blob's first chunk
    ("blobs-stored", 1, 1, 0),    # every blob written, nothing in the index yet
    ("index-written", 1, 1, 0),   # rows inserted, transaction not committed
    ("committed", 2, 0, 0),       # committed, killed before returning
])
def test_sigkill_during_push_leaves_a_consistent_registry(
        registry, tiny_onnx, point: str, versions: int, blobs: int, temps: int) -> None:
    registry.push(tiny_onnx(1.0, width=WIDE), "m")
    path = tiny_onnx(2.0, width=WIDE)
    child = _child(registry.root, [path], crash=point)
    child.join(60)
    assert child.exitcode == KILLED
    report = registry.verify()
    assert report.ok, report.problems
    assert len(registry.list_versions("m")) == versions
    gc = registry.gc()
    assert (gc.blobs_removed, gc.temp_removed) == (blobs, temps)
    assert not any(registry.store.tmp.iterdir())
    assert registry.push(path, "m").version == "1.0.1"  # the retry lands where it should
    assert registry.verify().ok and registry.gc().blobs_removed == 0


def test_sigkill_at_random_moments_never_breaks_the_index(registry, tiny_onnx) -> None:
    paths = [tiny_onnx(float(k)) for k in range(40)]
    registry.push(paths[0], "m")
    killed = 0
    for delay in (0.0, 0.01, 0.03, 0.06, 0.1, 0.2):
        child = _child(registry.root, paths[1:])
        time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
        child.join(60)
        killed += child.exitcode == KILLED  # not a child that had already finished
        assert registry.verify().ok
    assert killed >= 3
    registry.gc()
    for path in paths:  # each push either landed once or lands now
        registry.push(path, "m")
    infos = registry.list_versions("m")
    assert len(infos) == 40 and len({i.source_digest for i in infos}) == 40
    assert registry.verify().ok and registry.gc().blobs_removed == 0


def test_two_processes_pushing_fifty_each_all_land(registry, tiny_onnx) -> None:
    paths = [tiny_onnx(float(k)) for k in range(100)]
    start = _fork.Event()
    children = [_child(registry.root, paths[i::2], start=start) for i in range(2)]
    start.set()
    for child in children:
        child.join(300)
    assert [c.exitcode for c in children] == [0, 0]
    report = registry.verify()
    assert report.ok and report.versions == 100
    infos = registry.list_versions("m")
    assert {i.version for i in infos} == {f"1.0.{n}" for n in range(100)}
    assert {i.source_digest for i in infos} == {registry.get(i.ref).source_digest for i in infos}
    assert len({i.source_digest for i in infos}) == 100


def test_two_processes_racing_for_one_version_one_gets_a_conflict(registry, tiny_onnx) -> None:
    start = _fork.Event()
    children = [_child(registry.root, [tiny_onnx(float(k))], start=start, version="2.0.0")
                for k in range(2)]
    start.set()
    for child in children:
        child.join(60)
    assert sorted(c.exitcode for c in children) == [0, 3]
    [info] = registry.list_versions("m")
    assert info.version == "2.0.0" and registry.verify().ok
