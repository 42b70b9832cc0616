import io

import pytest

from torchslim.report.robustness_plots import reliability_plot, robustness_plot

PNG = b"\x89PNG\r\n\x1a\n"


def calibration(shift: float) -> dict:
    bins = [{"lo": i / 15, "hi": (i + 1) / 15, "count": 0 if i < 7 else 10 * i,
             "confidence": None if i < 7 else (i + 0.5) / 15,
             "accuracy": None if i < 7 else max(0.0, (i + 0.5) / 15 - shift)} for i in range(15)]
    return {"ece": shift, "bins": bins}


def block(top1: float) -> dict:
    return {"clean_top1": top1,
            "corruptions": {"by_corruption": {"gaussian_noise": {"mean_top1": top1 - 0.1},
                                              "jpeg": {"mean_top1": top1 - 0.05}}},
            "adversarial": {"attacks": {"fgsm eps=2/255": {"worst_top1": top1 - 0.4}}}}


def size(png: bytes) -> tuple[int, int]:
    image = pytest.importorskip("PIL.Image")
    return image.open(io.BytesIO(png)).size


def test_reliability_plot_is_a_png():
    png = reliability_plot({"teacher": calibration(0.02), "int8": calibration(0.08)})
    assert png.startswith(PNG)
    w, h = size(png)
    assert w > 400 and h > 400


def test_robustness_plot_is_a_png_and_takes_missing_figures():
    partial = block(0.8)
    partial["adversarial"] = None
    png = robustness_plot({"teacher": block(0.9), "pruned": partial})
    assert png.startswith(PNG) and size(png)[0] > 600


def test_empty_inputs_still_draw():
    assert reliability_plot({}).startswith(PNG)
    assert reliability_plot({"x": {"ece": 0.0, "bins": []}}).startswith(PNG)
    assert robustness_plot({}).startswith(PNG)
