"""Robustness limits in a recipe's budget: validated at their keys, judged per attempt like
the top-1 budget (a breaking attempt rolls back to its fallback), recorded in pipeline.json
and report.json, read back on resume, and absent (no cost) without them."""

from __future__ import annotations

import json
import shutil

import pytest

from torchslim.errors import ConfigError
from torchslim.evaluation.robustness import RobustnessSuite
from torchslim.pipeline import robustness_guard
from torchslim.pipeline.recipe import parse_recipe
from torchslim.pipeline.runner import fingerprint, run_recipe

# Pruned to 5 % of the MACs without recovery the model answers one class: top-1 falls by
# ~80 points (within a budget of max_drop 1.0) and some class loses 100 points. The fallback
# (97 % of the MACs) keeps every class within a few points (worst 7 on this split).
HARSH_PRUNE = {"kind": "prune", "target_macs": 0.05, "round_to": 1, "finetune_epochs": 0,
               "fallbacks": [{"target_macs": 0.97}]}
LIMITS = {"max_class_drop_points": 25.0, "n": 50, "corruptions": ["blur", "jpeg"],
          "severities": [3]}
RECIPE = """
model: resnet8
data: digits
stages: [{kind: export}]
budget:
  max_drop: 0.05
  robustness:
%s
"""


@pytest.mark.parametrize("body, needle", [
    ("    max_class_drop_pts: 3", "r.yaml:8: budget.robustness.max_class_drop_pts: unknown "
                                  "option; allowed: corruptions, max_adversarial_drop,"),
    ("    n: 100", "r.yaml:7: budget.robustness: give at least one limit"),
    ("    max_ece_increase: -0.1", "r.yaml:8: budget.robustness.max_ece_increase: Input "
                                   "should be greater than or equal to 0"),
    ("    max_ece_increase: 0.1\n    corruptions: [fog]",
     "r.yaml:9: budget.robustness.corruptions: unknown corruption 'fog'; known: blur"),
    ("    max_ece_increase: 0.1\n    severities: [1, 9]",
     "r.yaml:9: budget.robustness.severities: severities [9] must be integers in [0, 5]"),
    ("    max_ece_increase: 0.1\n    n: 0", "r.yaml:9: budget.robustness.n: Input should be "
                                             "greater than or equal to 1"),
])
def test_bad_robustness_limits_are_one_line_at_their_key(body: str, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_recipe(RECIPE % body, source="r.yaml")
    assert str(e.value).startswith(needle), str(e.value)


def test_the_block_sets_limits_and_sample() -> None:
    recipe = parse_recipe(RECIPE % "    max_adversarial_drop: 0.1\n    n: 64\n    seed: 3",
                          source="r.yaml")
    rob = recipe.budget.robustness
    assert rob.limits().max_adversarial_drop == 0.1 and rob.limits().max_ece_increase is None
    assert (rob.config().n, rob.config().seed, rob.config().white_box) == (64, 3, True)
    plain = parse_recipe(RECIPE.replace("  robustness:\n%s\n", ""), source="r.yaml")
    assert plain.budget.robustness is None
    # a budget without limits fingerprints as before the key existed: old runs still resume
    assert fingerprint(plain) == fingerprint_without_key(plain)
    assert fingerprint(recipe) != fingerprint(recipe.model_copy(update={
        "budget": recipe.budget.model_copy(update={"robustness": None})}))


def fingerprint_without_key(recipe) -> str:
    import hashlib

    raw = json.loads(recipe.model_dump_json(exclude={"output"}))
    del raw["budget"]["robustness"]
    blob = json.dumps(raw, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _robust_failures(attempt: dict) -> list[dict]:
    return [c for c in attempt["robustness"]["checks"] if not c["ok"]]


def test_an_attempt_breaking_a_robustness_limit_is_rolled_back_and_resume_reads_it_back(
        write_recipe, one_thread, monkeypatch) -> None:
    path = write_recipe([HARSH_PRUNE], budget={"max_drop": 1.0, "robustness": LIMITS})
    result = run_recipe(path)
    harsh, mild = result.pipeline["attempts"]
    assert (harsh["verdict"], mild["verdict"]) == ("rolled back", "accepted")
    # within the top-1 budget, rolled back by the class limit alone
    assert harsh["checks"][0] == {**harsh["checks"][0], "check": "top-1 drop (val, guard)",
                                  "ok": True}
    assert harsh["val_drop"] > 0.3 and harsh["within_budget"] is False
    [failed] = _robust_failures(harsh)
    assert failed["check"].startswith("worst class top-1 drop (points, class ")
    assert failed["value"] == pytest.approx(100.0) and failed["limit"] == 25.0
    assert not _robust_failures(mild) and mild["robustness"]["ok"] is True
    block = mild["robustness"]["block"]
    assert block["sample"]["n"] == 50 and set(block["corruptions"]["by_corruption"]) == {
        "blur", "jpeg"}
    assert block["flips"]["n"] == block["paired"]["n"] > 50      # the whole validation split

    log = json.loads((result.out / "pipeline.json").read_text())
    assert [a["robustness"]["checks"] for a in log["attempts"]] == [
        harsh["robustness"]["checks"], mild["robustness"]["checks"]]
    baseline = log["stages"][0]["robustness"]
    assert baseline["limits"]["max_class_drop_points"] == 25.0 and baseline["config"]["n"] == 50
    assert baseline["block"]["adversarial"]["is_source"] is True
    assert baseline["block"] == json.loads(
        (result.out / "stages" / "00-baseline" / "robustness.json").read_text())
    report = json.loads((result.out / "report.json").read_text())
    shipped = [c for c in report["pipeline"]["checks"] if c["check"].endswith("(val, guard)")]
    assert [c["check"].split(" (")[0] for c in shipped] == ["top-1 drop", "worst class top-1 drop"]
    assert report["pipeline"]["verdict"] == "met"
    assert "rolled back (worst class top-1 drop" in (result.out / "pipeline.html").read_text()

    # killed after the harsh attempt: the baseline's block is read back, the fallback re-judged
    shutil.rmtree(result.out / "stages" / "01-prune" / "attempt-1")
    (result.out / "stages" / "01-prune" / "stage.json").unlink()
    judged: list[str] = []
    evaluate = RobustnessSuite.evaluate
    monkeypatch.setattr(RobustnessSuite, "evaluate", lambda self, session, **kw: (
        judged.append(session.name), evaluate(self, session, **kw))[1])
    again = run_recipe(path, resume=True)
    assert len(judged) == 1                                  # the fallback only
    assert [(a["verdict"], a["robustness"]["checks"]) for a in again.pipeline["attempts"]] == [
        (a["verdict"], a["robustness"]["checks"]) for a in result.pipeline["attempts"]]


def test_without_limits_the_stage_is_kept_and_nothing_is_measured(write_recipe, one_thread,
                                                                  monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a recipe without robustness limits built a RobustnessSuite")

    monkeypatch.setattr(robustness_guard, "RobustnessSuite", refuse)
    result = run_recipe(write_recipe([HARSH_PRUNE], budget={"max_drop": 1.0}))
    [harsh] = result.pipeline["attempts"]
    assert harsh["verdict"] == "accepted" and harsh["val_drop"] > 0.3
    assert "robustness" not in harsh and "robustness" not in result.pipeline["stages"][0]
    assert [c["check"] for c in harsh["checks"]] == ["top-1 drop (val, guard)"]
    assert not (result.out / "stages" / "00-baseline" / "robustness.json").exists()
    assert not any("(val, guard)" in c["check"] and "top-1" not in c["check"]
                   for c in result.pipeline["checks"])
