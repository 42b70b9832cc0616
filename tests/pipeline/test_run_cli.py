"""`torchslim run` / `torchslim search`: one-line errors with exit code 2, verdict exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from torchslim.cli import app
from torchslim.errors import ConfigError
from torchslim.pipeline.search import parse_duration, pareto_front, trial_space
from torchslim.pipeline.recipe import parse_recipe

runner = CliRunner()

GOOD = """\
model: resnet8
data: digits
stages:
  - kind: prune
    target_macs: 0.5
  - kind: quantize
    method: ptq
"""


@pytest.mark.parametrize("command", ["run", "search"])
@pytest.mark.parametrize("old, new, needles", [
    ("kind: prune", "kind: prune: x", (":4: invalid YAML", "mapping values")),   # bad YAML
    ("method: ptq", "method: [ptq", (":8: invalid YAML", "flow sequence from line 7")),
    ("kind: prune", "kind: sparsify", (":4: stages[0].kind: unknown stage 'sparsify'",
                                       "allowed: distill, distill_embeddings, export")),  # unknown stage
    ("target_macs: 0.5", "target_macs: half", (":5: stages[0].target_macs:",
                                               "valid number")),                  # wrong type
    ("model: resnet8", "model: mylab.models:student", (":1: model: entry point",
                                                       "cannot import 'mylab.models'")),
    ("data: digits", "data: mylab.data:loaders", (":2: data: entry point",)),     # missing data fn
])
def test_malformed_recipe_is_one_line_with_file_line_field(tmp_path: Path, command: str, old: str,
                                                           new: str, needles: tuple[str, ...],
                                                           one_line_error) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace(old, new))
    line = one_line_error(runner.invoke(app, [command, str(path)]), *needles)
    assert f"error: {path}:" in line


def test_missing_recipe_file(tmp_path: Path, one_line_error) -> None:
    one_line_error(runner.invoke(app, ["run", str(tmp_path / "nope.yaml")]),
                   "not found", "fashion_mnist")


def test_bad_time_budget(tmp_path: Path, one_line_error) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(GOOD)
    one_line_error(runner.invoke(app, ["search", str(path), "--time-budget", "soon"]),
                   "--time-budget 'soon'", "30m")


def test_parse_duration() -> None:
    assert parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400
    assert parse_duration("90s") == 90 and parse_duration("12") == 12
    with pytest.raises(ConfigError):
        parse_duration("3 days")


def test_trial_space_and_pareto_front() -> None:
    trials = trial_space(parse_recipe(GOOD))
    assert len(trials) == 4 * 3                      # the recipe's 0.5 is one of the grid
    assert trials[0] == {0: {"target_macs": 0.8, "target_params": None},
                         1: {"method": "ptq", "keep_sensitive": 0}}
    assert trials[-1][1]["method"] == "qat"          # QAT, the expensive one, comes last
    own = trial_space(parse_recipe(GOOD.replace("target_macs: 0.5", "target_macs: 0.9")))
    assert len(own) == 5 * 3                         # a ratio off the grid is tried too
    assert [t[0]["target_macs"] for t in own[:5]] == [0.9, 0.8, 0.65, 0.5, 0.35]
    points = [{"trial": 0, "val_top1": 0.9, "p50_ms": 2.0}, {"trial": 1, "val_top1": 0.8, "p50_ms": 1.0},
              {"trial": 2, "val_top1": 0.7, "p50_ms": 1.5}, {"trial": 3, "val_top1": 0.9, "p50_ms": 3.0}]
    assert pareto_front(points) == [0, 1]


def test_run_prints_the_verdict_and_exits_by_it(write_recipe, one_thread, one_line_error) -> None:
    ptq = {"kind": "quantize", "method": "ptq", "calib_batches": 2}
    ok = runner.invoke(app, ["run", str(write_recipe([ptq], name="ok"))])
    assert ok.exit_code == 0, ok.output
    assert "verdict: met" in ok.stdout and "final-int8-onnxruntime" in ok.stdout
    again = runner.invoke(app, ["run", str(write_recipe([ptq], name="ok"))])
    one_line_error(again, "already holds a run", "--resume")
    strict = write_recipe([ptq], name="strict", budget={"max_drop": 0.05, "max_bytes": 10})
    failed = runner.invoke(app, ["run", str(strict)])
    assert failed.exit_code == 1 and "verdict: not met" in failed.stdout
    assert "FAIL artifact bytes" in failed.stdout


@pytest.mark.slow
def test_search_keeps_the_best_artifact_and_plots_the_front(write_recipe, tmp_path: Path,
                                                            one_thread) -> None:
    # 0.8 is on the search's grid: 4 ratios x 3 quantizations (a ratio off the grid, a 5th
    # row of 3 more trials, is test_trial_space_and_pareto_front's)
    stages = [{"kind": "prune", "target_macs": 0.8, "round_to": 1, "finetune_epochs": 0},
              {"kind": "quantize", "method": "ptq", "calib_batches": 2, "qat_epochs": 1}]
    path = write_recipe(stages, name="search", budget={"max_drop": 0.3})
    out = tmp_path / "search"
    result = runner.invoke(app, ["search", str(path), "--time-budget", "20m", "--output", str(out)])
    assert result.exit_code == 0, result.output
    found = json.loads((out / "search.json").read_text())
    trials = found["trials"]
    assert len(trials) == 12 and found["best"]["within_budget"]
    valid = [t for t in trials if t["within_budget"]]
    assert found["best"]["p50_ms"] == min(t["p50_ms"] for t in valid)
    assert (out / "best.onnx").read_bytes() == (out / found["best"]["artifact"]).read_bytes()
    report = json.loads((out / "report.json").read_text())
    assert report["search"]["pareto_front"] and report["pipeline"]["verdict"] in ("met", "not met")
    assert (out / "pipeline.html").read_text().count("data:image/png;base64,") == 2
    # the prune stages of trials that differ only in quantization ran once
    assert len(list((out / "stages").glob("01-prune-*"))) == 4
