"""A finished recipe run published as a chain (issue 16): the lineage of the shipped model
goes back to the baseline with the right relations, verify passes, export -> import keeps
the chain, rolled-back stages and attempts stay out, unfinished runs are refused."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import onnx
import pytest
import torch
import yaml
from typer.testing import CliRunner

from torchslim.artifacts import ModelRegistry, read_manifest
from torchslim.cli import app
from torchslim.errors import ConfigError
from torchslim.pipeline.publish import chain_of, publish_run
from torchslim.pipeline.runner import run_recipe
from torchslim.train import save_checkpoint

SKIPPED_PRUNE = {"kind": "prune", "target_macs": 0.05, "round_to": 1, "finetune_epochs": 0}
# the first attempt breaks the budget and is rolled back; the fallback is kept
KEPT_PRUNE = {**SKIPPED_PRUNE, "fallbacks": [{"target_macs": 0.97}]}
PTQ = {"kind": "quantize", "method": "ptq", "calib_batches": 2}
EXPORT = {"kind": "export", "artifact": "model-int8.onnx"}


@pytest.fixture(scope="module")
def finished_run(digits_model, tmp_path_factory):
    """One run shared by the tests of this module (they only read it, or copy it first):
    conftest's write_recipe is per test, and a run takes most of this file's time."""
    root = tmp_path_factory.mktemp("publish")
    checkpoint = save_checkpoint(root / "resnet8.safetensors", digits_model[0], dataset="digits")
    target = {"threads": 1, "batch_sizes": [1, 32], "repeats": 2, "stage_repeats": 1,
              "timing_rounds": 2, "measure_memory": False}     # as conftest's TARGET
    recipe = {"name": "tiny", "model": str(checkpoint), "data": "digits",
              "stages": [SKIPPED_PRUNE, KEPT_PRUNE, PTQ, EXPORT], "budget": {"max_drop": 0.05},
              "target": target, "output": str(root / "run")}
    (root / "tiny.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    threads = torch.get_num_threads()
    try:
        result = run_recipe(root / "tiny.yaml")
    finally:
        torch.set_num_threads(threads)
    statuses = [(s["stage"], s["status"]) for s in result.pipeline["stages"]]
    assert statuses == [("00-baseline", "start"), ("01-prune", "skipped"),
                        ("02-prune", "done"), ("03-quantize", "done"), ("04-export", "done")]
    assert result.verdict == "met"
    return result


def test_the_chain_skips_rolled_back_stages_and_attempts(finished_run, caplog) -> None:
    out = finished_run.out
    with caplog.at_level(logging.INFO, logger="torchslim.pipeline.publish"):
        links = chain_of(out)
    assert [(link.stage, link.relation, link.role) for link in links] == [
        ("00-baseline", "trained", "recipe-stage"), ("02-prune", "pruned", "recipe-stage"),
        ("03-quantize", "quantized", "recipe-stage"), ("final", "exported", "recipe-final")]
    assert links[1].path == out / "stages" / "02-prune" / "attempt-1" / "model.onnx"
    assert links[-1].path == out / "model-int8.onnx" == finished_run.artifact
    assert "01-prune was skipped" in caplog.text and "not in the chain" in caplog.text


def test_lineage_of_the_shipped_model_goes_back_to_the_baseline(finished_run,
                                                                tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    pushed = publish_run(finished_run.out, "digits", registry=registry, aliases=["champion"])
    lineage = registry.lineage("digits@latest")
    assert [v.ref for v in lineage.chain] == [v.ref for v in reversed(pushed)]
    assert [e.relation for e in lineage.edges] == ["exported", "quantized", "pruned"]
    assert lineage.chain[-1].manifest.provenance.relation == "trained"
    assert lineage.unresolved_parent is None               # the baseline is the original
    assert registry.get("digits@champion").ref == pushed[-1].ref
    assert [v.manifest.role for v in pushed] == ["recipe-stage"] * 3 + ["recipe-final"]
    assert [v.manifest.precision for v in pushed] == ["fp32", "fp32", "int8", "int8"]
    # each manifest names its parent by the digest of the local file it was made from
    for child, parent in zip(pushed[1:], pushed):
        assert child.manifest.provenance.parent_digest == parent.source_digest
    # measured figures: the stage log's val top-1 on every link, test top-1 where measured
    log = finished_run.pipeline
    val = [m.top1 for v in pushed for m in v.manifest.metrics if m.dataset.split == "val"]
    assert val[0] == log["stages"][0]["metrics"]["val_top1"]        # the baseline's ONNX
    assert val[2] == val[3] == log["stages"][3]["metrics"]["val_top1"]
    final_test = [m.top1 for m in pushed[-1].manifest.metrics if m.dataset.split == "test"]
    assert final_test == [finished_run.results[-1].top1]
    # the edges compare validation top-1; the export edge changes nothing but metadata
    assert lineage.edges[0].top1_delta == 0.0 and lineage.edges[0].accuracy_on == "digits/val"
    assert lineage.edges[2].top1_delta == pytest.approx(val[1] - val[0], abs=1e-6)
    recipe = json.loads((finished_run.out / "recipe.json").read_text())["recipe"]
    assert all(v.manifest.provenance.recipe == recipe for v in pushed)
    assert len({v.manifest.provenance.recipe_hash for v in pushed}) == 1
    # the shipped file says where it came from
    props = {p.key: p.value for p in onnx.load(finished_run.artifact).metadata_props}
    assert props["torchslim.parent_digest"] == pushed[2].source_digest
    assert read_manifest(finished_run.artifact).role == "recipe-final"
    assert registry.verify().ok


def test_publishing_again_adds_nothing_and_export_import_keeps_the_chain(
        finished_run, tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    pushed = publish_run(finished_run.out, "digits", registry=registry)
    again = publish_run(finished_run.out, "digits", registry=registry)
    assert [v.ref for v in again] == [v.ref for v in pushed]
    assert len(registry.list_versions("digits")) == 4
    archive = registry.export("digits@latest", tmp_path / "digits.tar")
    other = ModelRegistry(tmp_path / "empty")
    other.import_archive(archive)
    assert other.lineage("digits@latest").lines() == registry.lineage("digits@latest").lines()
    assert [e.relation for e in other.lineage("digits@latest").edges] == [
        "exported", "quantized", "pruned"]
    assert other.verify().ok


def test_missing_or_unfinished_runs_are_refused(finished_run, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no finished recipe run .*torchslim run"):
        publish_run(tmp_path / "nowhere", "x", registry=tmp_path / "r")
    out = shutil.copytree(finished_run.out, tmp_path / "unfinished")
    log = out / "pipeline.json"
    data = json.loads(log.read_text())
    del data["verdict"]
    log.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="did not finish .*--resume"):
        publish_run(out, "x", registry=tmp_path / "r")
    assert not (tmp_path / "r" / "index.sqlite").exists()       # nothing was pushed


def test_run_publish_on_the_command_line(write_recipe, one_thread, tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    result = CliRunner().invoke(app, ["run", str(write_recipe([PTQ], name="cli")),
                                      "--publish", "digits-cli", "--registry", str(reg)])
    assert result.exit_code == 0, result.output
    assert "published 3 versions" in result.output
    for line in ("digits-cli@1.0.2", "<- exported from digits-cli@1.0.1",
                 "<- quantized from digits-cli@1.0.0"):
        assert line in result.output
    chain = ModelRegistry(reg).lineage("digits-cli@latest").to_dict()["chain"]
    assert chain == ["digits-cli@1.0.2", "digits-cli@1.0.1", "digits-cli@1.0.0"]
