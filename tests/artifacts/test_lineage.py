"""Lineage across three pushes (trained -> exported -> quantized) with the edge deltas."""

from __future__ import annotations

import pytest

from torchslim.artifacts.manifest import write_manifest
from torchslim.artifacts.schema import DatasetRef, Measurement

TEST = DatasetRef(name="digits", split="test", n=360)


def _measured(runtime: str, precision: str, top1: float, p50_b1: float, p50_b32: float
              ) -> Measurement:
    return Measurement(name=f"{runtime}-{precision}", dataset=TEST, runtime=runtime,
                       precision=precision, threads=2, cpu="test cpu", batch_sizes=[1, 32],
                       top1=top1, latency_ms={"1": {"p50": p50_b1}, "32": {"p50": p50_b32}})


@pytest.fixture
def chain(registry, copy_of):
    """teacher (checkpoint, trained) -> fp32 ONNX (exported) -> QDQ ONNX (quantized)."""
    ckpt, fp32, qdq = copy_of("checkpoint"), copy_of("onnx-fp32"), copy_of("onnx-qdq")
    write_manifest(ckpt, relation="trained", metrics=[_measured("torch", "fp32", 0.95, 2.0, 40.0)])
    write_manifest(fp32, parent=ckpt, relation="exported",
                   metrics=[_measured("torch", "fp32", 0.95, 2.0, 40.0),
                            _measured("onnxruntime", "fp32", 0.95, 1.0, 16.0)])
    write_manifest(qdq, parent=fp32, relation="quantized",
                   metrics=[_measured("onnxruntime", "int8", 0.9425, 0.5, 5.0)])
    for path, name in ((ckpt, "teacher"), (fp32, "teacher-onnx"), (qdq, "teacher-int8")):
        registry.push(path, name)
    return registry


def test_lineage_goes_back_to_the_original_with_relations(chain) -> None:
    found = chain.lineage("teacher-int8@1.0.0")
    assert [i.ref for i in found.chain] == ["teacher-int8@1.0.0", "teacher-onnx@1.0.0",
                                            "teacher@1.0.0"]
    assert [e.relation for e in found.edges] == ["quantized", "exported"]
    assert [i.relation for i in found.chain] == ["quantized", "exported", "trained"]
    assert found.unresolved_parent is None


def test_edges_carry_accuracy_latency_and_size_deltas(chain) -> None:
    quantized, exported = chain.lineage("teacher-int8").edges
    # the same runtime (onnxruntime) is preferred over the parent's torch figures
    assert quantized.top1_delta == pytest.approx(-0.0075)
    assert quantized.speedup == {"1": 2.0, "32": 3.2}
    assert quantized.runtimes == ("onnxruntime", "onnxruntime")
    assert quantized.accuracy_on == "digits/test"
    child, parent = chain.get("teacher-int8"), chain.get("teacher-onnx")
    assert quantized.bytes_delta == child.size - parent.size < 0
    assert quantized.size_ratio == pytest.approx(parent.size / child.size, rel=1e-3)
    assert exported.top1_delta == 0.0 and exported.speedup == {"1": 1.0, "32": 1.0}
    text = "\n".join(chain.lineage("teacher-int8").lines())
    assert "quantized from teacher-onnx@1.0.0: top-1 -0.75 pts (digits/test)" in text
    assert "p50 b1 2.00x, b32 3.20x (onnxruntime -> onnxruntime)" in text


def test_a_parent_outside_the_registry_ends_the_chain_with_its_digest(registry, copy_of) -> None:
    ckpt, fp32 = copy_of("checkpoint"), copy_of("onnx-fp32")
    parent = write_manifest(ckpt)
    write_manifest(fp32, parent=ckpt, relation="exported")
    registry.push(fp32, "orphan")
    found = registry.lineage("orphan")
    assert len(found.chain) == 1 and found.unresolved_parent == parent.digest
    assert "not in this registry" in found.lines()[-1]
