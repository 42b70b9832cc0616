"""AdaRound (quant/adaround.py): learned up / down rounding lowers a layer's output error
below nearest rounding's, keeps every weight on its fixed grid within one step of nearest,
learns each layer on the already-rounded model's inputs against the float model's outputs,
and exports exactly the integers the torch model computes with."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn import functional as F
from typer.testing import CliRunner

import torchslim.quant.adaround as adaround_module
from torchslim.cli import app
from torchslim.errors import ConfigError
from torchslim.exporters import export_qdq
from torchslim.pipeline.options import OptionError
from torchslim.pipeline.quantize import QUANTIZE
from torchslim.pipeline.recipe import parse_recipe
from torchslim.quant import (AdaRoundConfig, FakeQuantize, QuantConfig, QuantSpec, adaround_,
                             prepare, quantize)
from torchslim.quant.adaround import round_layer
from torchslim.quant.affine import quantize_tensor
from torchslim.quant.config import DEFAULT_WEIGHT
from torchslim.quant.modules import to_quant_module
from torchslim.quant.prepare import set_fake_quant_
from torchslim.runtime import OnnxRuntimeSession
from torchslim.train import save_checkpoint
from torchslim.zoo import build_model

W4 = QuantSpec(bits=4, granularity="per_channel", axis=0)
FAST = AdaRoundConfig(iterations=300, batch_size=32)


class Net(nn.Module):
    """conv -> BN -> ReLU -> conv -> ReLU -> mean -> linear: BN to fold, ReLUs to see."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.fc = nn.Conv2d(8, 16, 3, padding=1), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv1(x)))                   # (N, 8, 8, 8)
        x = F.adaptive_avg_pool2d(F.relu(self.conv2(x)), 1)  # (N, 16, 1, 1)
        return self.fc(torch.flatten(x, 1))


def net() -> nn.Module:
    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        model.bn.running_mean.normal_(0.0, 0.3)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def smooth_images() -> list[torch.Tensor]:
    """Four batches of smooth 8x8 images (neighbouring pixels correlated, as in photos)."""
    gen = torch.Generator().manual_seed(1)
    return [F.interpolate(torch.randn(32, 1, 4, 4, generator=gen), size=(8, 8),
                          mode="bilinear") for _ in range(4)]


@pytest.fixture(scope="module")
def images() -> list[torch.Tensor]:
    return smooth_images()


def frozen_layer(bits: int = 4) -> tuple[nn.Module, nn.Conv2d]:
    """A 4-bit QuantConv2d whose weight grid is frozen at min-max, and its float twin."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    fq = FakeQuantize(QuantSpec(bits=bits, granularity="per_channel", axis=0))
    fq.freeze_on_(conv.weight)
    return to_quant_module(copy.deepcopy(conv), fq), conv


def nearest_weights(model: nn.Module, images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each layer's weight as nearest rounding makes it, from a twin PTQ run."""
    twin = quantize(model, QuantConfig(weight=W4), images, num_batches=len(images))
    with torch.no_grad():
        return {n: twin.get_submodule(n).weight_fake_quant(twin.get_submodule(n).weight)
                for n in ("conv1", "conv2", "fc")}


def features(n: int, seed: int) -> torch.Tensor:
    """Post-ReLU maps, smooth in space and correlated across channels, as image features
    are (on white noise nearest rounding is already optimal: E|dW x|^2 = |dW|^2)."""
    gen = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.randn(n, 8, 3, 3, generator=gen), size=(6, 6), mode="bilinear")
    return F.relu(base + base.mean(1, keepdim=True) + 0.1 * torch.randn(n, 8, 6, 6, generator=gen))


def output_error(layer: nn.Module, weight: torch.Tensor, x: torch.Tensor,
                 y: torch.Tensor) -> float:
    out = F.relu(F.conv2d(x, weight, layer.bias, padding=1))
    return float((out - y).pow(2).sum(1).mean())


def test_learned_rounding_beats_nearest_on_the_layer_output() -> None:
    layer, conv = frozen_layer()
    x = features(256, seed=2)
    with torch.no_grad():
        y = F.relu(conv(x))
        nearest = layer.weight_fake_quant(layer.weight).clone()
    report = round_layer(layer, x, y, config=FAST, activation=F.relu, name="conv")
    with torch.no_grad():   # measured here, independently of the report
        before, after = output_error(layer, nearest, x, y), output_error(layer, layer.weight, x, y)
    assert after < 0.8 * before, (before, after)
    assert report.mse_adaround == pytest.approx(after, rel=1e-4)
    assert report.mse_nearest == pytest.approx(before, rel=1e-4)
    assert 0.0 < report.changed < 0.5


def test_final_weights_are_integers_on_the_fixed_grid_within_one_step_of_nearest() -> None:
    layer, conv = frozen_layer()
    fq = layer.weight_fake_quant
    scale = fq.scale.clone()
    x = features(128, seed=3)
    with torch.no_grad():
        y = F.relu(conv(x))
    round_layer(layer, x, y, config=AdaRoundConfig(iterations=100), activation=F.relu)
    assert torch.equal(fq.scale, scale)                      # the grid did not move
    s = scale.reshape(-1, 1, 1, 1)
    q = layer.weight.detach() / s                            # (16, 8, 3, 3)
    assert torch.equal(q.round() * s, layer.weight.detach())  # exactly on the grid
    assert torch.equal(fq(layer.weight), layer.weight)       # fake quant leaves it alone
    assert q.min() >= fq.spec.qmin and q.max() <= fq.spec.qmax
    nearest = torch.clamp(torch.round(conv.weight / s), fq.spec.qmin, fq.spec.qmax)
    step = (q.round() - nearest).abs()
    assert step.max() == 1 and (step == 1).any()            # some up / down flips, never two


def test_layers_learn_on_the_rounded_models_inputs_against_float_outputs(
        images: list[torch.Tensor], monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    real = adaround_module.round_layer

    def spy(layer, inputs, targets, **kwargs):
        seen[kwargs["name"]] = (inputs.clone(), targets.clone(), kwargs["activation"])
        return real(layer, inputs, targets, **kwargs)

    monkeypatch.setattr(adaround_module, "round_layer", spy)
    config = QuantConfig(weight=W4, rounding="adaround", adaround=AdaRoundConfig(iterations=200))
    model = net()
    prepared = quantize(model, config, images, num_batches=4)
    assert list(seen) == ["conv1", "conv2", "fc"]
    assert seen["conv1"][2] is F.relu and seen["fc"][2] is None   # the ReLU after each conv

    floats = prepare(model, QuantConfig(weight=W4), example_inputs=images[0])
    x = torch.cat(images)
    with torch.no_grad():
        h1 = F.relu(floats.conv1(x))                       # BN folded: the float model
        assert torch.allclose(seen["conv2"][1], F.relu(floats.conv2(h1)), atol=1e-5)
        # conv2's inputs: the final model's (conv1 already AdaRounded), fake-quantized
        captured = []
        handle = prepared.conv2.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
        prepared(x)
        handle.remove()
    assert torch.equal(seen["conv2"][0], captured[0])
    # ... and conv1 was rounded its own way, so those inputs are not nearest rounding's
    assert not torch.equal(nearest_weights(model, images)["conv1"], prepared.conv1.weight)


def test_qdq_export_holds_the_adaround_integers_and_matches_torch(
        images: list[torch.Tensor], tmp_path: Path) -> None:
    config = QuantConfig(weight=W4, rounding="adaround", adaround=AdaRoundConfig(iterations=200))
    prepared = quantize(net(), config, images, num_batches=4)
    nearest = nearest_weights(net(), images)
    assert any(not torch.equal(nearest[n], prepared.get_submodule(n).weight) for n in nearest)
    path = export_qdq(prepared, tmp_path / "net.onnx", example_inputs=images[0])
    ints = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
            if t.data_type == onnx.TensorProto.INT8]
    for name in ("conv1", "conv2", "fc"):
        layer = prepared.get_submodule(name)
        fq = layer.weight_fake_quant
        q = quantize_tensor(layer.weight.detach(), fq.scale, fq.zero_point, fq.spec).numpy()
        assert any(a.shape == q.shape and np.array_equal(a, q) for a in ints), name
    x = torch.cat(images)
    with torch.no_grad():
        torch_out = prepared(x).numpy()
    ort_out = OnnxRuntimeSession(path, threads=1).run(x.numpy())
    assert np.abs(torch_out - ort_out).max() < 1e-4
    assert (torch_out.argmax(1) == ort_out.argmax(1)).all()


def test_the_option_reaches_the_config_the_cli_and_recipes(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    plan = QUANTIZE.plan(bits=4, rounding="adaround", adaround_iterations=500, adaround_reg=0.02)
    assert plan.config == QuantConfig(weight=W4, rounding="adaround",
                                      adaround=AdaRoundConfig(iterations=500, reg_weight=0.02))
    assert QUANTIZE.plan().config.rounding == "nearest"
    assert QuantConfig.from_dict({"rounding": "adaround", "adaround": {"lr": 0.01}}).adaround \
        == AdaRoundConfig(lr=0.01)

    recipe = parse_recipe("name: t\nmodel: resnet8\ndata: digits\nstages:\n"
                          "  - kind: quantize\n    bits: 4\n    rounding: adaround\n"
                          "    adaround_iterations: 200\n")
    stage_plan = recipe.stages[0].plan()
    assert stage_plan.config.rounding == "adaround"
    assert stage_plan.config.adaround.iterations == 200

    import torchslim.pipeline.quantize as job_module
    import torchslim.report

    jobs = []
    monkeypatch.setattr(job_module, "run_quantize", lambda job: jobs.append(job) or {
        "results": [], "artifact": tmp_path / "a.onnx", "report": {"html": tmp_path / "r.html"}})
    monkeypatch.setattr(torchslim.report, "print_table", lambda *a, **k: None)
    checkpoint = save_checkpoint(tmp_path / "r8.safetensors", build_model("resnet8", width=8),
                                 dataset="fashion-mnist")
    result = CliRunner().invoke(app, ["quantize", str(checkpoint), "--bits", "4", "--rounding",
                                      "adaround", "--adaround-iterations", "300"])
    assert result.exit_code == 0, result.output
    assert jobs[0].plan.config.adaround == AdaRoundConfig(iterations=300)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(rounding="stochastic"), "rounding='stochastic' must be one of nearest, adaround"),
    (dict(adaround=AdaRoundConfig(iterations=10)), "runs only with rounding='adaround'"),
    (dict(rounding="adaround", adaround={"iterations": 10}), "must be an AdaRoundConfig"),
])
def test_bad_quant_config_settings_give_one_line_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        QuantConfig(**kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(iterations=0), "iterations=0 must be an integer >= 1"),
    (dict(iterations=2.5), "iterations=2.5"),
    (dict(batch_size=0), "batch_size=0"),
    (dict(reg_weight=-0.1), "reg_weight=-0.1 must be a finite number >= 0"),
    (dict(lr=0.0), "lr=0.0 must be a finite number > 0"),
    (dict(lr=float("nan")), "lr=nan"),
    (dict(beta_start=2.0, beta_end=20.0), "beta anneals down"),
    (dict(warmup=1.0), "warmup=1.0 must be a fraction in [0, 1)"),
])
def test_bad_adaround_settings_give_one_line_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        AdaRoundConfig(**kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_bad_settings_name_the_option_and_the_cli_says_one_line(tmp_path: Path,
                                                               one_line_error) -> None:
    with pytest.raises(OptionError) as info:
        QUANTIZE.plan(rounding="adaround", adaround_iterations=0)
    assert info.value.key == "adaround_iterations"
    with pytest.raises(OptionError) as info:
        QUANTIZE.plan(adaround_iterations=100)   # AdaRound settings without AdaRound
    assert info.value.key == "adaround_iterations"
    with pytest.raises(ConfigError, match="unknown keys"):
        QuantConfig.from_dict({"rounding": "adaround", "adaround": {"steps": 5}})
    checkpoint = save_checkpoint(tmp_path / "r8.safetensors", build_model("resnet8", width=8),
                                 dataset="fashion-mnist")
    result = CliRunner().invoke(app, ["quantize", str(checkpoint), "--rounding", "up"])
    one_line_error(result, "rounding='up'", "nearest, adaround")


def test_an_uncalibrated_layer_or_model_is_refused(images: list[torch.Tensor]) -> None:
    conv = nn.Conv2d(2, 4, 3)
    layer = to_quant_module(conv, FakeQuantize(W4))   # observer still on, no scale
    with pytest.raises(ConfigError, match="calibrate_"):
        round_layer(layer, torch.randn(4, 2, 5, 5), torch.randn(4, 4, 3, 3))
    config = QuantConfig(weight=W4, rounding="adaround", adaround=AdaRoundConfig(iterations=5))
    prepared = prepare(net(), config, example_inputs=images[0])
    set_fake_quant_(prepared, True)
    with pytest.raises(ConfigError, match="frozen weight quantizer"):
        adaround_(prepared, images, num_batches=1)


def test_nearest_rounding_the_default_runs_no_adaround(images: list[torch.Tensor]) -> None:
    """The weights stay float (the quantizer rounds them on the fly), not on the grid."""
    prepared = quantize(net(), QuantConfig(weight=DEFAULT_WEIGHT), images, num_batches=2)
    fq = prepared.conv1.weight_fake_quant
    assert not torch.equal(fq(prepared.conv1.weight), prepared.conv1.weight)


def test_every_rank_keeps_the_same_rounding_under_torchrun(tmp_path: Path,
                                                           images: list[torch.Tensor]) -> None:
    """2 gloo ranks, each calibrating on its half of every batch: V's gradient is averaged
    over the ranks, so both end with the same integers (without it they differ)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1", "TORCHSLIM_PROGRESS": "0"}
    procs = [subprocess.Popen([sys.executable, __file__, str(tmp_path / f"rank{r}.pt")],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()[-2000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0.keys() == r1.keys() == {"conv1", "conv2", "fc"}
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    nearest = nearest_weights(net(), images)
    assert any(not torch.equal(nearest[k], r0[k]) for k in r0)


def _rank_main(out: str) -> None:
    """One rank of the test above: AdaRound PTQ of ``net()`` on the shared batches."""
    config = QuantConfig(weight=W4, rounding="adaround", adaround=AdaRoundConfig(iterations=100))
    prepared = quantize(net(), config, smooth_images(), num_batches=4)
    torch.save({n: prepared.get_submodule(n).weight.detach() for n in ("conv1", "conv2", "fc")},
               out)


if __name__ == "__main__":
    _rank_main(sys.argv[1])
