"""`torchslim registry ...` through typer's runner: the flow, then one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from torchslim.artifacts.registry import ModelRegistry
from torchslim.cli import app

runner = CliRunner()


def _cli(root: Path, *args: str):
    return runner.invoke(app, ["registry", *args, "--registry", str(root)])


@pytest.fixture
def pushed(tmp_path: Path, tiny_onnx) -> Path:
    """teacher@1.0.0 and its finetuned child student@1.0.0 (alias prod) in a registry."""
    root = tmp_path / "reg"
    teacher = tiny_onnx(1.0, name="teacher", relation="trained")
    student = tiny_onnx(2.0, name="student", parent=teacher, relation="finetuned")
    assert _cli(root, "push", str(teacher), "teacher").exit_code == 0
    result = _cli(root, "push", str(student), "student", "--alias", "prod", "--tag", "a=b")
    assert result.exit_code == 0 and "student@1.0.0" in result.stdout
    assert "(parent teacher@1.0.0)" in result.stdout
    return root


def test_list_show_lineage_alias(pushed: Path, tiny_onnx) -> None:
    listed = _cli(pushed, "list", "--json")
    assert [v["ref"] for v in json.loads(listed.stdout)] == ["student@1.0.0", "teacher@1.0.0"]
    assert "student@1.0.0" in _cli(pushed, "list").stdout
    shown = json.loads(_cli(pushed, "show", "student@prod", "--json").stdout)
    assert shown["tags"] == {"a": "b"} and shown["manifest"]["format"] == "onnx-fp32"
    assert "input    x float32 ['batch', 4]" in _cli(pushed, "show", "student").stdout
    lineage = _cli(pushed, "lineage", "student@1.0.0").stdout
    assert "<- finetuned from teacher@1.0.0" in lineage and "teacher@1.0.0  onnx-fp32" in lineage
    assert json.loads(_cli(pushed, "lineage", "student", "--json").stdout)["chain"] == [
        "student@1.0.0", "teacher@1.0.0"]
    assert _cli(pushed, "push", str(tiny_onnx(3.0, name="student")), "student",
                "--bump", "minor").exit_code == 0
    assert "student@champion -> 1.1.0" in _cli(pushed, "alias", "student@1.1.0",
                                                "champion").stdout
    assert _cli(pushed, "alias", "student", "champion", "--delete").exit_code == 0


def test_pull_verify_export_import_rm_gc(pushed: Path, tmp_path: Path) -> None:
    pulled = _cli(pushed, "pull", "student", str(tmp_path / "out"))
    assert pulled.exit_code == 0 and (tmp_path / "out" / "student.onnx").is_file()
    assert "ok: 2 versions, 2 blobs verified" in _cli(pushed, "verify").stdout
    assert _cli(pushed, "export", "student", str(tmp_path / "s.tar")).exit_code == 0
    fresh = tmp_path / "fresh"
    imported = _cli(fresh, "import", str(tmp_path / "s.tar"))
    assert imported.exit_code == 0 and imported.stdout.count("@1.0.0") == 2
    assert "<- finetuned from teacher@1.0.0" in _cli(fresh, "lineage", "student").stdout
    assert _cli(pushed, "rm", "student@1.0.0").exit_code == 0
    assert "removed 1 blobs" in _cli(pushed, "gc").stdout


def _flip_blob(root: Path) -> None:
    info = ModelRegistry(root).get("student")
    blob = ModelRegistry(root).store.path(info.manifest.files[0].sha256)
    blob.chmod(0o644)
    blob.write_bytes(b"x" + blob.read_bytes()[1:])


@pytest.mark.parametrize("args,needles", [
    (["show", "student@9.9.9"], ["student has no version 9.9.9", "it has 1.0.0"]),
    (["show", "nobody"], ["no model 'nobody'", "student"]),
    (["show", "student@champion"], ["no alias 'champion'", "prod"]),
    (["push", "{bare}", "x", "--version", "1.0"], ["not a SemVer version"]),
    (["push", "{bare}", "x"], ["not a torchslim artifact", "write_manifest"]),
    (["push", "{bare}", "x", "--bump", "huge"], ["bump 'huge'"]),
    (["push", "{bare}", "x", "--tag", "novalue"], ["KEY=VALUE"]),
    (["rm", "teacher@1.0.0"], ["parent of student@1.0.0"]),
    (["import", "{bare}"], ["not a tar archive"]),
])
def test_bad_input_is_one_line_and_exit_2(pushed: Path, tmp_path: Path, onnx_file,
                                          one_line_error, args: list[str],
                                          needles: list[str]) -> None:
    bare = onnx_file(tmp_path / "bare" / "m.onnx", 5.0)
    result = _cli(pushed, *[a.replace("{bare}", str(bare)) for a in args])
    one_line_error(result, *needles)


def test_tampering_and_damage_are_one_line_and_exit_2(pushed: Path, tmp_path: Path,
                                                      tiny_onnx, one_line_error) -> None:
    changed = tiny_onnx(7.0, name="changed")
    changed.write_bytes(changed.read_bytes()[:-1] + b"\x00")
    one_line_error(_cli(pushed, "push", str(changed), "changed"), "does not match its manifest")
    _flip_blob(pushed)
    verify = _cli(pushed, "verify")
    one_line_error(verify, "1 problem(s)", "student@1.0.0: student.onnx")
    assert "tampered" in verify.stdout
    one_line_error(_cli(pushed, "pull", "student", str(tmp_path / "o")), "tampered")
    blob = next(p for p in (pushed / "blobs").rglob("*") if p.is_file())
    blob.unlink()
    one_line_error(_cli(pushed, "verify"), "is missing")
    for suffix in ("-wal", "-shm"):
        (pushed / f"index.sqlite{suffix}").unlink(missing_ok=True)
    (pushed / "index.sqlite").write_bytes(b"garbage" * 1000)
    one_line_error(_cli(pushed, "list"), "is corrupt")
