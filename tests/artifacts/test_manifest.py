"""Manifests written beside real artifacts: files, digests, format, signature, stamps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import torchslim
from torchslim.artifacts import onnx_meta
from torchslim.artifacts.digest import sha256_file
from torchslim.artifacts.manifest import (build_manifest, read_manifest, recipe_hash,
                                          write_manifest)
from torchslim.artifacts.schema import Measurement, Signature, TensorSig
from torchslim.errors import ManifestError
from torchslim.exporters import export_dynamic, export_weight_only
from torchslim.quant.dynamic import quantize_dynamic
from torchslim.quant.weight_only import quantize_weight_only
from torchslim.runtime import TorchSession

RUNTIME_KINDS = {  # kind fixture key -> (manifest kind, format, precision, files, batch dim)
    "onnx-fp32": ("onnx", "onnx-fp32", "fp32", ["model.onnx"], "batch"),
    "onnx-qdq": ("onnx", "onnx-qdq", "int8", ["model-int8.onnx"], "batch"),
    "openvino-ir": ("openvino-ir", "openvino-ir", "int8", ["model-int8.bin", "model-int8.xml"],
                    None),
}


def _runtime_signature(path: Path) -> Signature:
    session = torchslim.runtime.open(path, threads=1)
    try:
        return Signature(inputs=[TensorSig.of(s) for s in session.inputs],
                         outputs=[TensorSig.of(s) for s in session.outputs])
    finally:
        session.close()


@pytest.mark.parametrize("key", sorted(RUNTIME_KINDS))
def test_round_trip_matches_files_and_runtime_signature(copy_of, key: str) -> None:
    path = copy_of(key)
    kind, fmt, precision, files, batch = RUNTIME_KINDS[key]
    written = write_manifest(path, relation="exported", config={"opset": 17})
    manifest = read_manifest(path)  # validates and re-hashes every file
    assert manifest == written
    assert (manifest.kind, manifest.format, manifest.precision) == (kind, fmt, precision)
    assert [f.path for f in manifest.files] == files
    for f in manifest.files:
        assert (f.sha256, f.size) == sha256_file(path.parent / f.path)
    assert manifest.signature == _runtime_signature(path)
    assert manifest.signature.inputs[0].shape == [batch, 1, 28, 28]
    assert manifest.signature.outputs[0].shape == [batch, 10]


def test_checkpoint_round_trip_with_the_callers_signature(copy_of) -> None:
    path = copy_of("checkpoint")
    example = np.zeros((2, 1, 28, 28), np.float32)
    session = TorchSession(torchslim.load(path), example_inputs=example)
    write_manifest(path, relation="trained", inputs=session.inputs, outputs=session.outputs,
                   class_names=[str(i) for i in range(10)],
                   preprocessing={"layout": "NCHW", "input_size": [1, 28, 28],
                                  "mean": [0.286], "std": [0.353]})
    manifest = read_manifest(path)
    assert (manifest.kind, manifest.format, manifest.precision) == ("checkpoint", "safetensors",
                                                                    "fp32")
    assert [f.path for f in manifest.files] == ["model.json", "model.safetensors"]
    reloaded = TorchSession(torchslim.load(path), example_inputs=example)
    assert manifest.signature == Signature(inputs=[TensorSig.of(s) for s in reloaded.inputs],
                                           outputs=[TensorSig.of(s) for s in reloaded.outputs])
    assert manifest.signature.inputs[0].shape == ["batch", None, None, None]
    assert manifest.preprocessing.input_size == [1, 28, 28] and len(manifest.class_names) == 10


def test_dynamic_and_weight_only_onnx_formats(tmp_path: Path) -> None:
    torch.manual_seed(0)
    # 128 inputs per layer: the default weight-only groups of 128 fit
    lin = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.ReLU(), torch.nn.Linear(128, 4))
    dyn = export_dynamic(quantize_dynamic(lin), tmp_path / "d.onnx", input_shape=(128,))
    wo = export_weight_only(quantize_weight_only(lin), tmp_path / "w.onnx", input_shape=(128,))
    assert (write_manifest(dyn).format, read_manifest(dyn).precision) == ("onnx-dynamic", "int8")
    assert (write_manifest(wo).format, read_manifest(wo).precision) == (
        "onnx-weight-only", "int8-weight-only")


def test_onnx_stamp_records_parent_and_recipe_and_still_runs(copy_of) -> None:
    parent = write_manifest(copy_of("checkpoint"))
    path = copy_of("onnx-fp32")
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    before = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    recipe = {"name": "r", "stages": [{"kind": "quantize"}]}
    manifest = write_manifest(path, parent=parent, relation="exported", recipe=recipe, seed=3)
    props = onnx_meta.read_props(path)
    assert props == {onnx_meta.PROP_PARENT_DIGEST: parent.digest,
                     onnx_meta.PROP_RECIPE_HASH: recipe_hash(recipe)}
    assert manifest.provenance.parent_digest == parent.digest and manifest.provenance.seed == 3
    assert manifest.files[0].sha256 == sha256_file(path)[0]  # digests cover the stamped bytes
    after = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    np.testing.assert_array_equal(before, after)
    assert write_manifest(path, parent=parent, relation="exported", recipe=recipe,
                          seed=3).digest == manifest.digest  # stamping again is a no-op


def test_external_data_is_listed_and_left_untouched(tmp_path: Path, onnx_file) -> None:
    path = onnx_file(tmp_path / "ext" / "m.onnx", 2.0, external=True)
    data = path.with_name("m.onnx.data")
    data_digest = sha256_file(data)
    manifest = write_manifest(path, parent="sha256:" + "0" * 64)
    assert [f.path for f in manifest.files] == ["m.onnx", "m.onnx.data"]
    assert sha256_file(data) == data_digest
    assert onnx_meta.read_props(path)[onnx_meta.PROP_PARENT_DIGEST] == "sha256:" + "0" * 64
    y = ort.InferenceSession(str(path)).run(None, {"x": np.ones((1, 4), np.float32)})[0]
    np.testing.assert_array_equal(y, np.full((1, 4), 3.0, np.float32))


def test_external_data_outside_the_directory_is_refused(tmp_path: Path, onnx_file) -> None:
    path = onnx_file(tmp_path / "ext" / "m.onnx", 2.0, external=True)
    proto = onnx_meta.load_proto(path)
    proto.graph.initializer[0].external_data[0].value = "../elsewhere.data"
    with pytest.raises(ManifestError, match="outside its directory"):
        onnx_meta.external_files(path, proto)


def test_a_changed_file_fails_the_read(copy_of, flip_byte) -> None:
    path = copy_of("onnx-qdq")
    write_manifest(path)
    flip_byte(path, 100)
    with pytest.raises(ManifestError, match="model-int8.onnx has sha256"):
        read_manifest(path)
    assert read_manifest(path, verify=False).kind == "onnx"


def test_an_onnx_file_without_manifest_is_not_a_torchslim_artifact(copy_of, tmp_path) -> None:
    with pytest.raises(ManifestError, match="not a torchslim artifact"):
        read_manifest(copy_of("onnx-fp32"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ManifestError, match="not a torchslim artifact"):
        read_manifest(tmp_path / "notes.txt")
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "missing.onnx")


def test_a_damaged_manifest_names_the_field(copy_of) -> None:
    path = copy_of("onnx-fp32")
    write_manifest(path)
    manifest_path = path.with_name(path.name + ".manifest.json")
    data = json.loads(manifest_path.read_text())
    data["files"][0]["sha256"] = "xyz"
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"files\.0\.sha256"):
        read_manifest(path)
    data["files"][0]["sha256"], data["schema_version"] = "a" * 64, 2
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="schema_version 2"):
        read_manifest(path)


def test_unknown_relation_is_refused(copy_of) -> None:
    with pytest.raises(ManifestError, match="relation"):
        build_manifest(copy_of("onnx-fp32"), relation="shrunk")


def test_measurement_from_a_report_candidate() -> None:
    candidate = {"name": "int8-ort", "runtime": "onnxruntime", "precision": "int8",
                 "threads": 2, "top1": 0.91, "top5": 0.99, "n": 10000,
                 "latency_ms": {"1": {"p50": 0.5, "p90": 0.6}, "32": {"p50": 6.0}},
                 "items_per_s": {"32": 5300.0}, "bytes": 290000,
                 "machine": {"cpu": "AMD EPYC", "threads": 2}, "per_class": [0.9] * 10}
    m = Measurement.from_result(candidate, dataset={"name": "fashion-mnist", "split": "test"})
    assert (m.dataset.n, m.cpu, m.batch_sizes, m.top1) == (10000, "AMD EPYC", [1, 32], 0.91)
    assert m.latency_ms["32"]["p50"] == 6.0 and m.items_per_s == {"32": 5300.0}


def test_provenance_records_versions_and_git_revision(copy_of) -> None:
    prov = build_manifest(copy_of("onnx-fp32")).provenance
    assert {"torchslim", "torch", "onnx", "onnxruntime", "python"} <= set(prov.versions)
    assert prov.versions["torch"] == torch.__version__.split("+")[0]
    assert prov.git_revision is None or len(prov.git_revision) == 40
    assert recipe_hash({"a": 1, "b": [1, 2]}) == recipe_hash({"b": [1, 2], "a": 1})
