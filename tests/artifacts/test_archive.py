"""Export a version with its lineage, import it into an empty registry."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from torchslim.artifacts.registry import ModelRegistry
from torchslim.errors import IntegrityError, RegistryError, VersionConflictError


@pytest.fixture
def three(registry, tiny_onnx) -> ModelRegistry:
    a = tiny_onnx(1.0, name="a", relation="trained")
    b = tiny_onnx(2.0, name="b", parent=a, relation="pruned")
    c = tiny_onnx(3.0, name="c", parent=b, relation="quantized")
    for path, name in ((a, "a"), (b, "b"), (c, "c")):
        registry.push(path, name, tags={"from": name}, aliases=["prod"])
    registry.push(tiny_onnx(9.0, name="unrelated"), "unrelated")
    return registry


def test_import_into_an_empty_registry_keeps_the_lineage(three, tmp_path: Path) -> None:
    archive = three.export("c@1.0.0", tmp_path / "c.tar")
    fresh = ModelRegistry(tmp_path / "fresh")
    imported = fresh.import_archive(archive)
    assert [i.ref for i in imported] == ["a@1.0.0", "b@1.0.0", "c@1.0.0"]
    found = fresh.lineage("c")
    assert [i.ref for i in found.chain] == ["c@1.0.0", "b@1.0.0", "a@1.0.0"]
    assert [e.relation for e in found.edges] == ["quantized", "pruned"]
    for info in found.chain:
        original = three.get(info.ref)
        assert (info.digest, info.source_digest, info.tags) == (
            original.digest, original.source_digest, original.tags)
        assert info.aliases == ()  # aliases are the source registry's, not carried
    assert fresh.verify().ok and fresh.verify().versions == 3
    assert fresh.import_archive(archive) == imported  # importing again changes nothing


def test_export_is_reproducible_and_gzip_works(three, tmp_path: Path) -> None:
    one = three.export("c", tmp_path / "1.tar").read_bytes()
    assert three.export("c", tmp_path / "2.tar").read_bytes() == one
    gz = three.export("b", tmp_path / "b.tar.gz")
    assert [i.ref for i in ModelRegistry(tmp_path / "gz").import_archive(gz)] == [
        "a@1.0.0", "b@1.0.0"]


def test_a_tampered_archive_is_refused(three, tmp_path: Path) -> None:
    archive = three.export("b", tmp_path / "b.tar")
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        for m, data in members:
            if m.name.startswith("blobs/"):
                data = data[:-1] + bytes([data[-1] ^ 1])
            tar.addfile(m, io.BytesIO(data))
    fresh = ModelRegistry(tmp_path / "fresh")
    with pytest.raises(IntegrityError, match="hashes to"):
        fresh.import_archive(bad)
    assert fresh.list_versions() == [] and fresh.gc().temp_removed == 0


def test_import_refuses_other_bytes_under_an_existing_version(three, tiny_onnx,
                                                             tmp_path: Path) -> None:
    archive = three.export("a", tmp_path / "a.tar")
    other = ModelRegistry(tmp_path / "other")
    other.push(tiny_onnx(7.0, name="a7"), "a")
    with pytest.raises(VersionConflictError, match="a@1.0.0 exists here with other bytes"):
        other.import_archive(archive)
    (tmp_path / "junk.tar").write_bytes(b"not a tar")
    with pytest.raises(RegistryError, match="not a tar archive"):
        other.import_archive(tmp_path / "junk.tar")
