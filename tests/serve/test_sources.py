"""Where versions come from: a file, MODEL/VERSION directories, a repository of models, and
name@alias through the pluggable registry hook (lazily imported, a clear error without it)."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest
import serve_helpers as h

from torchslim.errors import ArtifactError, ConfigError
from torchslim.serve import sources
from torchslim.serve.sources import (is_reference, model_name_for, model_versions,
                                     repository_models, set_alias_resolver)


@pytest.fixture(autouse=True)
def _default_resolver():  # noqa: ANN202
    yield
    set_alias_resolver(None)


def test_a_file_is_version_1_and_directories_hold_versions(tmp_path: Path) -> None:
    single = h.linear(tmp_path / "m.onnx")
    assert {v: f.artifact for v, f in model_versions(str(single)).items()} == {"1": single}
    for version in ("1", "2", "10"):
        h.linear(tmp_path / "lin" / version / "model.onnx")
    (tmp_path / "lin" / "notes").mkdir()   # not a version: ignored
    assert list(model_versions(str(tmp_path / "lin"))) == ["1", "2", "10"]
    assert model_name_for(str(tmp_path / "lin")) == "lin" and model_name_for(str(single)) == "m"


def test_a_version_directory_must_hold_exactly_one_artifact(tmp_path: Path) -> None:
    h.linear(tmp_path / "lin" / "1" / "a.onnx")
    h.linear(tmp_path / "lin" / "1" / "b.onnx")
    with pytest.raises(ArtifactError, match="holds 2 artifacts"):
        model_versions(str(tmp_path / "lin"))
    with pytest.raises(ArtifactError, match="not found"):
        model_versions(str(tmp_path / "missing"))


def test_the_fingerprint_changes_when_an_artifact_is_rewritten(tmp_path: Path) -> None:
    path = h.linear(tmp_path / "m" / "1" / "model.onnx")
    before = model_versions(str(tmp_path / "m"))["1"].fingerprint
    os.utime(path, ns=(1, 1))
    assert model_versions(str(tmp_path / "m"))["1"].fingerprint != before


def test_a_repository_lists_its_model_directories(tmp_path: Path) -> None:
    h.linear(tmp_path / "a" / "1" / "model.onnx")
    h.linear(tmp_path / "b" / "model.onnx")
    (tmp_path / "empty").mkdir()
    assert sorted(repository_models(tmp_path)) == ["a", "b"]
    assert repository_models(tmp_path / "a") == {}   # a model, not a repository


def test_an_alias_goes_through_the_resolver_hook(tmp_path: Path) -> None:
    h.linear(tmp_path / "fashion" / "3" / "model.onnx")
    calls = []

    def resolve(ref: str) -> Path:
        calls.append(ref)
        return tmp_path / "fashion" / "3" / "model.onnx"

    set_alias_resolver(resolve)
    assert is_reference("fashion@prod") and model_name_for("fashion@prod") == "fashion"
    assert list(model_versions("fashion@prod")) == ["3"] and calls == ["fashion@prod"]
    set_alias_resolver(lambda ref: (tmp_path / "fashion" / "3" / "model.onnx", "1.2.0"))
    assert list(model_versions("fashion@prod")) == ["1.2.0"]


def test_the_registry_module_is_used_when_it_exists(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    artifact = h.linear(tmp_path / "blob" / "model.onnx")
    fake = types.ModuleType("torchslim.artifacts.registry")
    fake.resolve = lambda ref: artifact   # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchslim.artifacts.registry", fake)
    versions = model_versions("fashion@champion")
    assert [f.artifact for f in versions.values()] == [artifact]


def test_without_a_registry_an_alias_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "_REGISTRY_MODULES", ("torchslim_no_such_registry",))
    with pytest.raises(ConfigError, match=r"no artifact registry .*pass an artifact file"):
        model_versions("fashion@prod")


def test_serving_an_alias_of_the_real_registry_and_moving_it(start, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from torchslim.artifacts import ModelRegistry, write_manifest

    monkeypatch.setenv("TORCHSLIM_REGISTRY", str(tmp_path / "registry"))
    registry = ModelRegistry()
    for seed in (0, 1):
        path = h.linear(tmp_path / f"v{seed}" / "model.onnx", seed=seed)
        write_manifest(path, relation="exported")
        registry.push(path, "fashion")
    registry.alias("fashion@1.0.0", "prod")
    server = start({"fashion": ("fashion@prod", {})})
    client = h.http_client(server)
    x = h.rows(1)
    first = client.infer("fashion", [h.http_input("x", x)])
    assert first.get_response()["model_version"] == "1.0.0"
    registry.alias("fashion@1.0.1", "prod")
    client.load_model("fashion")
    second = client.infer("fashion", [h.http_input("x", x)])
    assert second.get_response()["model_version"] == "1.0.1"
    assert abs(second.as_numpy("y") - h.expected_linear(x, seed=1)).max() < 1e-5
