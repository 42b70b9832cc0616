"""The runner: per-stage logs and checkpoints, the accuracy guard, resume, the verdict."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import onnx
import pytest

from torchslim.errors import ConfigError, OutputLockedError
from torchslim.pipeline.recipe import load_recipe
from torchslim.pipeline.runner import run_recipe
from torchslim.train import load_checkpoint

HARSH_PRUNE = {"kind": "prune", "target_macs": 0.05, "round_to": 1, "finetune_epochs": 0,
               "fallbacks": [{"target_macs": 0.97}]}
PTQ = {"kind": "quantize", "method": "ptq", "calib_batches": 2}


def _metrics(result) -> dict:
    """What must not change between an uninterrupted and a resumed run."""
    return {"attempts": [(a["stage"], a["attempt"], a["verdict"], a["metrics"]["val_top1"])
                         for a in result.pipeline["attempts"]],
            "test": [(r.name, r.top1, r.agreement) for r in result.results],
            "verdict": result.verdict}


def test_harsh_pruning_is_rolled_back_and_its_fallback_accepted(write_recipe, one_thread) -> None:
    path = write_recipe([HARSH_PRUNE, PTQ, {"kind": "export"}])
    result = run_recipe(path)
    attempts = result.pipeline["attempts"]
    assert [(a["stage"], a["attempt"], a["verdict"]) for a in attempts] == [
        ("01-prune", 0, "rolled back"), ("01-prune", 1, "accepted"),
        ("02-quantize", 0, "accepted"), ("03-export", 0, "accepted")]
    harsh, mild = attempts[0], attempts[1]
    assert harsh["val_drop"] > 0.05 >= mild["val_drop"]       # the budget is 5 points
    assert harsh["record"]["macs_after"] / harsh["record"]["macs_before"] < 0.1
    assert mild["options"] == {"target_macs": 0.97}
    assert result.verdict == "met"
    stage = json.loads((result.out / "stages" / "01-prune" / "stage.json").read_text())
    assert stage["status"] == "done" and stage["accepted"] == 1
    # the accepted pruned checkpoint is the state quantize started from
    pruned, _ = load_checkpoint(result.out / mild["checkpoint"])
    from torchslim.evaluation.model_stats import count_macs
    assert count_macs(pruned, (1, 8, 8)) == mild["record"]["macs_after"]

    report = json.loads((result.out / "report.json").read_text())
    names = [c["name"] for c in report["candidates"]]
    assert names == ["baseline-fp32-torch", "01-prune-fp32-onnxruntime", "final-int8-onnxruntime"]
    final = report["candidates"][-1]
    assert final["precision"] == "int8" and final["artifact"] == str(result.artifact)
    assert result.artifact == result.out / "model.onnx"
    onnx.checker.check_model(onnx.load(result.artifact))
    pipeline = report["pipeline"]
    assert pipeline["verdict"] == "met" and len(pipeline["attempts"]) == 4
    assert pipeline["speedup"]["batch"] == 32 and pipeline["speedup"]["speedup"] > 0
    assert [c["ok"] for c in pipeline["checks"]] == [True, True]
    assert json.loads((result.out / "pipeline.json").read_text())["verdict"] == "met"
    assert (result.out / "pipeline.html").read_text().count("data:image/png;base64,") == 1


def test_nothing_meets_the_budget_gives_not_met_and_still_ships_the_best_valid(
        write_recipe, one_thread) -> None:
    harsh = {**HARSH_PRUNE, "fallbacks": [{"target_macs": 0.1}], "on_fail": "stop"}
    result = run_recipe(write_recipe([{"kind": "finetune", "epochs": 1, "lr": 0.001}, harsh, PTQ],
                                     budget={"max_drop": 0.05, "min_speedup": 1000.0}))
    assert result.verdict == "not met"
    verdicts = [(a["stage"], a["verdict"]) for a in result.pipeline["attempts"]]
    assert verdicts == [("01-finetune", "accepted"), ("02-prune", "rolled back"),
                        ("02-prune", "rolled back")]                  # quantize never ran
    stages = {s["stage"]: s["status"] for s in result.pipeline["stages"]}
    assert stages == {"00-baseline": "start", "01-finetune": "done", "02-prune": "stopped"}
    # the shipped artifact is the fine-tuned model: the last state within the budget
    assert result.artifact.read_bytes() == (
        result.out / "stages" / "01-finetune" / "attempt-0" / "model.onnx").read_bytes()
    checks = {c["check"].split(" vs ")[0]: c["ok"] for c in result.pipeline["checks"]}
    assert checks["speed-up at batch 32"] is False and checks["top-1 drop (val, guard)"] is True


def test_skipped_stage_keeps_the_previous_state(write_recipe, one_thread) -> None:
    harsh = {**HARSH_PRUNE, "fallbacks": []}
    result = run_recipe(write_recipe([harsh, PTQ]))
    assert [s["status"] for s in result.pipeline["stages"]] == ["start", "skipped", "done"]
    # quantize started from the baseline: same parameter count
    base, final = result.results[0], result.results[-1]
    assert final.params == base.params and final.name == "final-int8-onnxruntime"


def test_resume_reuses_finished_attempts_and_reruns_the_interrupted_one(
        write_recipe, one_thread) -> None:
    path = write_recipe([{"kind": "finetune", "epochs": 1}, HARSH_PRUNE, PTQ])
    first = run_recipe(path)
    out = first.out
    # pretend the run died during quantize: its attempt left half its files, no record
    qdir = out / "stages" / "03-quantize"
    (qdir / "stage.json").unlink()
    (qdir / "attempt-0" / "attempt.json").unlink()
    (qdir / "attempt-0" / "model.onnx").write_bytes(b"half a file")
    (out / "report.json").unlink()
    finetune_onnx = (out / "stages" / "01-finetune" / "attempt-0" / "model.onnx").stat().st_mtime_ns
    resumed = run_recipe(path, resume=True)
    assert _metrics(resumed) == _metrics(first)
    assert (out / "stages" / "01-finetune" / "attempt-0" / "model.onnx").stat().st_mtime_ns \
        == finetune_onnx                                               # not redone
    onnx.checker.check_model(onnx.load(qdir / "attempt-0" / "model.onnx"))


def test_an_existing_run_is_not_overwritten_silently(write_recipe, one_thread) -> None:
    path = write_recipe([PTQ])
    run_recipe(path)
    with pytest.raises(ConfigError, match="already holds a run.*--resume"):
        run_recipe(path)
    changed = path.read_text().replace("calib_batches: 2", "calib_batches: 3")
    path.write_text(changed)
    with pytest.raises(ConfigError, match="recipe changed since the run"):
        run_recipe(path, resume=True)
    again = run_recipe(path, overwrite=True)
    assert again.verdict == "met"


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("stages, top, needle", [
    ([{**PTQ, "name": "{victim}"}], {}, "stages[0].name"),             # absolute
    ([{**PTQ, "name": "../../victim"}], {}, "stages[0].name"),
    ([PTQ, {"kind": "export", "artifact": "../victim/x.onnx"}], {}, "stages[1].artifact"),
    ([PTQ, {"kind": "export", "artifact": "{victim}/x.onnx"}], {}, "stages[1].artifact"),
    ([PTQ], {"name": "../victim"}, "name"),
])
def test_recipe_names_cannot_point_outside_the_output(write_recipe, tmp_path: Path, stages,
                                                      top, needle) -> None:
    """An absolute stage name, ``..`` or an absolute artifact path is refused when the
    recipe is read, before anything runs; the directory they name is left as it was."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    stages = json.loads(json.dumps(stages).replace("{victim}", str(victim)))
    path = write_recipe(stages)
    if top:   # the recipe's own name: written by hand (write_recipe names the file by it)
        path.write_text(path.read_text().replace("name: tiny", f"name: {top['name']}"))
    with pytest.raises(ConfigError, match=rf"{path.name}:\d+: {re.escape(needle)}: .*plain name"):
        run_recipe(path)
    assert _tree(victim) == {"keep.txt": b"mine"}
    assert not (tmp_path / "runs").exists()


def test_a_symlink_in_the_output_cannot_redirect_writes_or_deletes(write_recipe,
                                                                   tmp_path: Path) -> None:
    """``stages`` made a symlink to another directory (by a hostile or careless hand): the
    run refuses to write through it, and --overwrite refuses to delete through it."""
    victim = tmp_path / "victim"
    (victim / "01-quantize").mkdir(parents=True)
    (victim / "01-quantize" / "stage.json").write_text("{}")
    (victim / "keep.txt").write_text("mine")
    before = _tree(victim)
    path = write_recipe([PTQ])
    out = tmp_path / "runs" / "tiny"
    out.mkdir(parents=True)
    (out / "stages").symlink_to(victim)
    with pytest.raises(ConfigError, match="outside the output directory .* through the "
                                          "symlink .*stages; remove it"):
        run_recipe(path)
    assert _tree(victim) == before
    (out / "recipe.json").write_text("{}")          # an earlier run, to be overwritten
    with pytest.raises(ConfigError, match="outside the output directory .* through the symlink"):
        run_recipe(path, overwrite=True)
    assert _tree(victim) == before and (out / "stages").is_symlink()


def test_a_tampered_stage_log_cannot_point_a_resume_outside(write_recipe, tmp_path: Path,
                                                            one_thread) -> None:
    path = write_recipe([PTQ])
    first = run_recipe(path)
    stage = first.out / "stages" / "01-quantize" / "stage.json"
    entry = json.loads(stage.read_text())
    entry["attempts"][0]["checkpoint"] = str(tmp_path / "victim.safetensors")
    stage.write_text(json.dumps(entry))
    with pytest.raises(ConfigError, match="outside the output directory"):
        run_recipe(path, resume=True)


def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_it(
        write_recipe, tmp_path: Path) -> None:
    import subprocess
    import sys
    path = write_recipe([PTQ])
    out = tmp_path / "runs" / "tiny"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom torchslim import _io\n"
         "with _io.lock_dir(sys.argv[1], command='torchslim run'):\n"
         "    print('held', flush=True)\n    time.sleep(60)\n", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError, match=rf"output {out} is in use by torchslim run"):
            run_recipe(path)
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "recipe.json").exists()


def test_distill_stage_trains_a_scaled_student(write_recipe, tmp_path: Path, one_thread) -> None:
    path = write_recipe([{"kind": "distill", "width_mult": 0.5, "epochs": 1, "lr": 0.05}],
                        budget={"max_drop": 1.0})
    result = run_recipe(path)
    attempt = result.pipeline["attempts"][0]
    assert attempt["verdict"] == "accepted" and len(attempt["record"]["history"]) == 1
    student, meta = load_checkpoint(result.out / attempt["checkpoint"])
    assert meta["architecture"]["kwargs"]["width"] == 4                # resnet8 w8 -> w4
    assert result.results[-1].params < result.results[0].params / 3


def test_entry_point_data_and_model(tmp_path: Path, write_recipe, one_thread, monkeypatch) -> None:
    (tmp_path / "userpkg").mkdir()
    (tmp_path / "userpkg" / "__init__.py").write_text(
        "from torchslim import load_data, build_model\n"
        "def loaders(limit=300):\n"
        "    b = load_data('digits', batch_size=64)\n"
        "    return {'train': b.train, 'val': b.val, 'test': b.test}\n"
        "def net(width=4):\n"
        "    import torch\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, width * 8),\n"
        "                               torch.nn.ReLU(), torch.nn.Linear(width * 8, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write_recipe([{"kind": "finetune", "epochs": 2, "lr": 0.05}, PTQ],
                        model="userpkg:net", model_args={"width": 4}, data="userpkg:loaders",
                        budget={"max_drop": 1.0})
    result = run_recipe(path)
    assert result.verdict == "met"
    assert result.results[0].n == 360 and result.pipeline["stages"][1]["status"] == "done"
    # the fine-tuned user model (no zoo spec) was rebuilt by its entry point on reload
    assert result.pipeline["attempts"][0]["metrics"]["val_top1"] > 0.5
    assert load_recipe(path).data == "userpkg:loaders"
