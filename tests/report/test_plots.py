import matplotlib.pyplot as plt
import pytest

from torchslim.report.plots import (accuracy_latency_plot, largest_batch, latency_plot,
                                    per_class_delta_plot, size_plot)


def candidate(name, runtime, top1, p50, per_class, nbytes=1000):
    return {"name": name, "runtime": runtime, "top1": top1, "per_class": per_class,
            "bytes": nbytes, "latency_ms": {"1": {"p50": p50}, "32": {"p50": 20 * p50}}}


CANDIDATES = [candidate("base", "torch", 0.9, 1.0, [0.9, 0.8]),
              candidate("q", "onnxruntime", 0.88, 0.3, [0.85, None], nbytes=None),
              candidate("v", "openvino-gpu", 0.87, 0.2, [0.8, 0.8])]


@pytest.mark.parametrize("draw", [
    lambda c: accuracy_latency_plot(c), size_plot, latency_plot,
    lambda c: per_class_delta_plot(c, "base", ["a", "b"]),
    lambda c: per_class_delta_plot(c[:1], "base"),
])
def test_plots_return_png_and_close_figures(draw):
    before = len(plt.get_fignums())
    png = draw(CANDIDATES)
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert len(plt.get_fignums()) == before


def test_largest_common_batch():
    assert largest_batch(CANDIDATES) == "32"
    only_one = [dict(CANDIDATES[0]), dict(CANDIDATES[1], latency_ms={"1": {"p50": 1.0}})]
    assert largest_batch(only_one) == "1"
