import base64
import io
import json
import re

import numpy as np
import pytest
from rich.console import Console

from torchslim.errors import ConfigError
from torchslim.evaluation import EvalResult
from torchslim.report import load_report, print_table, write_report
from torchslim.report.table import human_bytes, human_count, summary_table

MACHINE = {"cpu": "Test CPU", "threads": 2, "cores": 2, "platform": "Linux-test"}
DATASET = {"name": "fashion-mnist", "split": "test", "n": 100}
CLASSES = ["top", "trouser", "pullover"]


def result(name, runtime, precision, top1, p50, per_class, nbytes, agreement=None):
    confusion = [[30, 3, 1], [2, 28, 3], [4, 2, 27]]
    return EvalResult(
        name=name, runtime=runtime, precision=precision, threads=2, top1=top1, top5=1.0,
        per_class=per_class, worst_class=int(np.argmin(per_class)), confusion=confusion,
        agreement=agreement, cosine=None,
        latency_ms={"1": {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.3, "mean": p50},
                    "32": {"p50": p50 * 12, "p90": p50 * 13, "p99": p50 * 15, "mean": p50 * 12}},
        items_per_s={"1": 1000 / p50, "32": 32000 / (p50 * 12)}, bytes=nbytes, params=270000,
        nonzero_params=270000, macs=41000000, peak_mem_bytes=52000000,
        artifact=None if runtime == "torch" else f"{name}.onnx", n=100, machine=MACHINE)


@pytest.fixture
def results():
    base = result("teacher-fp32-torch", "torch", "fp32", 0.85, 2.0, [0.88, 0.85, 0.82],
                  1085000, agreement=1.0)
    ort = result("teacher-fp32-onnxruntime", "onnxruntime", "fp32", 0.85, 1.0,
                 [0.88, 0.85, 0.82], 1080000, agreement=1.0)
    int8 = result("teacher-int8-onnxruntime", "onnxruntime", "int8", 0.84, 0.5,
                  [0.90, 0.80, 0.82], 290000, agreement=0.97)
    return base, [ort, int8]


@pytest.fixture
def written(tmp_path, results):
    base, others = results
    paths = write_report(tmp_path / "out", baseline=base, candidates=others, dataset=DATASET,
                         class_names=CLASSES, extra={"verdict": "pass"})
    return paths


def test_json_follows_contract(written):
    report = json.loads(written["json"].read_text())
    assert {"torchslim_version", "machine", "dataset", "baseline", "candidates"} <= set(report)
    assert report["baseline"] == "teacher-fp32-torch"
    assert [c["name"] for c in report["candidates"]] == [
        "teacher-fp32-torch", "teacher-fp32-onnxruntime", "teacher-int8-onnxruntime"]
    assert report["dataset"] == DATASET and report["verdict"] == "pass"
    assert report["candidates"][2]["latency_ms"]["32"]["p50"] == 6.0
    assert load_report(written["json"]) == report


def test_html_embeds_four_png_plots_and_no_urls(written):
    html = written["html"].read_text()
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) >= 4
    assert all(base64.b64decode(img).startswith(b"\x89PNG") for img in images)
    assert "http://" not in html and "https://" not in html
    assert "teacher-int8-onnxruntime" in html and "pullover" in html
    assert "<script" not in html


def test_table_speedup_and_delta(results):
    base, others = results
    headers, rows = summary_table([base, *others])
    assert rows[0][0] == "teacher-fp32-torch"
    col = headers.index("b32 speed-up")
    assert [r[col] for r in rows] == ["1.00×", "2.00×", "4.00×"]
    assert rows[2][headers.index("Δ top-1 (pts)")] == "-1.00"
    assert rows[2][headers.index("size")] == "290.0 KB"


def test_no_speedup_across_machines(results):
    base, others = results
    others[0].machine = {**MACHINE, "cpu": "Other CPU"}
    headers, rows = summary_table([base, *others])
    assert rows[1][headers.index("b1 speed-up")] == "—"


def test_print_table_names_candidates(written):
    console = Console(file=io.StringIO(), width=200)
    print_table(load_report(written["json"]), console=console)
    text = console.file.getvalue()
    for name in ("teacher-fp32-torch", "teacher-fp32-onnxruntime", "teacher-int8-onnxruntime"):
        assert name in text


def test_duplicate_candidate_names_refused(tmp_path, results):
    base, others = results
    with pytest.raises(ConfigError, match="named"):
        write_report(tmp_path, baseline=base, candidates=[others[0], others[0]],
                     dataset=DATASET)


def test_baseline_only_report(tmp_path, results):
    base, _ = results
    paths = write_report(tmp_path, baseline=base, candidates=[base], dataset=DATASET)
    assert len(json.loads(paths["json"].read_text())["candidates"]) == 1


def test_load_report_errors_name_the_path(tmp_path):
    bad = tmp_path / "report.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="report.json"):
        load_report(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_report(tmp_path / "missing.json")


def test_human_units():
    assert human_bytes(1085000) == "1.1 MB" and human_bytes(512) == "512 B"
    assert human_count(41_000_000) == "41.0M" and human_count(None) == "—"


def test_print_table_narrow_console_has_one_column_per_candidate(written):
    console = Console(file=io.StringIO(), width=80)
    print_table(load_report(written["json"]), console=console)
    lines = console.file.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any(line.startswith("│ b32 speed-up") and "4.00×" in line for line in lines)


@pytest.mark.parametrize("width", [80, 200])
def test_the_title_says_which_speed_up_the_table_shows(results, width):
    """Separately timed p50s give a ratio of p50s; an interleaved loop's ratios say so."""
    base, others = results

    def title(candidates) -> str:
        console = Console(file=io.StringIO(), width=width)
        print_table(candidates, console=console)
        return " ".join(console.file.getvalue().split())   # a title may wrap

    assert "baseline p50 / candidate p50" in title([base, *others])
    others[1].extra["speedup_interleaved"] = {"vs": base.name, "rounds": 3,
                                              "batches": {"32": {"speedup": 3.5, "low": 3.0,
                                                                 "high": 3.9}}}
    mixed = title([base, *others])
    assert "one interleaved loop, else baseline p50 / candidate p50" in mixed
    assert "3.50×" in mixed
    for c in (base, others[0]):
        c.extra["speedup_interleaved"] = {"vs": base.name, "rounds": 3, "batches": {}}
    text = title([base, *others])
    assert "one interleaved loop" in text and "candidate p50" not in text
