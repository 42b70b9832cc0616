from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from torchslim.data import load_data
from torchslim.errors import ConfigError
from torchslim.train import Callback, TrainConfig, TrainState, accuracy, fit
from torchslim.zoo import build_model


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", batch_size=64, seed=0)


def _small(bundle) -> nn.Module:
    return build_model("resnet8", width=8, num_classes=10, in_channels=1)


def test_training_lowers_loss_and_learns_digits(digits) -> None:
    model = _small(digits)
    before = accuracy(model, digits.val)
    history = fit(model, digits.train, val=digits.val,
                  config=TrainConfig(epochs=3, lr=0.05, schedule="onecycle"))
    assert len(history) == 3
    assert history[-1]["train_loss"] < history[0]["train_loss"] * 0.7
    assert history[-1]["val_top1"] > max(0.8, before + 0.5)


def test_callbacks_see_every_step_and_can_stop(digits) -> None:
    class Counter(Callback):
        def __init__(self) -> None:
            self.steps = 0
            self.epochs: list[int] = []

        def on_step_end(self, state: TrainState) -> None:
            self.steps += 1

        def on_epoch_end(self, state: TrainState, metrics: dict) -> None:
            self.epochs.append(metrics["epoch"])
            state.stop = True

    counter = Counter()
    history = fit(_small(digits), digits.train, callbacks=[counter],
                  config=TrainConfig(epochs=5, max_steps_per_epoch=4))
    assert counter.steps == 4 and counter.epochs == [1] and len(history) == 1


def test_custom_loss_terms_are_logged(digits) -> None:
    def loss(out, y, x):
        ce = nn.functional.cross_entropy(out, y)
        return ce, {"ce": ce}

    history = fit(_small(digits), digits.train, loss_fn=loss,
                  config=TrainConfig(epochs=1, max_steps_per_epoch=3))
    assert history[0]["train_ce"] == pytest.approx(history[0]["train_loss"])


def test_resume_continues_after_last_finished_epoch(digits, tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=3, lr=0.05, max_steps_per_epoch=5, seed=1)
    torch.manual_seed(123)
    straight = _small(digits)
    fit(straight, digits.train, config=cfg)

    class Crash(Callback):
        def on_epoch_end(self, state: TrainState, metrics: dict) -> None:
            if state.epoch == 1:  # dies after the 2nd epoch is trained but before its save
                raise KeyboardInterrupt

    torch.manual_seed(123)
    interrupted = _small(digits)
    with pytest.raises(KeyboardInterrupt):
        fit(interrupted, digits.train, config=cfg, checkpoint_dir=tmp_path, callbacks=[Crash()])
    torch.manual_seed(456)  # a different init: the resumed run must take the saved weights
    resumed = _small(digits)
    history = fit(resumed, digits.train, config=cfg, checkpoint_dir=tmp_path)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"lr": -1.0}, {"optimizer": "lion"},
                                 {"schedule": "step"}, {"warmup_fraction": 1.5}])
def test_bad_config_is_rejected(bad: dict) -> None:
    with pytest.raises(ConfigError):
        TrainConfig(**bad)


def test_diverging_loss_names_the_fix(digits) -> None:
    def nan_loss(out, y, x):
        return out.sum() * float("nan")

    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        fit(_small(digits), digits.train, loss_fn=nan_loss,
            config=TrainConfig(epochs=1, max_steps_per_epoch=2))


def test_a_strided_1x1_conv_on_few_channels_trains_in_nchw_and_says_so(caplog) -> None:
    """torch 2.14's oneDNN corrupts the heap in this conv's NHWC weight gradient (seen on an
    AVX2 AMD EPYC); fit must not take the process down, and must say why it chose NCHW."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(4, 8, 1, stride=2, bias=False), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 3))
    data = [(torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))) for _ in range(20)]
    history = fit(model, data, config=TrainConfig(epochs=2, lr=0.05))
    assert len(history) == 2 and "not channels_last" in caplog.text
    assert model[2].weight.is_contiguous()   # left in NCHW
