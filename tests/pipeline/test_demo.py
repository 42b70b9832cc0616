"""End-to-end: `torchslim demo --quick` trains, exports, evaluates on two runtimes, reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from torchslim.artifacts import ModelRegistry
from torchslim.cli import app
from torchslim.evaluation import timing

REAL = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
runner = CliRunner()


@pytest.mark.slow
def test_demo_quick_end_to_end_then_reuses_the_cached_teacher(tmp_path: Path, fake_fashion: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    data = [] if REAL.is_file() else ["--data", str(fake_fashion)]
    timed_loops: list[int] = []
    real_loop = timing.time_interleaved

    def spy(sessions, *args, **kwargs):
        timed_loops.append(len(sessions))
        return real_loop(sessions, *args, **kwargs)

    monkeypatch.setattr(timing, "time_interleaved", spy)
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--quick", "--out", str(out), *data])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.stdout

    report = json.loads((out / "report.json").read_text())
    assert report["baseline"] == "teacher-fp32-torch"
    names = [c["name"] for c in report["candidates"]]
    assert names[:3] == ["teacher-fp32-torch", "teacher-fp32-onnxruntime",
                         "teacher-int8-onnxruntime"]
    torch_c, ort_c, int8_c = report["candidates"][:3]
    _check_pipeline(report, out)
    # the teacher on PyTorch is the recipe's baseline, not a second evaluation of it
    recipe_base = json.loads((out / "pipeline" / "report.json").read_text())["candidates"][0]
    assert recipe_base["name"] == torch_c["name"]
    assert (recipe_base["top1"], recipe_base["latency_ms"]) == (torch_c["top1"],
                                                                torch_c["latency_ms"])
    assert (torch_c["runtime"], ort_c["runtime"]) == ("torch", "onnxruntime")
    for c in (torch_c, ort_c):
        assert 0.0 <= c["top1"] <= 1.0 and len(c["per_class"]) == 10
        for bs in ("1", "32"):
            lat = c["latency_ms"][bs]
            assert 0 < lat["p50"] <= lat["p99"] and c["items_per_s"][bs] > 0
        assert c["bytes"] > 0
    assert ort_c["agreement"] >= 0.999
    assert ort_c["bytes"] == (out / "teacher.onnx").stat().st_size
    assert int8_c["precision"] == "int8" and int8_c["runtime"] == "onnxruntime"
    assert int8_c["bytes"] < 0.6 * ort_c["bytes"]  # tiny quick model: graph overhead dominates
    assert int8_c["extra"]["fake_quant_agreement"] >= 0.95
    _check_stage_candidates(report, ort_c)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6  # + the robustness and reliability plots
    _check_robustness(report, html)
    # the recipe's chain is published: lineage from the shipped INT8 back to the teacher
    reg = report["registry"]
    lineage = ModelRegistry(reg["root"]).lineage("fashion-mnist-demo@latest")
    assert lineage.lines() == reg["lineage"] and "Registry: lineage" in html
    relations = [v.manifest.provenance.relation for v in
                 (ModelRegistry(reg["root"]).get(ref) for ref in reg["versions"])]
    assert relations[0] == "trained" and relations[-2:] == ["quantized", "exported"]
    assert ModelRegistry(reg["root"]).get(reg["versions"][-1]).manifest.role == "recipe-final"
    # every speed-up of the report comes from ONE interleaved loop over all the candidates
    loops = [n for n in timed_loops if n == len(report["candidates"])]
    assert len(loops) == 1, timed_loops
    for c in report["candidates"]:
        timed = c["extra"]["speedup_interleaved"]
        assert timed["vs"] == "teacher-fp32-torch" and set(timed["batches"]) == {"1", "32"}
        assert timed["batches"]["32"]["low"] <= timed["batches"]["32"]["speedup"]
    # an empty cache: the demo trained the quick teacher once, and the recipe reused it
    assert report["teacher"]["cached"] is False
    assert report["pipeline"]["model"] == {"zoo": "resnet8", "pretrained": True, "cached": True}
    steps = report["timing"]["steps_s"]
    assert list(steps) == ["teacher", "recipe", "teacher candidates", "robustness",
                           "registry", "interleaved timing"]
    assert all(v >= 0 for v in steps.values()) and steps["recipe"] > 0


def _check_stage_candidates(report: dict, ort_c: dict) -> None:
    """The recipe's accepted float stages are the demo's KD and pruned candidates; the
    report's pruning block is the recipe's prune stage, counted on its models."""
    by_name = {c["name"]: c for c in report["candidates"]}
    stages = {s["stage"]: s for s in report["pipeline"]["stages"]}
    if stages["01-distill"]["status"] == "done":
        student = by_name["01-distill-fp32-onnxruntime"]
        assert student["params"] < ort_c["params"] and student["n"] == ort_c["n"]
    prune = stages["02-prune"]
    if prune["status"] != "done":
        assert report["pruning"] is None
        return
    pruned = by_name["02-prune-fp32-onnxruntime"]
    block = report["pruning"]
    assert block["stage"] == "02-prune" and block["macs_after"] == pruned["macs"]
    before = by_name.get("01-distill-fp32-onnxruntime", ort_c)
    assert block["macs_before"] == before["macs"] and block["params_after"] == pruned["params"]
    target = 0.5 if block["attempt"] == 0 else block["options"]["target_macs"]
    assert abs(pruned["macs"] / before["macs"] - target) <= 0.05 * target
    assert block["layers"]      # the per-layer channel table of the report


def _check_pipeline(report: dict, out: Path) -> None:
    """The built-in recipe ran: its accepted stages and its shipped artifact are candidates,
    and `pipeline` has one entry per stage attempt and the verdict."""
    names = [c["name"] for c in report["candidates"]]
    pipeline = report["pipeline"]
    assert pipeline["verdict"] in ("met", "not met")
    attempts = pipeline["attempts"]
    assert [a["stage"] for a in attempts][0] == "01-distill"
    assert {a["stage"] for a in attempts} == {"01-distill", "02-prune", "03-quantize", "04-export"}
    assert all(a["verdict"] in ("accepted", "rolled back") for a in attempts)
    accepted = [s["stage"] for s in pipeline["stages"] if s["status"] == "done"]
    expected = [f"{s}-fp32-onnxruntime" for s in accepted if s in ("01-distill", "02-prune")]
    assert names[3:] == [*expected, "final-int8-onnxruntime"]
    final = report["candidates"][-1]
    assert final["precision"] == "int8" and final["artifact"] == pipeline["artifact"]
    assert Path(pipeline["artifact"]) == out / "pipeline" / "model-int8.onnx"
    assert Path(pipeline["artifact"]).is_file() and (out / "pipeline" / "pipeline.html").is_file()
    assert pipeline["speedup"]["batch"] == 32 and pipeline["speedup"]["speedup"] > 0


def _check_robustness(report: dict, html: str) -> None:
    """Every candidate with an artifact (all but the PyTorch baseline: the teacher on ONNX
    Runtime, its PTQ, each of the recipe's accepted stages and its final INT8) has a
    robustness block on the same stratified subset, against the teacher's ONNX Runtime
    export; calibration and flips on the whole split (issue 20); a float candidate's own
    model is attacked white-box too."""
    block = report["robustness"]
    assert block["baseline"] == "teacher-fp32-onnxruntime" and block["n"] == 200
    assert block["seconds"] > 0
    by_name = {c["name"]: c for c in report["candidates"]}
    scored = report["candidates"][1:]
    assert set(block["per_candidate_s"]) == {c["name"] for c in scored}
    for c in scored:
        rob = c["extra"]["robustness"]
        assert rob["sample"]["n"] == 200 and 0.0 <= rob["clean_top1"] <= 1.0
        assert rob["calibration"]["n"] == c["n"]
        assert rob["corruptions"]["mean_top1"] is not None
        assert len(rob["adversarial"]["attacks"]) == 3  # FGSM 2/255 and 8/255, PGD-5 2/255
        white_box = [a["white_box_top1"] for a in rob["adversarial"]["attacks"].values()]
        if c["name"][:2].isdigit() and c["precision"] == "fp32":   # a recipe stage's float model
            assert all(w is not None for w in white_box), c["name"]
    assert by_name["teacher-fp32-onnxruntime"]["extra"]["robustness"]["flips"] is None
    int8 = by_name["teacher-int8-onnxruntime"]["extra"]["robustness"]
    assert int8["flips"]["n"] == by_name["teacher-int8-onnxruntime"]["n"]
    assert 0.0 <= int8["flips"]["mcnemar"]["p"] <= 1.0
    assert "Robustness: corruptions, attacks, calibration, flips" in html
