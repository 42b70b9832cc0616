"""The CLI through typer's runner, error paths first: one line, exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import torchslim
from torchslim.cli import app
from torchslim.train import save_checkpoint
from torchslim.zoo import build_model

runner = CliRunner()


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "ck" / "resnet8.safetensors", build_model("resnet8", width=8),
                           dataset="fashion-mnist")


def test_missing_dataset(tmp_path: Path, one_line_error) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["demo", "--quick", "--data", str(tmp_path / "empty"),
                                 "--out", str(tmp_path / "out")])
    one_line_error(result, "apt-get install", "TORCHSLIM_DATA")


def test_corrupt_idx_file(fake_fashion: Path, checkpoint: Path, one_line_error) -> None:
    (fake_fashion / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    result = runner.invoke(app, ["evaluate", str(checkpoint), "--data", str(fake_fashion)])
    one_line_error(result, "t10k-images-idx3-ubyte.gz")


def test_checkpoint_of_another_architecture(fake_fashion: Path, checkpoint: Path,
                                            one_line_error) -> None:
    result = runner.invoke(app, ["evaluate", str(checkpoint), "--model", "resnet14",
                                 "--data", str(fake_fashion)])
    one_line_error(result, "does not fit")


def test_unknown_model_name(fake_fashion: Path, tmp_path: Path, one_line_error) -> None:
    result = runner.invoke(app, ["train", "--model", "resnet7", "--data", str(fake_fashion),
                                 "--out", str(tmp_path / "t")])
    one_line_error(result, "resnet7", "resnet20")


def test_unreadable_onnx_file(fake_fashion: Path, tmp_path: Path, one_line_error) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"this is not an onnx model")
    result = runner.invoke(app, ["evaluate", str(bad), "--data", str(fake_fashion)])
    one_line_error(result, "model.onnx")


def test_bad_batch_sizes(fake_fashion: Path, checkpoint: Path, one_line_error) -> None:
    result = runner.invoke(app, ["evaluate", str(checkpoint), "--batch-sizes", "1,x",
                                 "--data", str(fake_fashion)])
    one_line_error(result, "--batch-sizes")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["--debug", "demo", "--quick", "--data", str(tmp_path / "empty")])
    assert result.exit_code != 0 and result.exception is not None
    assert type(result.exception).__name__ == "DataNotFoundError"


def test_real_process_exit_code_and_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "torchslim.cli", "evaluate",
                           str(tmp_path / "nothing.onnx")], capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "TORCHSLIM_DATA": str(tmp_path)})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def test_train_then_evaluate_against_a_reference(fake_fashion: Path, tmp_path: Path) -> None:
    out = tmp_path / "t"
    result = runner.invoke(app, ["train", "--model", "resnet8", "--width", "8", "--epochs", "1",
                                 "--data", str(fake_fashion), "--out", str(out)])
    assert result.exit_code == 0, result.output
    ckpt = out / "resnet8.safetensors"
    assert ckpt.is_file() and json.loads(ckpt.with_suffix(".json").read_text())["dataset"]
    result = runner.invoke(app, ["evaluate", str(ckpt), "--data", str(fake_fashion),
                                 "--reference", str(ckpt), "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["candidates"][1]["agreement"] == 1.0


@pytest.mark.parametrize("args, needles", [
    (["--observer", "kl-magic"], ("kl-magic", "entropy")),
    (["--bits", "12"], ("bits=12",)),
    (["--runtime", "tensorrt"], ("tensorrt", "onnxruntime")),
    (["--method", "awq"], ("awq", "ptq")),
    (["--observer", "percentile", "--percentile", "101"], ("percentile=101", "(0, 100]")),
    (["--percentile", "99.9"], ("activation_observer='percentile'", "'minmax'")),
])
def test_quantize_rejects_bad_options(checkpoint: Path, fake_fashion: Path, args: list[str],
                                      needles: tuple[str, ...], one_line_error) -> None:
    result = runner.invoke(app, ["quantize", str(checkpoint), "--data", str(fake_fashion), *args])
    one_line_error(result, *needles)


def test_quantize_flags_reach_the_config(checkpoint: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The run itself is replaced: this checks what the flags build, in a second."""
    import torchslim.pipeline.quantize as job_module
    import torchslim.report

    jobs = []
    monkeypatch.setattr(job_module, "run_quantize", lambda job: jobs.append(job) or {
        "results": [], "artifact": tmp_path / "a.onnx", "report": {"html": tmp_path / "r.html"}})
    monkeypatch.setattr(torchslim.report, "print_table", lambda *a, **k: None)
    result = runner.invoke(app, ["quantize", str(checkpoint), "--observer", "percentile",
                                 "--percentile", "99.9", "--bits", "4", "--calib-batches", "3"])
    assert result.exit_code == 0, result.output
    plan = jobs[0].plan
    assert (plan.method, plan.calib_batches, plan.bits) == ("ptq", 3, 4)
    assert plan.config.activation_observer_kwargs == {"percentile": 99.9}


@pytest.mark.slow
@pytest.mark.parametrize("method, precision", [("ptq", "int8"), ("dynamic", "int8"),
                                               ("weight-only", "w8")])
def test_quantize_writes_an_int8_artifact_and_report(checkpoint: Path, fake_fashion: Path,
                                                     tmp_path: Path, method: str,
                                                     precision: str) -> None:
    out = tmp_path / "q"
    result = runner.invoke(app, ["quantize", str(checkpoint), "--data", str(fake_fashion),
                                 "--method", method, "--calib-batches", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    int8 = report["candidates"][-1]
    assert (int8["runtime"], int8["precision"]) == ("onnxruntime", precision)
    assert int8["extra"]["fake_quant_agreement"] >= 0.95
    assert int8["name"].endswith("-onnxruntime") and method in int8["name"]


@pytest.mark.slow
def test_quantize_report_carries_the_sensitivity_table(checkpoint: Path, fake_fashion: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "qs"
    result = runner.invoke(app, ["quantize", str(checkpoint), "--data", str(fake_fashion),
                                 "--calib-batches", "2", "--sensitivity", "--out", str(out)])
    assert result.exit_code == 0, result.output
    layers = json.loads((out / "report.json").read_text())["sensitivity"]["layers"]
    html = (out / "report.html").read_text()
    assert "Per-layer quantization sensitivity" in html and layers[0]["name"] in html


def test_sensitivity_ranks_layers(checkpoint: Path, fake_fashion: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from torchslim._commands._app import out_console

    monkeypatch.setattr(out_console, "_width", 40)   # a narrow terminal (CI's is 80 wide)
    out = tmp_path / ("a-long-directory-name-" * 3) / "s"
    result = runner.invoke(app, ["sensitivity", str(checkpoint), "--data", str(fake_fashion),
                                 "--batches", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"json: {out / 'sensitivity.json'}" in result.stdout   # the path is never broken
    layers = json.loads((out / "sensitivity.json").read_text())["layers"]
    assert len(layers) >= 8 and {"name", "metric_drop", "sqnr_db", "params"} <= set(layers[0])
    drops = [r["metric_drop"] for r in layers]
    assert drops == sorted(drops, reverse=True)


@pytest.mark.parametrize("args, needles", [
    (["--target-macs", "1.5"], ("target_macs=1.5", "fraction to keep")),
    (["--importance", "hessian"], ("hessian", "taylor")),
    (["--unstructured", "--pattern", "2-4"], ("2-4", "2:4")),
    (["--protect", "stem"], ("'stem'",)),
    (["--remove-blocks", "layer1.1"], ("layer1.1", "did you mean layer1.0")),
    (["--remove-blocks", "3"], ("blocks=3", "only 1 removable")),
])
def test_prune_rejects_bad_options(checkpoint: Path, fake_fashion: Path, args: list[str],
                                   needles: tuple[str, ...], one_line_error) -> None:
    result = runner.invoke(app, ["prune", str(checkpoint), "--data", str(fake_fashion),
                                 "--finetune-epochs", "0", *args])
    one_line_error(result, *needles)


def test_prune_removes_a_residual_block(fake_fashion: Path, tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "ck" / "resnet8.safetensors", build_model("resnet8", width=16),
                           dataset="fashion-mnist")
    out = tmp_path / "p"
    result = runner.invoke(app, ["prune", str(ckpt), "--data", str(fake_fashion), "--structured",
                                 "--target-macs", "0.5", "--remove-blocks", "1",
                                 "--finetune-epochs", "0", "--batch-sizes", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    pruning = json.loads((out / "report.json").read_text())["pruning"]
    assert pruning["removed_blocks"] == ["layer1.0"]   # resnet8's one block with an identity shortcut
    assert abs(pruning["macs_after"] / pruning["macs_before"] - 0.5) <= 0.03 * 0.5
    pruned = torchslim.load(out / "resnet8-pruned.safetensors")
    assert isinstance(pruned.layer1[0], torchslim.prune.RemovedBlock)


@pytest.mark.slow
def test_prune_writes_a_smaller_checkpoint_and_a_report(fake_fashion: Path, tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "ck" / "resnet8.safetensors", build_model("resnet8", width=16),
                           dataset="fashion-mnist")
    out = tmp_path / "p"
    result = runner.invoke(app, ["prune", str(ckpt), "--data", str(fake_fashion), "--structured",
                                 "--target-macs", "0.5", "--steps", "2", "--finetune-epochs", "1",
                                 "--batch-sizes", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    pruning = report["pruning"]
    assert abs(pruning["macs_after"] / pruning["macs_before"] - 0.5) <= 0.03 * 0.5
    assert len(pruning["steps"]) == 2
    assert pruning["layers"]["layer3.0.conv1"]["out"][1] < 64
    assert [c["name"] for c in report["candidates"]][-1] == "resnet8-pruned-onnxruntime"
    assert report["candidates"][-1]["macs"] == pruning["macs_after"]
    pruned = torchslim.load(out / "resnet8-pruned.safetensors")
    assert pruned.layer3[0].conv1.out_channels == pruning["layers"]["layer3.0.conv1"]["out"][1]
    assert "Pruning: channels and sparsity per layer" in (out / "report.html").read_text()
