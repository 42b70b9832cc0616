"""SIGKILL in the middle of a stage, then `torchslim run --resume`: the same final metrics
as an uninterrupted run with the same seed, and every stage output readable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from torchslim.train import load_checkpoint

STAGES = [{"kind": "finetune", "epochs": 2, "lr": 0.02},
          {"kind": "prune", "target_macs": 0.7, "round_to": 2, "finetune_epochs": 3,
           "fallbacks": [{"target_macs": 0.9}]},
          {"kind": "quantize", "method": "ptq", "calib_batches": 2},
          {"kind": "export"}]


def _cli(recipe: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "TORCHSLIM_PROGRESS": "0"}
    main = "import sys; from torchslim.cli import main; sys.argv[0] = 'torchslim'; main()"
    return subprocess.Popen([sys.executable, "-c", main, "--quiet", "run", str(recipe),
                             "--output", str(out), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished(proc: subprocess.Popen) -> None:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout + stderr


def _figures(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    return {"candidates": [(c["name"], c["top1"], c["agreement"], c["per_class"])
                           for c in report["candidates"]],
            "attempts": [(a["stage"], a["attempt"], a["verdict"], a["metrics"]["val_top1"],
                          a["metrics"]["params"]) for a in report["pipeline"]["attempts"]],
            "verdict": report["pipeline"]["verdict"]}


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume_matches_an_uninterrupted_run(
        write_recipe, tmp_path: Path) -> None:
    recipe = write_recipe(STAGES, name="killed")
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    _finished(_cli(recipe, reference))

    proc = _cli(recipe, killed)
    started = killed / "stages" / "02-prune" / "attempt-0"
    deadline = time.monotonic() + 240
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "stages" / "02-prune" / "stage.json").exists()   # killed mid-stage
    assert (killed / "stages" / "01-finetune" / "stage.json").exists()
    assert not (killed / "report.json").exists()

    _finished(_cli(recipe, killed, "--resume"))
    assert _figures(killed) == _figures(reference)
    for attempt in sorted((killed / "stages").glob("*/attempt-*")):
        record = json.loads((attempt / "attempt.json").read_text())
        onnx.checker.check_model(onnx.load(killed / record["artifact"]))
        load_checkpoint(killed / record["checkpoint"])
    assert not list(killed.rglob("*.tmp"))                          # no half-written files
