"""Publishing to a real MLflow (local SQLite backend, local artifact root, no server)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from torchslim.artifacts.digest import sha256_file
from torchslim.artifacts.mlflow_publish import publish_mlflow
from torchslim.artifacts.schema import DatasetRef, Measurement
from torchslim.errors import MissingDependencyError


def _measured(precision: str, top1: float, p50: float) -> Measurement:
    return Measurement(name=f"ort-{precision}", runtime="onnxruntime", precision=precision,
                       threads=1, dataset=DatasetRef(name="digits", split="test", n=360),
                       top1=top1, latency_ms={"1": {"p50": p50}}, items_per_s={"1": 1000 / p50})


@pytest.mark.slow
def test_publish_round_trip(registry, tiny_onnx, tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    a = tiny_onnx(1.0, name="a", relation="trained", metrics=[_measured("fp32", 0.95, 2.0)])
    b = tiny_onnx(2.0, name="b", parent=a, relation="quantized",
                  metrics=[_measured("int8", 0.90, 0.5)])
    registry.push(a, "a")
    info = registry.push(b, "b", aliases=["prod"], description="int8 of a")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    kwargs = dict(tracking_uri=uri, artifact_location=str(tmp_path / "mlruns"),
                  registry=registry)
    pa = publish_mlflow("a@1.0.0", **kwargs)
    pb = publish_mlflow("b@prod", **kwargs)
    assert pb.created and pb.parent_uri == f"models:/a/{pa.version}"

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = client.get_model_version("b", pb.version)
    assert mv.tags["torchslim.digest"] == info.digest
    assert mv.tags["torchslim.lineage"] == "b@1.0.0 <- a@1.0.0"
    assert (mv.tags["torchslim.relation"], mv.tags["torchslim.parent"]) == ("quantized", "a@1.0.0")
    assert mv.description == "int8 of a"
    assert str(client.get_model_version_by_alias("b", "prod").version) == pb.version
    run = client.get_run(pb.run_id)
    assert run.data.metrics["ort-int8.top1"] == pytest.approx(0.90)
    assert run.data.metrics["ort-int8.p50_ms.b1"] == pytest.approx(0.5)
    assert run.data.metrics["lineage.top1_delta"] == pytest.approx(-0.05)
    assert run.data.metrics["lineage.speedup.b1"] == pytest.approx(4.0)
    assert run.data.params["format"] == "onnx-fp32" and run.data.params["relation"] == "quantized"

    local = Path(mlflow.artifacts.download_artifacts(run_id=pb.run_id, artifact_path="model",
                                                     dst_path=str(tmp_path / "dl"),
                                                     tracking_uri=uri))
    assert sha256_file(local / "b.onnx")[0] == info.manifest.files[0].sha256
    assert (local / "b.onnx.manifest.json").is_file()
    signature = mlflow.models.Model.load(str(local / "MLmodel")).signature
    [x] = signature.inputs.inputs
    assert (x.name, x.shape, str(x.type)) == ("x", (-1, 4), "float32")

    again = publish_mlflow("b@1.0.0", **kwargs)
    assert not again.created and again.version == pb.version


def test_missing_mlflow_names_the_extra(registry, tiny_onnx, monkeypatch) -> None:
    registry.push(tiny_onnx(1.0), "m")
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'torchslim\[mlflow\]'"):
        publish_mlflow("m", tracking_uri="sqlite:///unused.db", registry=registry)
