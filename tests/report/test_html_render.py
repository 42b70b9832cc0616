import shutil
import subprocess

import numpy as np
import pytest
from matplotlib import image as mpimg

from torchslim.evaluation import EvalResult
from torchslim.report import write_report

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot"]
MACHINE = {"cpu": "Intel(R) Xeon(R) Test", "threads": 2, "cores": 2, "platform": "Linux-x86_64"}


def _chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _run_headless(chromium: str, tmp_path, *args: str) -> str:
    """Chromium headless with this machine's closed network in mind; returns stdout."""
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False).stdout


def _result(name, runtime, precision, shift, speed, nbytes, seed):
    rng = np.random.default_rng(seed)
    per_class = np.clip(np.array([0.86, 0.98, 0.86, 0.91, 0.87, 0.98, 0.72, 0.96, 0.98, 0.96])
                        - shift * rng.random(10), 0, 1)
    confusion = np.diag((per_class * 1000).astype(int))
    confusion[6, 0] += 1000 - confusion[6, 6]
    for k in range(10):
        if k != 6:
            confusion[k, (k + 1) % 10] += 1000 - confusion[k, k]
    p50 = {"1": 1.2 / speed, "32": 20.0 / speed}
    return EvalResult(
        name=name, runtime=runtime, precision=precision, threads=2,
        top1=float(per_class.mean()), top5=0.998, per_class=per_class.tolist(),
        worst_class=int(per_class.argmin()), confusion=confusion.tolist(),
        agreement=1.0 - shift / 4, cosine=None,
        latency_ms={b: {"p50": v, "p90": v * 1.1, "p99": v * 1.4, "mean": v}
                    for b, v in p50.items()},
        items_per_s={b: int(b) * 1000 / v for b, v in p50.items()}, bytes=nbytes,
        params=270000, nonzero_params=270000, macs=41_000_000, peak_mem_bytes=52_000_000,
        artifact=None if runtime == "torch" else f"runs/demo/{name}.onnx", n=10000,
        machine=MACHINE)


@pytest.fixture
def report_html(tmp_path):
    base = _result("teacher-fp32-torch", "torch", "fp32", 0.0, 1.0, 1_085_000, 0)
    others = [_result("teacher-fp32-onnxruntime", "onnxruntime", "fp32", 0.0, 1.9, 1_080_000, 1),
              _result("student-int8-onnxruntime", "onnxruntime", "int8", 0.04, 5.3, 290_000, 2),
              _result("pruned-int8-openvino", "openvino", "int8", 0.06, 6.1, 180_000, 3)]
    paths = write_report(tmp_path / "report", baseline=base, candidates=others,
                         dataset={"name": "fashion-mnist", "split": "test", "n": 10000},
                         class_names=CLASSES, title="torchslim demo")
    return paths["html"]


@pytest.mark.slow
def test_report_renders_in_headless_chromium(report_html, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium not installed")
    shot = tmp_path / "shot.png"
    _run_headless(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1280,2400",
                  report_html.as_uri())
    assert shot.is_file()
    pixels = mpimg.imread(str(shot))[..., :3]  # (H, W, 3) floats in [0, 1]
    assert pixels.shape[0] >= 1000 and pixels.std() > 0.05
    # Saturated colours (plot bars, confusion cells) prove the images drew, not just text.
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    assert (saturation > 0.3).mean() > 0.01


@pytest.mark.slow
def test_every_plot_decodes_in_headless_chromium(report_html, tmp_path):
    """Chromium itself reports each <img>'s decoded size: a broken PNG would give 0."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium not installed")
    probe = tmp_path / "probe.html"
    script = ("<script>window.addEventListener('load', () => {document.title = 'sizes:' + "
              "[...document.images].map(i => i.naturalWidth + 'x' + i.naturalHeight).join(',');"
              "});</script>")
    probe.write_text(report_html.read_text().replace("</body>", script + "</body>"))
    dom = _run_headless(chromium, tmp_path, "--virtual-time-budget=5000", "--dump-dom",
                        probe.as_uri())
    title = dom.split("<title>", 1)[1].split("</title>", 1)[0]
    assert title.startswith("sizes:"), title
    sizes = [tuple(int(v) for v in s.split("x")) for s in title[len("sizes:"):].split(",")]
    assert len(sizes) >= 4
    assert all(w >= 300 and h >= 200 for w, h in sizes), sizes
