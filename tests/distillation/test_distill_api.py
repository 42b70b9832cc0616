"""distill() and distill_chain() on digits with tiny ResNets."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchslim.data import DataBundle
from torchslim.distillation import DistillConfig, distill, distill_chain, teacher_weights
from torchslim import record_of
from torchslim.distillation.distiller import Distiller
from torchslim.errors import ConfigError, UnknownNameError
from torchslim.train import TrainConfig, accuracy, fit, read_checkpoint, save_checkpoint
from torchslim.zoo import build_model

QUICK = TrainConfig(epochs=1, lr=0.05, max_steps_per_epoch=4, channels_last=False)


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


def _bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("options", [
    {}, {"features": ["layer3:layer3"], "attention": ["layer2:layer2"]},
    {"cache_teacher": True}])
def test_teacher_weights_are_bit_identical_afterwards(digits: DataBundle, teacher: nn.Module,
                                                      student: nn.Module, options: dict) -> None:
    teacher.train()                       # even a teacher left in train mode: BN stats kept
    before = _state(teacher)
    distill(student, teacher, digits, DistillConfig(train=QUICK, **options))
    assert _bit_identical(before, _state(teacher))
    assert teacher.training               # its mode is restored
    assert all(p.grad is None for p in teacher.parameters())


def test_the_input_student_is_left_alone(digits: DataBundle, teacher: nn.Module,
                                         student: nn.Module) -> None:
    before = _state(student)
    trained = distill(student, teacher, digits, DistillConfig(train=QUICK))
    assert _bit_identical(before, _state(student))
    assert not _bit_identical(before, _state(trained))


def test_every_loss_term_is_logged_per_epoch(digits: DataBundle, teacher: nn.Module,
                                             student: nn.Module) -> None:
    cfg = DistillConfig(features=["layer3:layer3"], attention=["layer2:layer2"],
                        train=TrainConfig(epochs=2, lr=0.05, max_steps_per_epoch=3))
    history = record_of(distill(student, teacher, digits, cfg)).distillation.history
    assert len(history) == 2
    for epoch in history:
        assert {"train_loss", "train_ce", "train_kd", "train_hint", "train_attention",
                "train_alpha", "val_top1"} <= set(epoch)


def test_adapters_are_trained_and_not_saved(digits: DataBundle, teacher: nn.Module,
                                            student: nn.Module, tmp_path) -> None:
    # student layer3: 16 channels; teacher layer3: 32 channels -> a 1x1 conv adapter
    cfg = DistillConfig(features=["layer3:layer3"], train=QUICK)
    with torch.no_grad():
        probe = next(iter(digits.val))[0][:4]
    distiller = Distiller(copy.deepcopy(student), [teacher.eval()], [1.0], cfg, probe)
    adapter = distiller.module.adapters["layer3->layer3"]
    assert isinstance(adapter, nn.Conv2d) and adapter.weight.shape == (32, 16, 1, 1)
    start = adapter.weight.detach().clone()
    fit(distiller.module, digits.train, config=QUICK, loss_fn=distiller.loss, callbacks=[distiller])
    assert not torch.equal(start, adapter.weight)          # it was in the optimizer
    trained = distill(student, teacher, digits, cfg)
    assert record_of(trained).distillation.adapters == ("layer3->layer3",)
    weights, _ = read_checkpoint(save_checkpoint(tmp_path / "s.safetensors", trained))
    assert weights.keys() == student.state_dict().keys()   # no adapter in the student


def test_cached_teacher_logits_give_the_same_training(digits: DataBundle, teacher: nn.Module,
                                                      student: nn.Module) -> None:
    live = distill(student, teacher, digits, DistillConfig(train=QUICK))
    cached = distill(student, teacher, digits, DistillConfig(train=QUICK, cache_teacher=True))
    for a, b in zip(live.parameters(), cached.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_cache_refuses_an_augmenting_loader(teacher: nn.Module, student: nn.Module) -> None:
    from torchslim.data.datasets import RandomHFlip

    generator = torch.Generator()
    data = DataLoader(TensorDataset(torch.randn(8, 1, 8, 8), torch.arange(8) % 10),
                      batch_size=4, generator=generator, collate_fn=RandomHFlip(generator))
    with pytest.raises(ConfigError, match="augment=False"):
        distill(student, teacher, data, DistillConfig(train=QUICK, cache_teacher=True))


def test_a_missing_layer_is_one_line_with_close_matches(digits: DataBundle, teacher: nn.Module,
                                                        student: nn.Module) -> None:
    with pytest.raises(UnknownNameError) as e:
        distill(student, teacher, digits, DistillConfig(features=["layer3:layer3.9"], train=QUICK))
    assert "close matches: layer3" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_kd_learns_from_a_teacher_alone(digits: DataBundle, teacher: nn.Module,
                                        student: nn.Module) -> None:
    """alpha=1: no labels at all; the student still learns what the teacher knows."""
    fit(teacher, digits.train, config=TrainConfig(epochs=3, lr=0.05, channels_last=False))
    cfg = DistillConfig(alpha=1.0, temperature=2.0, cache_teacher=True,
                        train=TrainConfig(epochs=3, lr=0.05, channels_last=False))
    trained = distill(student, teacher, digits, cfg)
    assert accuracy(teacher, digits.val) > 0.8
    assert accuracy(trained, digits.val) > 0.6
    assert record_of(trained).distillation.history[-1]["train_ce"] < 1.0


@pytest.mark.parametrize("spec, expected", [
    ("uniform", [0.5, 0.5]), ((3.0, 1.0), [0.75, 0.25])])
def test_given_teacher_weights(teacher: nn.Module, spec, expected) -> None:
    assert teacher_weights([teacher, teacher], spec, None) == pytest.approx(expected)


def test_learned_weights_favour_the_teacher_that_knows(digits: DataBundle,
                                                       teacher: nn.Module) -> None:
    fit(teacher, digits.train, config=TrainConfig(epochs=3, lr=0.05, channels_last=False))
    torch.manual_seed(3)
    untrained = build_model("mobilenetv2", width_mult=0.25).eval()
    for spec in ("accuracy", "learned"):
        w = teacher_weights([teacher.eval(), untrained], spec, digits.val)
        assert sum(w) == pytest.approx(1.0) and w[0] > w[1]
    assert teacher_weights([teacher, untrained], "learned", digits.val)[0] > 0.8
    with pytest.raises(ConfigError, match="one weight per teacher"):
        teacher_weights([teacher, untrained], (1.0,), digits.val)


def test_multi_teacher_of_different_architectures(digits: DataBundle, teacher: nn.Module,
                                                  student: nn.Module) -> None:
    second = build_model("mobilenetv2", width_mult=0.25)
    before = [_state(teacher), _state(second)]
    trained = distill(student, [teacher, second], digits,
                      DistillConfig(teacher_weights="accuracy", cache_teacher=True, train=QUICK))
    info = record_of(trained).distillation
    assert info.teachers == 2 and sum(info.teacher_weights) == pytest.approx(1.0)
    assert _bit_identical(before[0], _state(teacher)) and _bit_identical(before[1], _state(second))


def test_teacher_assistant_chain(digits: DataBundle, teacher: nn.Module, student: nn.Module) -> None:
    assistant = build_model("resnet8", width=6)
    before = _state(teacher)
    trained = distill_chain(teacher, [assistant, student], digits, DistillConfig(train=QUICK))
    assert len(trained) == 2
    assert [type(m) for m in trained] == [type(assistant), type(student)]
    assert sum(p.numel() for p in trained[-1].parameters()) == sum(
        p.numel() for p in student.parameters())
    assert _bit_identical(before, _state(teacher))
    with pytest.raises(ConfigError, match="one per model"):
        distill_chain(teacher, [assistant, student], digits, [DistillConfig(train=QUICK)])


def test_no_hook_is_left_on_the_teacher(digits: DataBundle, teacher: nn.Module,
                                        student: nn.Module) -> None:
    distill(student, teacher, digits, DistillConfig(features=["layer3:layer3"], train=QUICK))
    with pytest.raises(UnknownNameError):   # the student layer exists, the teacher's does not
        distill(student, teacher, digits, DistillConfig(features=["layer3:nope"], train=QUICK))
    assert not any(m._forward_hooks for m in teacher.modules())
    assert not any(m._forward_hooks for m in student.modules())


def test_cache_needs_a_dataloader(teacher: nn.Module, student: nn.Module) -> None:
    batches = [(torch.randn(4, 1, 8, 8), torch.arange(4))]
    with pytest.raises(ConfigError, match="DataLoader"):
        distill(student, teacher, batches, DistillConfig(train=QUICK, cache_teacher=True))
