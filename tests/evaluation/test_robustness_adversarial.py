import copy

import numpy as np
import pytest
import torch

from torchslim.errors import ConfigError, UnknownNameError
from torchslim.evaluation.robustness import AttackSpec, attack, fgsm, make_adversarial, pgd
from torchslim.evaluation.robustness.suite import collect_split

EPS_255 = (0, 1, 2, 4, 8, 16, 32)


@pytest.fixture(scope="module")
def setup(digits_model, one_thread):
    model, data = digits_model
    x, y = collect_split(data.test)
    return model, x, y, data.info.mean, data.info.std


def accuracy(model, x, y) -> float:
    with torch.inference_mode():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


@pytest.mark.parametrize("fn", [fgsm, pgd])
def test_eps_zero_leaves_the_batch_and_the_predictions_unchanged(setup, fn):
    model, x, y, mean, std = setup
    out = fn(model, x, y, eps=0.0, mean=mean, std=std)
    np.testing.assert_array_equal(out, x)
    assert accuracy(model, out, y) == accuracy(model, x, y)


def test_fgsm_accuracy_falls_monotonically_with_eps(setup):
    model, x, y, mean, std = setup
    acc = [accuracy(model, fgsm(model, x, y, eps=e / 255, mean=mean, std=std), y)
           for e in EPS_255]
    assert acc[0] == accuracy(model, x, y) > 0.85
    assert all(a >= b for a, b in zip(acc, acc[1:])), acc
    assert acc[-1] < acc[0] - 0.3, acc


def test_pgd_is_at_least_as_strong_as_fgsm(setup):
    model, x, y, mean, std = setup
    for e in (8 / 255, 32 / 255):
        f = accuracy(model, fgsm(model, x, y, eps=e, mean=mean, std=std), y)
        p = accuracy(model, pgd(model, x, y, eps=e, mean=mean, std=std, steps=5), y)
        assert p <= f
    assert p < f - 0.05   # at 32/255 the iterations find clearly more


@pytest.mark.parametrize("spec", [AttackSpec(attack="fgsm", eps=8 / 255),
                                  AttackSpec(attack="pgd", eps=8 / 255, steps=4)])
def test_the_perturbation_stays_in_the_ball_and_the_pixel_range(setup, spec):
    model, x, y, mean, std = setup
    adv = attack(model, x, y, spec, mean=mean, std=std)
    before = np.clip(x * std + mean, 0, 1)
    after = adv * std + mean                    # not clipped: the attack must do it
    assert after.min() >= -1e-6 and after.max() <= 1 + 1e-6
    assert np.abs(after - before).max() <= spec.eps + 1e-6
    assert np.abs(after - before).max() >= spec.eps - 1e-6   # it used its budget
    assert adv.dtype == np.float32 and adv.shape == x.shape


def test_pgd_is_seeded(setup):
    model, x, y, mean, std = setup
    x, y = x[:64], y[:64]
    a = pgd(model, x, y, eps=4 / 255, mean=mean, std=std, seed=1)
    np.testing.assert_array_equal(a, pgd(model, x, y, eps=4 / 255, mean=mean, std=std, seed=1))
    assert not np.array_equal(a, pgd(model, x, y, eps=4 / 255, mean=mean, std=std, seed=2))


def test_the_attacked_model_is_left_as_it_was(setup):
    model, x, y, mean, std = setup
    m = copy.deepcopy(model).train()
    first = next(m.parameters())
    first.requires_grad_(False)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    flags = [p.requires_grad for p in m.parameters()]
    out = fgsm(m, x[:32], y[:32], eps=4 / 255, mean=mean, std=std)
    assert m.training and [p.requires_grad for p in m.parameters()] == flags
    assert all(p.grad is None for p in m.parameters())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # BN stats too
    m.eval()
    np.testing.assert_array_equal(out, fgsm(m, x[:32], y[:32], eps=4 / 255, mean=mean, std=std))


def test_make_adversarial_keeps_every_batch_by_key(setup):
    model, x, y, mean, std = setup
    specs = [AttackSpec(attack="fgsm", eps=2 / 255), AttackSpec(attack="pgd", eps=0.01, steps=3)]
    adv = make_adversarial(model, x[:40], y[:40], specs, mean=mean, std=std, source="digits")
    assert list(adv.images) == ["fgsm eps=2/255", "pgd-3 eps=0.01"]
    assert adv.source == "digits" and adv.y.tolist() == y[:40].tolist()
    assert all(a.shape == (40, 1, 8, 8) for a in adv.images.values())


def test_attack_spec_checks_itself():
    assert AttackSpec(attack="pgd", eps=8 / 255, steps=5).to_dict() == \
        {"attack": "pgd", "eps": 0.031373, "steps": 5}
    with pytest.raises(UnknownNameError, match="unknown attack 'cw'"):
        AttackSpec(attack="cw", eps=0.1)
    with pytest.raises(ConfigError, match="eps=8"):
        AttackSpec(attack="fgsm", eps=8)
    with pytest.raises(ConfigError, match="steps=0"):
        AttackSpec(attack="pgd", eps=0.1, steps=0)
