"""`torchslim llm quantize / eval` on a tiny local model directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from torchslim.cli import app

runner = CliRunner()


def test_hub_name_isone_line_error(tmp_path: Path, one_line_error) -> None:
    result = runner.invoke(app, ["llm", "quantize", "HuggingFaceTB/SmolLM2-135M",
                                 "--method", "rtn", "--out", str(tmp_path / "q")])
    one_line_error(result, "local", "hub")


def test_unknown_method_isone_line_error(tiny_dir: Path, tmp_path: Path, one_line_error) -> None:
    result = runner.invoke(app, ["llm", "quantize", str(tiny_dir), "--method", "hqq",
                                 "--out", str(tmp_path / "q")])
    one_line_error(result, "hqq", "gptq")


def test_missing_text_file_isone_line_error(tiny_dir: Path, tmp_path: Path, one_line_error) -> None:
    result = runner.invoke(app, ["llm", "eval", str(tiny_dir), "--text", str(tmp_path / "no.txt")])
    one_line_error(result, "no.txt")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_quantize_then_eval(method: str, tiny_dir: Path, tmp_path: Path, words) -> None:  # type: ignore[no-untyped-def]
    calib = tmp_path / "calib.txt"
    calib.write_text(words(600, seed=1))
    text = tmp_path / "held_out.txt"
    text.write_text(words(300, seed=2))
    out = tmp_path / "q"
    result = runner.invoke(app, ["llm", "quantize", str(tiny_dir), "--method", method,
                                 "--bits", "4", "--group-size", "64", "--out", str(out),
                                 "--calib-text", str(calib), "--n-samples", "4",
                                 "--seq-len", "32", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert f"{method}-int4-g64" in result.stdout and (out / "model.safetensors").is_file()
    result = runner.invoke(app, ["llm", "eval", str(out), "--text", str(text), "--window", "64",
                                 "--stride", "32", "--threads", "1", "--decode"])
    assert result.exit_code == 0, result.output
    assert "perplexity" in result.stdout and "weight SQNR over 15 layers" in result.stdout
    assert "decode tokens/s" in result.stdout
