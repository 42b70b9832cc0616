"""bench/transformer_peers.py --quick runs every row on a tiny random BERT and writes the
JSON the README table is made from (its structure, not its speeds, is checked here)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "transformer_peers.py"
ORT_ROWS = ("fp32", "torchslim-dynamic-int8", "torchslim-static-w8a8-smoothquant",
            "torchslim-int4-packed", "torchslim-head-pruned-kd", "ort-dynamic",
            "ort-dynamic-per-channel")
TORCH_ROWS = ("fp32", "torch-ao-dynamic")
BAR_STATUSES = {"met", "not met", "not measured"}


def _head_pruning_exists() -> bool:
    return all(importlib.util.find_spec(m) is not None
               for m in ("torchslim.prune.heads", "torchslim.distillation.embedding"))


@pytest.mark.slow
def test_quick_bench_runs_every_row_and_writes_the_json(tmp_path: Path) -> None:
    out = tmp_path / "transformer_peers.json"
    extra = tmp_path / "more.txt"  # more plain text for the distillation
    extra.write_text("The garden was full of roses.\n\nA train whistled in the distance.\n"
                     "She baked bread for the whole street.\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--threads", "1",
                           "--out", str(out), "--workdir", str(tmp_path / "work"),
                           "--kd-text", str(extra)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # nothing but what it was told to write (ONNX Runtime's shape inference leaves
    # temporary files in the current directory when it fails)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["more.txt", "transformer_peers.json", "work"]
    doc = json.loads(out.read_text())
    assert doc["bench"] == "transformer_peers" and doc["machine"]["threads"] == 1
    assert doc["settings"]["quick"] is True and doc["settings"]["threads"] == 1
    assert doc["settings"]["kd_texts"]["count"] == 32 + 3  # quick: 32 training sentences
    rows = {(r["method"], r["runtime"]): r for r in doc["rows"]}
    assert set(rows) == {(m, "onnxruntime") for m in ORT_ROWS} | {(m, "torch") for m in TORCH_ROWS}
    assert len(doc["rows"]) == len(rows)  # one row per (method, runtime)
    for key, r in rows.items():
        for k in ("model", "method", "runtime", "top1", "agreement", "p50_ms_b1", "p50_ms_b32",
                  "speedup_b32", "bytes", "seconds", "error"):
            assert k in r, (key, k)
        if key == ("torchslim-head-pruned-kd", "onnxruntime") and not _head_pruning_exists():
            assert r["error"].startswith("skipped: "), r["error"]
            continue
        assert r["error"] is None, (key, r["error"])
        assert 0.0 < r["cosine"] <= 1.0 and 0.0 < r["cosine_min"] <= r["cosine"], key
        assert 0.0 <= r["retrieval"] <= 1.0 and 0.0 <= r["agreement"] <= 1.0, key
        assert r["bytes"] > 0 and r["p50_ms_b1"] > 0 and r["p50_ms_b32"] > 0, key
        assert r["speedup_b1"] > 0 and r["speedup_b32"] > 0, key
        assert r["speedup_range"]["32"]["rounds"] == doc["settings"]["rounds"], key
    base = rows[("fp32", "onnxruntime")]
    assert base["cosine"] == pytest.approx(1.0, abs=1e-4)
    assert base["speedup_b1"] == base["speedup_b32"] == 1.0
    assert base["macs_attention_mlp"] > 0
    # integer files are smaller than the float one
    for m in ("torchslim-dynamic-int8", "torchslim-int4-packed", "ort-dynamic"):
        assert rows[(m, "onnxruntime")]["bytes"] < base["bytes"], m
    assert rows[("torchslim-static-w8a8-smoothquant", "onnxruntime")]["smoothed_groups"] > 0
    bars = doc["bars"]
    assert len(bars) == 9 and {b["status"] for b in bars} <= BAR_STATUSES
    measured = {b["bar"]: b for b in bars if b["status"] != "not measured"}
    # every bar that needs only the quantized rows is judged
    assert sum(not b["bar"].startswith("head-pruned") for b in measured.values()) == 5
    for b in measured.values():
        assert b["value"] is not None and b["threshold"] is not None, b
    timing = doc["settings"]["timing"]
    assert len(set(timing["1"]["sequence_lengths"])) > 1  # dynamic sequence length
