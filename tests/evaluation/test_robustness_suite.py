import copy
import json

import numpy as np
import pytest
import torch

from torchslim import runtime
from torchslim.errors import ConfigError, UnknownNameError
from torchslim.evaluation.robustness import (RobustnessConfig, RobustnessLimits, RobustnessSuite,
                                             evaluate_robustness, robustness_checks,
                                             stratified_subset)
from torchslim.evaluation.robustness.suite import collect_split
from torchslim.exporters import export_onnx
from torchslim.runtime import TorchSession

CONFIG = RobustnessConfig(n=180, severities=(1, 5), fgsm_eps=(0.0, 8 / 255), pgd_eps=(8 / 255,),
                          pgd_steps=3)
ONE = 1 / 180   # one sample of the subset


@pytest.fixture(scope="module")
def setup(digits_model, one_thread):
    model, data = digits_model
    suite = RobustnessSuite(data.test, mean=data.info.mean, std=data.info.std, config=CONFIG,
                            attack_model=model, source="resnet8-fp32-torch")
    base = suite.evaluate(TorchSession(model), class_names=data.info.class_names)
    return model, data, suite, base


@pytest.fixture(scope="module")
def coarse(setup):
    """A 'compressed' torch candidate: every weight rounded to 3 bits per tensor."""
    model = copy.deepcopy(setup[0])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() > 1:
                scale = p.abs().max() / 3
                p.copy_(torch.round(p / scale).clamp(-3, 3) * scale)
    return model.eval()


def test_stratified_subset_keeps_each_class_share():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    keep = stratified_subset(labels, 10, seed=0)
    assert np.bincount(labels[keep]).tolist() == [5, 3, 2]
    assert np.all(np.diff(keep) > 0)
    assert keep.tolist() == stratified_subset(labels, 10, seed=0).tolist()
    assert keep.tolist() != stratified_subset(labels, 10, seed=1).tolist()
    assert stratified_subset(labels, 7, seed=0).size == 7       # largest remainders fill up
    assert stratified_subset(labels, None).tolist() == list(range(100))


def test_the_baseline_block(setup):
    model, data, suite, base = setup
    assert json.loads(json.dumps(base)) == base                 # JSON-able as it is
    assert base["sample"] == {"n": 180, "of": 360, "seed": 0, "stratified": True}
    counts = np.bincount(suite.y, minlength=10)
    full = np.bincount(collect_split(data.test)[1], minlength=10)
    assert np.all(np.abs(counts - full / 2) <= 1)
    assert base["clean_top1"] > 0.85 and base["flips"] is None
    cor = base["corruptions"]
    every = [v["top1"] for c in cor["by_corruption"].values() for v in c["severities"].values()]
    assert len(every) == 12 and cor["mean_top1"] == pytest.approx(np.mean(every), abs=1e-6)
    assert cor["by_corruption"]["jpeg"]["severities"]["5"]["level"] == 7
    adv = base["adversarial"]
    assert adv["source"] == "resnet8-fp32-torch" and adv["is_source"]
    assert list(adv["attacks"]) == ["fgsm eps=0/255", "fgsm eps=8/255", "pgd-3 eps=8/255"]
    assert adv["attacks"]["fgsm eps=0/255"]["transfer_top1"] == base["clean_top1"]
    for a in adv["attacks"].values():
        assert a["white_box_top1"] == a["transfer_top1"] == a["worst_top1"]
    assert adv["attacks"]["pgd-3 eps=8/255"]["worst_top1"] < base["clean_top1"]
    assert base["calibration"]["n"] == 180 and len(base["calibration"]["bins"]) == 15
    assert len(base["paired"]["predictions"]) == 180 and len(base["per_class_top1"]) == 10


def test_the_baseline_against_itself_changes_nothing(setup):
    model, data, suite, base = setup
    again = suite.evaluate(TorchSession(model), baseline=base)
    assert again["delta_clean_top1"] == 0.0
    assert again["corruptions"]["delta_mean_top1"] == 0.0
    assert again["calibration"]["delta_ece"] == 0.0
    assert all(a["delta_worst"] == 0.0 for a in again["adversarial"]["attacks"].values())
    assert again["flips"]["mcnemar"]["p"] == 1.0 and again["flips"]["changed"] == 0
    limits = RobustnessLimits(max_corruption_drop=0, max_ece_increase=0,
                              max_class_drop_points=0, max_adversarial_drop=0)
    checks = robustness_checks(again, base, limits)
    assert [c["ok"] for c in checks] == [True] * 4
    assert set(checks[0]) == {"check", "value", "limit", "op", "ok"}


def test_adversarial_batches_transfer_to_an_onnx_runtime_session(setup, tmp_path):
    model, data, suite, base = setup
    path = export_onnx(model, tmp_path / "resnet8.onnx", input_shape=data.info.input_shape)
    session = runtime.open(path, threads=1)
    block = suite.evaluate(session, baseline=base)
    assert block["runtime"] == "onnxruntime"
    assert abs(block["clean_top1"] - base["clean_top1"]) <= ONE
    for key, a in block["adversarial"]["attacks"].items():
        assert a["white_box_top1"] is None and not block["adversarial"]["is_source"]
        assert abs(a["transfer_top1"] - base["adversarial"]["attacks"][key]["worst_top1"]) <= ONE
    assert block["adversarial"]["attacks"]["pgd-3 eps=8/255"]["transfer_top1"] < \
        block["clean_top1"] - 0.02          # the transferred attack bites on ORT
    assert block["flips"]["changed"] <= 1


def test_a_torch_candidate_is_attacked_white_box_too(setup, coarse):
    model, data, suite, base = setup
    block = suite.evaluate(TorchSession(coarse), baseline=base,
                           class_names=data.info.class_names)
    attacks = block["adversarial"]["attacks"]
    for a in attacks.values():
        assert a["white_box_top1"] is not None
        assert a["worst_top1"] == min(a["transfer_top1"], a["white_box_top1"])
    assert attacks["fgsm eps=0/255"]["white_box_top1"] == block["clean_top1"]
    flips = block["flips"]
    assert flips["changed"] >= flips["right_to_wrong"] + flips["wrong_to_right"] > 0
    assert block["delta_clean_top1"] == pytest.approx(
        (flips["wrong_to_right"] - flips["right_to_wrong"]) / 180, abs=1e-6)
    assert flips["per_class"][3]["name"] == "3"
    strict = robustness_checks(block, base, RobustnessLimits(max_adversarial_drop=0.0))
    worst = max(base["adversarial"]["attacks"][k]["worst_top1"] - a["worst_top1"]
                for k, a in attacks.items())
    assert strict[0]["value"] == pytest.approx(worst, abs=1e-6)
    assert strict[0]["ok"] is (worst <= 0)


def test_clean_logits_of_the_whole_split_feed_calibration_and_flips(setup, coarse):
    model, data, suite, base = setup
    x, y = collect_split(data.test)
    with torch.inference_mode():
        full = {m: m(torch.from_numpy(x)).numpy() for m in (model, coarse)}
    b = suite.evaluate(TorchSession(model), clean=(full[model], y))
    c = suite.evaluate(TorchSession(coarse), baseline=b, clean=(full[coarse], y))
    assert b["calibration"]["n"] == c["flips"]["n"] == 360
    assert c["flips"]["changed"] == int(np.sum(full[model].argmax(1) != full[coarse].argmax(1)))
    with pytest.raises(ConfigError, match="other samples"):
        suite.evaluate(TorchSession(coarse), baseline=base, clean=(full[coarse], y))


def test_corrupted_sets_are_made_once(setup):
    suite = setup[2]
    assert suite.corrupted("blur", 5) is suite.corrupted("blur", 5)


def test_without_an_attack_model_there_are_no_attack_figures(setup, tmp_path):
    model, data, suite, base = setup
    path = export_onnx(model, tmp_path / "m.onnx", input_shape=data.info.input_shape)
    block = evaluate_robustness(runtime.open(path, threads=1), data.test, mean=data.info.mean,
                                std=data.info.std, config=CONFIG)
    assert block["adversarial"] is None
    check = robustness_checks(block, base, RobustnessLimits(max_adversarial_drop=0.1))[0]
    assert check["value"] is None and check["ok"] is False
    own = evaluate_robustness(TorchSession(model), data.test, mean=data.info.mean,
                              std=data.info.std, config=CONFIG)
    assert own["adversarial"]["source"] == "torch-fp32" and own["adversarial"]["is_source"]


def test_every_public_name_exists():
    import torchslim.evaluation.robustness as robustness

    assert all(hasattr(robustness, name) for name in robustness.__all__)


def test_config_checks_itself():
    with pytest.raises(ConfigError, match="severities"):
        RobustnessConfig(severities=(1, 9))
    with pytest.raises(UnknownNameError, match="unknown corruption 'fog'"):
        RobustnessConfig(corruptions=("fog",))
    with pytest.raises(ConfigError, match="n=0"):
        RobustnessConfig(n=0)
    with pytest.raises(ConfigError, match="max_ece_increase=-0.1"):
        RobustnessLimits(max_ece_increase=-0.1)
