"""`torchslim compare`: real float and INT8 QDQ ONNX files of a digits model, timed in one
interleaved loop; JSON fields, ratios, quality vs the first, one-line errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from torchslim.cli import app
from torchslim.evaluation import timing
from torchslim.exporters import export_onnx, export_qdq
from torchslim.quant import QuantConfig, quantize

runner = CliRunner()


@pytest.fixture(scope="module")
def artifacts(digits_model, tmp_path_factory) -> dict[str, Path]:
    model, data = digits_model
    root = tmp_path_factory.mktemp("compare")
    shape = tuple(data.info.input_shape)
    int8 = quantize(copy.deepcopy(model), QuantConfig(), data.train, num_batches=4)
    other = tmp_path_factory.mktemp("other") / "wide.onnx"
    export_onnx(copy.deepcopy(model), other, input_shape=(shape[0], shape[1] * 2, shape[2]))
    return {"fp32": export_onnx(copy.deepcopy(model), root / "fp32.onnx", input_shape=shape),
            "int8": export_qdq(int8, root / "int8.onnx", input_shape=shape), "other": other}


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[timing.Timings]:
    seen: list[timing.Timings] = []
    real = timing.time_interleaved

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(timing, "time_interleaved", spy)
    return seen


def test_compare_times_in_one_interleaved_loop_and_writes_json(artifacts, tmp_path, monkeypatch):
    seen = _spy(monkeypatch)
    out = tmp_path / "cmp.json"
    result = runner.invoke(app, ["compare", str(artifacts["fp32"]), str(artifacts["int8"]),
                                 "--rounds", "3", "--calls", "1", "--batch-sizes", "1,8",
                                 "--threads", "1", "--dataset", "digits", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(seen) == 1   # both artifacts in ONE loop, not one loop each
    timings = seen[0]
    assert timings.batch_sizes == (1, 8) and len(timings.rounds_ms[(1, 8)]) == 3
    report = json.loads(out.read_text())
    assert report["timing"] == {"method": "interleaved", "rounds": 3, "calls": 1,
                                "batch_sizes": [1, 8]}
    base, int8 = report["artifacts"]
    assert base["artifact"] == str(artifacts["fp32"]) == report["baseline"]
    assert base["speedup"]["8"]["median"] == 1.0 and base["agreement"] == 1.0
    for b in ("1", "8"):
        ratio = int8["speedup"][b]
        expected = timings.ratio(0, 1, int(b))
        assert ratio["median"] == round(expected.median, 3) > 0
        assert 0 < ratio["low"] <= ratio["median"] <= ratio["high"] and ratio["rounds"] == 3
        assert int8["p50_ms"][b] > 0
    assert report["quality_on"]["dataset"] == "digits" and report["quality_on"]["n"] > 300
    assert base["top1"] > 0.8 and abs(int8["top1"] - base["top1"]) < 0.05
    assert int8["agreement"] > 0.9 and int8["cosine"] > 0.95 and int8["error"] is None
    assert int8["bytes"] < base["bytes"]
    assert "speed-up" in result.output and "json: " in result.output


def test_compare_without_a_dataset_uses_random_inputs(artifacts, monkeypatch):
    seen = _spy(monkeypatch)
    result = runner.invoke(app, ["compare", str(artifacts["fp32"]), str(artifacts["int8"]),
                                 str(artifacts["fp32"]), "--rounds", "2", "--calls", "1",
                                 "--batch-sizes", "4", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert len(seen) == 1 and len(seen[0].names) == 3
    assert "seeded random inputs" in result.output


def test_missing_file_is_one_line(artifacts, tmp_path, one_line_error):
    result = runner.invoke(app, ["compare", str(artifacts["fp32"]), str(tmp_path / "no.onnx")])
    one_line_error(result, "artifact not found", "no.onnx")


def test_artifacts_with_other_inputs_are_one_line(artifacts, one_line_error):
    result = runner.invoke(app, ["compare", str(artifacts["fp32"]), str(artifacts["other"])])
    one_line_error(result, "wide.onnx", "takes other inputs", "same model")


def test_one_artifact_is_one_line(artifacts, one_line_error):
    result = runner.invoke(app, ["compare", str(artifacts["fp32"])])
    one_line_error(result, "at least two artifacts")
