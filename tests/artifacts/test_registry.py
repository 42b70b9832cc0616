"""The registry on tiny ONNX graphs: versions, immutability, aliases, pull, verify, gc."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

import torchslim
from torchslim.artifacts import onnx_meta
from torchslim.artifacts.manifest import read_manifest, write_manifest
from torchslim.artifacts.registry import ModelRegistry, default_root, resolve
from torchslim.errors import (ConfigError, IntegrityError, ManifestError, RegistryError,
                              UnknownVersionError, VersionConflictError)


def test_push_assigns_semver_and_stamps_the_onnx_copy(registry, tiny_onnx) -> None:
    path = tiny_onnx(1.0)
    source = read_manifest(path)
    info = registry.push(path, "tiny", description="first", tags={"team": "vision"})
    assert (info.ref, info.source_digest, info.description, info.tags) == (
        "tiny@1.0.0", source.digest, "first", {"team": "vision"})
    assert info.digest != source.digest and info.manifest.registry.id == "tiny@1.0.0"
    assert onnx_meta.read_props(path) == {}  # the pushed file itself is left alone
    versions = [registry.push(tiny_onnx(k), "tiny", bump=b).version
                for k, b in ((2.0, None), (3.0, "minor"), (4.0, "major"))]
    assert versions == ["1.0.1", "1.1.0", "2.0.0"]
    assert registry.push(tiny_onnx(5.0), "tiny", version="1.5.0-rc.1").version == "1.5.0-rc.1"
    assert [i.version for i in registry.list_versions("tiny")] == [
        "1.0.0", "1.0.1", "1.1.0", "1.5.0-rc.1", "2.0.0"]
    assert registry.get("tiny").version == "2.0.0"  # latest by SemVer precedence


def test_versions_are_immutable_and_the_same_bytes_are_a_no_op(registry, tiny_onnx) -> None:
    path = tiny_onnx(1.0)
    first = registry.push(path, "tiny", version="1.0.0")
    assert registry.push(path, "tiny", version="1.0.0") == first
    assert registry.push(path, "tiny") == first  # a bump with known bytes: no new version
    assert registry.push(path, "tiny", aliases=["prod"]).aliases == ("prod",)  # aliases move
    with pytest.raises(VersionConflictError, match="immutable"):
        registry.push(tiny_onnx(2.0), "tiny", version="1.0.0")
    pulled = registry.pull("tiny@1.0.0", Path(path).parent.parent / "pulled")
    assert registry.push(pulled, "tiny", version="1.0.0").digest == first.digest  # stored bytes
    assert len(registry.list_versions()) == 1


def test_aliases_move(registry, tiny_onnx) -> None:
    registry.push(tiny_onnx(1.0), "tiny", aliases=["champion"])
    registry.push(tiny_onnx(2.0), "tiny")
    assert registry.get("tiny@champion").version == "1.0.0"
    moved = registry.alias("tiny@1.0.1", "champion")
    assert moved.aliases == ("champion",) and registry.get("tiny@1.0.0").aliases == ()
    assert registry.get("tiny@champion").version == "1.0.1"
    registry.alias("tiny@1.0.0", "prod")
    registry.unalias("tiny", "champion")
    with pytest.raises(UnknownVersionError, match="prod"):
        registry.get("tiny@champion")


def test_unknown_references_name_what_exists(registry, tiny_onnx) -> None:
    registry.push(tiny_onnx(1.0), "tiny")
    with pytest.raises(UnknownVersionError, match="it holds: tiny"):
        registry.get("other")
    with pytest.raises(UnknownVersionError, match="it has 1.0.0"):
        registry.get("tiny@9.9.9")
    with pytest.raises(ConfigError, match="SemVer"):
        registry.get("tiny@1.0")
    with pytest.raises(ConfigError, match="or a bump"):
        registry.push(tiny_onnx(2.0), "tiny", version="2.0.0", bump="patch")


def test_pull_verifies_and_the_copy_runs(registry, tiny_onnx, tmp_path: Path) -> None:
    registry.push(tiny_onnx(1.5), "tiny")
    out = registry.pull("tiny", tmp_path / "out")
    assert out == tmp_path / "out" / "m.onnx"
    assert read_manifest(out).registry.id == "tiny@1.0.0"
    assert onnx_meta.read_props(out)[onnx_meta.PROP_REGISTRY_ID] == "tiny@1.0.0"
    session = torchslim.runtime.open(resolve("tiny@1.0.0", root=registry.root), threads=1)
    np.testing.assert_array_equal(session.run(np.zeros((2, 4), np.float32)),
                                  np.full((2, 4), 1.5, np.float32))


def test_verify_reports_a_flipped_byte_and_a_missing_blob(registry, tiny_onnx, flip_byte) -> None:
    info = registry.push(tiny_onnx(1.0), "tiny")
    registry.push(tiny_onnx(2.0), "tiny")
    assert registry.verify().ok and registry.verify().blobs == 2
    blob = registry.store.path(info.manifest.files[0].sha256)
    flip_byte(blob)
    [problem] = registry.verify().problems
    assert "tiny@1.0.0: m.onnx" in problem and "tampered" in problem
    with pytest.raises(IntegrityError, match="tampered"):
        registry.pull("tiny@1.0.0", blob.parent / "out")
    blob.unlink()
    assert "is missing" in registry.verify().problems[0]


def test_rm_keeps_parents_unless_forced_and_gc_frees_blobs(registry, tiny_onnx) -> None:
    a_path = tiny_onnx(1.0, name="a")
    parent = registry.push(a_path, "a")
    child_path = tiny_onnx(2.0, name="b", parent=a_path, relation="finetuned")
    child = registry.push(child_path, "b")
    assert child.parent == "a@1.0.0"
    with pytest.raises(RegistryError, match="parent of b@1.0.0"):
        registry.rm("a@1.0.0")
    with pytest.raises(ConfigError, match="one version"):
        registry.rm("a")
    registry.rm("a@1.0.0", force=True)
    assert registry.get("b").parent is None
    report = registry.gc()
    assert report.blobs_removed == 1 and report.bytes_freed == parent.size
    assert registry.verify().ok and [i.ref for i in registry.list_versions()] == ["b@1.0.0"]


def test_resolve_makes_one_checkout_and_remakes_a_changed_one(registry, tiny_onnx,
                                                             flip_byte) -> None:
    registry.push(tiny_onnx(1.0), "tiny", aliases=["prod"])
    path = registry.resolve("tiny@prod")
    assert path.parent.name == registry.get("tiny").digest.split(":")[1]
    assert registry.resolve("tiny") == path
    flip_byte(path, 20)
    assert read_manifest(registry.resolve("tiny"))  # made again: it verifies
    registry.rm("tiny@1.0.0")
    assert registry.gc().checkouts_removed == 1 and not path.exists()


def test_a_corrupt_index_is_one_clear_error(registry, tiny_onnx) -> None:
    registry.push(tiny_onnx(1.0), "tiny")
    for suffix in ("-wal", "-shm"):
        Path(str(registry.index.path) + suffix).unlink(missing_ok=True)
    registry.index.path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(IntegrityError, match="corrupt"):
        registry.get("tiny")


def test_a_damaged_manifest_row_is_reported(registry, tiny_onnx) -> None:
    registry.push(tiny_onnx(1.0), "tiny")
    with sqlite3.connect(registry.index.path) as db:
        db.execute("UPDATE versions SET manifest = '{\"schema_version\": 1}'")
    with pytest.raises(IntegrityError, match="damaged"):
        registry.get("tiny")
    assert "damaged" in registry.verify().problems[0]


def test_push_refuses_what_is_not_a_matching_artifact(registry, tiny_onnx, onnx_file,
                                                      flip_byte, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not a torchslim artifact"):
        registry.push(onnx_file(tmp_path / "bare" / "m.onnx", 1.0), "tiny")
    path = tiny_onnx(1.0)
    flip_byte(path, -3)
    with pytest.raises(ManifestError, match="does not match its manifest"):
        registry.push(path, "tiny")
    with pytest.raises(ConfigError, match="model name"):
        registry.push(tiny_onnx(2.0), "bad name")
    assert not registry.list_versions()


def test_default_root_follows_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCHSLIM_REGISTRY", str(tmp_path / "here"))
    assert default_root() == tmp_path / "here" and ModelRegistry().root == tmp_path / "here"
    monkeypatch.delenv("TORCHSLIM_REGISTRY")
    assert default_root() == torchslim.config.cache_dir() / "registry"


def test_manifest_written_for_an_ir_pushes_both_files(registry, copy_of) -> None:
    xml = copy_of("openvino-ir")
    write_manifest(xml, relation="exported")
    info = registry.push(xml, "ir")
    assert [f.path for f in info.manifest.files] == ["model-int8.bin", "model-int8.xml"]
    assert info.digest == info.source_digest  # only ONNX files are stamped
    session = torchslim.runtime.open(registry.resolve("ir"), threads=1)
    assert session.runtime == "openvino" and session.inputs[0].shape == (None, 1, 28, 28)


def test_reading_a_registry_that_does_not_exist_creates_nothing(tmp_path: Path) -> None:
    empty = ModelRegistry(tmp_path / "nowhere")
    assert empty.list_versions() == [] and empty.verify().ok
    with pytest.raises(UnknownVersionError, match="nothing yet"):
        empty.get("m")
    assert empty.gc().blobs_removed == 0
    assert not (tmp_path / "nowhere").exists()


def test_gc_refuses_to_run_without_an_index(registry, tiny_onnx) -> None:
    registry.push(tiny_onnx(1.0), "m")
    for suffix in ("", "-wal", "-shm"):
        Path(str(registry.index.path) + suffix).unlink(missing_ok=True)
    with pytest.raises(IntegrityError, match="no index"):
        registry.gc()
    assert len(list(registry.store.digests())) == 1
