"""Atomic writes (modes, durable renames), output checks, the output lock, path confinement."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from torchslim import _io
from torchslim.errors import ConfigError, OutputLockedError


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_get_the_mode_the_umask_allows(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        assert _io.current_umask() == umask
        paths = [_io.write_bytes(tmp_path / "a.bin", b"x"),
                 _io.write_json(tmp_path / "b.json", {"a": 1}),
                 _io.write_with(tmp_path / "c.onnx", lambda p: p.write_bytes(b"onnx"))]
    finally:
        os.umask(old)
    assert [p.stat().st_mode & 0o777 for p in paths] == [mode] * 3


def test_the_directory_is_fsynced_after_the_rename(tmp_path: Path, monkeypatch) -> None:
    seen: list[tuple[str, bool]] = []
    target = tmp_path / "sub" / "r.json"
    monkeypatch.setattr(_io, "fsync_dir", lambda p: seen.append((str(p), target.exists())))
    _io.write_json(target, {"x": 1})
    assert seen == [(str(target.parent), True)]   # after the rename, on its directory
    assert sorted(p.name for p in target.parent.iterdir()) == ["r.json"]   # no temp left


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = _io.write_text(tmp_path / "r.txt", "old")

    def fail(p: Path) -> None:
        p.write_text("half")
        raise RuntimeError("killed")
    with pytest.raises(RuntimeError):
        _io.write_with(target, fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.txt"]


def test_an_output_that_is_a_file_is_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match=r"--out .*f is a file; pass a directory"):
        _io.check_output_dir(tmp_path / "f")
    with pytest.raises(ConfigError, match=r"is inside .*f, which is a file"):
        _io.check_output_dir(tmp_path / "f" / "sub")
    assert _io.check_output_dir(tmp_path / "new" / "dir") == tmp_path / "new" / "dir"
    assert not (tmp_path / "new").exists()   # a check creates nothing


_HOLDER = textwrap.dedent("""
    import sys, time
    from torchslim import _io
    with _io.lock_dir(sys.argv[1], command="torchslim quantize"):
        print("held", flush=True)
        time.sleep(60)
""")


def test_a_second_run_on_a_locked_output_is_refused_and_a_killed_holder_frees_it(
        tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError, match=rf"output {out} is in use by torchslim "
                                                    rf"quantize \(pid {holder.pid}\); wait"):
            with _io.lock_dir(out):
                pass
        assert out.is_dir() and (out / _io.LOCK_NAME).exists()
    finally:
        holder.send_signal(signal.SIGKILL)   # the kernel drops a dead process's flock
        holder.wait()
    with _io.lock_dir(out, command="me"):
        assert (out / _io.LOCK_NAME).read_text() == f"me (pid {os.getpid()})"
    assert not (out / _io.LOCK_NAME).exists()


def test_the_lock_is_reentrant_and_cleans_up_after_itself(tmp_path: Path) -> None:
    out = tmp_path / "o"
    with _io.lock_dir(out):
        with _io.lock_dir(out):        # the command's lock, then its library call's
            pass
        assert (out / _io.LOCK_NAME).exists()
    assert not out.exists()            # it made the directory and nothing was written
    with _io.lock_dir(out):
        (out / "report.json").write_text("{}")
    assert [p.name for p in out.iterdir()] == ["report.json"]


def test_a_lock_that_made_parents_removes_them_when_nothing_was_written(tmp_path: Path) -> None:
    with _io.lock_dir(tmp_path / "a" / "b" / "c"):
        pass
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "a").mkdir()
    with _io.lock_dir(tmp_path / "a" / "b"):
        (tmp_path / "a" / "keep").write_text("x")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["keep"]


def test_two_threads_racing_for_a_new_lock_never_both_hold_it(tmp_path: Path) -> None:
    """The holder unlinks the lock file before it lets go; a lock won on the unlinked file
    must not count. Many short-lived processes on one directory: never two inside."""
    script = textwrap.dedent("""
        import os, sys, time
        from torchslim import _io
        from torchslim.errors import OutputLockedError
        inside = os.path.join(sys.argv[1], "inside")
        ok = 0
        for _ in range(40):
            try:
                with _io.lock_dir(sys.argv[1]):
                    fd = os.open(inside, os.O_CREAT | os.O_EXCL)   # fails if another is in
                    os.close(fd)
                    time.sleep(0.002)
                    os.unlink(inside)
                    ok += 1
            except OutputLockedError:
                time.sleep(0.001)
        print(ok)
    """)
    (tmp_path / "o").mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "o")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    assert sum(int(o[0]) for o in outs) > 0


def test_ranks_of_one_torchrun_job_share_its_output(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "o"
    with _io.lock_dir(out):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "1")
        with _io.lock_dir(out):   # rank 1: rank 0 (this test) holds the job's lock
            pass


@pytest.mark.parametrize("parts", [("/etc/passwd",), ("..", "x"), ("a/../../x",),
                                   ("stages", "/tmp/evil")])
def test_paths_that_escape_the_output_are_refused(tmp_path: Path, parts: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError, match="outside the output directory"):
        _io.inside(tmp_path / "out", *parts)


def test_a_symlink_out_of_the_output_is_refused(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "stages").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match=rf"resolves to {elsewhere}"):
        _io.inside(out, "stages", "01-prune")
    (out / "inner").mkdir()
    (out / "link").symlink_to(out / "inner")   # a symlink that stays inside is fine
    assert _io.inside(out, "link", "x.onnx") == out / "link" / "x.onnx"
    assert _io.inside(out, "a", "b.json") == out / "a" / "b.json"


def test_lock_file_of_a_dead_process_does_not_block(tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / _io.LOCK_NAME).write_text("torchslim train (pid 1)")   # left by a crash: no flock
    t0 = time.monotonic()
    with _io.lock_dir(out):
        pass
    assert time.monotonic() - t0 < 5
