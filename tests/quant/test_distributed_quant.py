"""Quantization state under 2 gloo processes on CPU (1 thread each, loopback): observers
combine every rank's statistics, calibration equals one process on the union of the
ranks' batches, QAT keeps parameters, scales and freezing identical on every rank.

The ranks are this file run as a script (``python test_distributed_quant.py JOB OUT``)
with torchrun's environment; one job runs every check so that the processes start once.
"""

from __future__ import annotations

import copy
import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from torchslim import record_of
from torchslim.data import load_data
from torchslim.quant import QuantConfig, QuantSpec, calibrate_, make_observer, prepare, qat
from torchslim.quant.fold import QuantConvBn
from torchslim.quant.qat import describe
from torchslim.train import Callback, TrainConfig, accuracy, fit
from torchslim.zoo import build_model

OBSERVERS = {"minmax": {}, "moving_average": {"momentum": 0.3},
             "entropy": {"bins": 256}, "percentile": {"max_samples": 10 ** 6}}
QAT = dict(lr=1e-3, schedule="cosine", threads=1)


# ------------------------------------------------------------------ launching ranks
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ranks(job: str, out: Path, *args: str, world: int = 2, timeout: float = 600) -> list[Any]:
    """Run ``job`` in ``world`` processes of this file; what each rank saved."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1", "TORCHSLIM_PROGRESS": "0"}
    procs = []
    for rank in range(world):
        log = open(out / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, __file__, job, str(out), *args], stdout=log,
            stderr=subprocess.STDOUT, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}))
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, p in enumerate(procs):
        if p.returncode != 0:
            tail = (out / f"rank{rank}.log").read_text()[-3000:]
            pytest.fail(f"rank {rank} exited with {p.returncode}:\n{tail}")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def _digest(pairs: Any) -> str:
    h = hashlib.sha256()
    for name, t in pairs:
        h.update(name.encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def _scales(model: nn.Module) -> dict[str, Tensor]:
    """Every quantizer's grid: FakeQuantize scale / zero_point, LSQ's learned scale."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if k.endswith((".scale", ".zero_point"))}


def _weights(model: nn.Module) -> str:
    return _digest((k, v) for k, v in model.state_dict().items()
                   if not k.endswith((".scale", ".zero_point")))


# ------------------------------------------------------------------ data both sides use
def _rank_batches(rank: int) -> list[Tensor]:
    """Rank ``rank``'s own calibration batches: 4 of 32 digits each, disjoint by rank."""
    x = load_data("digits").train.dataset.tensors[0]  # (1078, 1, 8, 8)
    return list(x[128 * rank:128 * (rank + 1)].split(32))


def _union_batches() -> list[Tensor]:
    """What one process sees when it calibrates on both ranks' batches, step by step."""
    return [torch.cat(pair) for pair in zip(_rank_batches(0), _rank_batches(1))]


def _observer_inputs(rank: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(rank)
    # skewed and growing: the entropy histogram re-bins, the EMA moves
    return [torch.randn(4, 3, 50, generator=g) * (1 + i) + rank for i in range(3)]


def _observers() -> nn.ModuleDict:
    spec = QuantSpec(bits=8, symmetric=False, granularity="per_channel", axis=1)
    return nn.ModuleDict({name: make_observer(name, spec, **kw) for name, kw in OBSERVERS.items()})


def _float_model(path: str) -> nn.Module:
    model = build_model("resnet8", width=8, num_classes=10, in_channels=1)
    model.load_state_dict(torch.load(path))
    return model.eval()


class Record(Callback):
    """Per epoch: weights and grids digests, observers still on, simulated-BN freezing."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, Any]] = []

    def on_epoch_end(self, state: Any, metrics: dict[str, Any]) -> None:
        model = state.model
        self.epochs.append({
            "weights": _weights(model), "scales": _digest(_scales(model).items()),
            "observers_on": describe(model)["observers_on"],
            "freeze_bn": [m.freeze_bn for m in model.modules() if isinstance(m, QuantConvBn)]})


def _qat_with(record: Record, model: nn.Module, **kwargs: Any) -> nn.Module:
    """``qat`` on digits with ``record`` among fit's callbacks."""
    import torchslim.quant.api as api

    real_fit = api.fit
    api.fit = lambda *a, callbacks=(), **k: real_fit(*a, callbacks=[*callbacks, record], **k)
    try:
        data = load_data("digits", batch_size=64)
        return qat(model, data.train, val=data.val, **kwargs)
    finally:
        api.fit = real_fit


# ------------------------------------------------------------------ the job (rank side)
def _job_quant(out: Path, float_path: str) -> None:
    from torchslim.errors import ConfigError
    from torchslim.quant import quantize
    from torchslim.quant.distributed import global_observers
    from torchslim.train.distributed import DistributedConfig, setup

    rank = int(os.environ["RANK"])
    world = setup(DistributedConfig())
    result: dict[str, Any] = {"world": world.size}
    holder = _observers()
    with global_observers(holder):
        for x in _observer_inputs(rank):
            for obs in holder.values():
                obs(x)
    result["observers"] = {name: obs.calculate_qparams() for name, obs in holder.items()}
    model = _float_model(float_path)
    prepared = prepare(model, QuantConfig(), example_inputs=(_rank_batches(rank)[0],))
    result["calibrated"] = _scales(calibrate_(prepared, _rank_batches(rank)))
    # a different config on rank 1: quantize() takes rank 0's; its calibration is sharded
    config = QuantConfig(activation_observer="minmax" if rank == 0 else "moving_average")
    plain = load_data("digits", batch_size=64, augment=False)
    ptq = quantize(model, config, plain.train, num_batches=4)
    result["ptq_config"] = record_of(ptq).quantization.config
    result["ptq"] = _scales(ptq)
    other = prepare(model, QuantConfig(skip=("fc",) if rank == 1 else ()),
                    example_inputs=(_rank_batches(rank)[0],))
    try:
        calibrate_(other, _rank_batches(rank))
    except ConfigError as e:
        result["layout_error"] = str(e)
    for name, kwargs in {"folded": {"freeze_observers_epoch": 1},
                         "simulated_lsq": {"freeze_observers_epoch": 1, "freeze_bn_epoch": 1,
                                           "lsq": True}}.items():
        record = Record()
        trained = _qat_with(record, model, train_config=TrainConfig(epochs=3, **QAT), **kwargs)
        result[name] = {"epochs": record.epochs, "final": _scales(trained),
                        "top1": accuracy(trained, load_data("digits").test)}
    torch.save(result, out / f"rank{rank}.pt")


def _job_teacher_qat(out: Path, teacher_path: str) -> None:
    rank = int(os.environ["RANK"])
    trained = _teacher_qat(teacher_path)
    torch.save({"top1": accuracy(trained, load_data("digits").test),
                "scales": _scales(trained)}, out / f"rank{rank}.pt")


def _teacher_qat(path: str) -> nn.Module:
    """QAT (w8a8, 2 epochs) of the demo's teacher, ResNet-14 width 16, on digits."""
    teacher = build_model("resnet14", width=16, num_classes=10, in_channels=1)
    teacher.load_state_dict(torch.load(path))
    data = load_data("digits", batch_size=64)
    return qat(teacher.eval(), data.train, val=data.val,
               train_config=TrainConfig(epochs=2, **QAT), freeze_observers_epoch=1)


JOBS = {"quant": _job_quant, "teacher_qat": _job_teacher_qat}


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def float_path(tmp_path_factory: pytest.TempPathFactory, digits_model: Any) -> Path:
    path = tmp_path_factory.mktemp("float") / "float.pt"
    torch.save(digits_model[0].state_dict(), path)
    return path


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory, float_path: Path) -> list[dict[str, Any]]:
    return _ranks("quant", tmp_path_factory.mktemp("ddp_quant"), str(float_path))


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("name", list(OBSERVERS))
def test_observers_combine_every_ranks_batches(ranks, name: str) -> None:
    single = _observers()[name]
    for a, b in zip(_observer_inputs(0), _observer_inputs(1)):
        single(torch.cat([a, b]))  # one process, the union of each step's batches
    expected = single.calculate_qparams()
    for rank in ranks:
        scale, zero_point = rank["observers"][name]
        assert torch.equal(scale, expected[0]) and torch.equal(zero_point, expected[1])


def test_minmax_calibration_on_two_ranks_equals_one_process_on_the_union(
        ranks, float_path: Path) -> None:
    model = _float_model(str(float_path))
    prepared = prepare(model, QuantConfig(), example_inputs=(_rank_batches(0)[0],))
    expected = _scales(calibrate_(prepared, _union_batches()))
    assert len(expected) > 20
    for rank in ranks:
        assert rank["calibrated"].keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(rank["calibrated"][key], value), key
    # and it is not what rank 0 alone would give
    alone = _scales(calibrate_(prepare(model, QuantConfig(), example_inputs=(
        _rank_batches(0)[0],)), _rank_batches(0)))
    assert any(not torch.equal(alone[k], expected[k]) for k in expected)


def test_ptq_under_torchrun_takes_rank0s_config_and_shards_its_calibration(
        ranks, float_path: Path) -> None:
    r0, r1 = ranks
    assert r1["ptq_config"] == r0["ptq_config"] == QuantConfig(activation_observer="minmax")
    from torchslim.quant import quantize

    plain = load_data("digits", batch_size=64, augment=False)
    single = _scales(quantize(_float_model(str(float_path)), QuantConfig(), plain.train,
                              num_batches=4))
    for rank in ranks:
        assert all(torch.equal(rank["ptq"][k], v) for k, v in single.items())


def test_ranks_that_prepared_different_quantizers_are_refused(ranks) -> None:
    for rank in ranks:
        message = rank["layout_error"]
        assert "rank 1 and rank 0 disagree on the quantizer layout" in message
        assert "\n" not in message


@pytest.mark.parametrize("name", ["folded", "simulated_lsq"])
def test_qat_keeps_weights_scales_and_freezing_identical_on_every_rank(ranks, name) -> None:
    r0, r1 = ranks[0][name], ranks[1][name]
    assert len(r0["epochs"]) == 3 and r0["epochs"] == r1["epochs"]
    assert r0["epochs"][0]["weights"] != r0["epochs"][2]["weights"]
    on = [e["observers_on"] for e in r0["epochs"]]
    assert on[0] > 0 and on[1:] == [0, 0]  # frozen from epoch 1 on, on both ranks
    if name == "simulated_lsq":
        freeze = [set(e["freeze_bn"]) for e in r0["epochs"]]
        assert freeze == [{False}, {True}, {True}]
    for key, value in r0["final"].items():
        assert torch.equal(value, r1["final"][key]), key


def test_ddp_qat_reaches_the_single_process_top1(ranks, float_path: Path) -> None:
    data = load_data("digits", batch_size=64)
    single = qat(_float_model(str(float_path)), data.train, val=data.val,
                 train_config=TrainConfig(epochs=3, **QAT), freeze_observers_epoch=1)
    one = accuracy(single, data.test)
    two = ranks[0]["folded"]["top1"]
    assert ranks[1]["folded"]["top1"] == two
    assert abs(two - one) <= 0.003 + 1e-9, (one, two)  # 360 test images: at most 1 apart


@pytest.mark.slow
def test_ddp_qat_of_the_demo_teacher_reaches_the_single_process_top1(tmp_path: Path) -> None:
    """The demo's teacher (ResNet-14 width 16) on digits: Fashion-MNIST does not fit in
    CI time here. Same global batch (64) and epochs (2) in both runs."""
    data = load_data("digits", batch_size=64)
    torch.manual_seed(0)
    teacher = build_model("resnet14", width=16, num_classes=10, in_channels=1)
    fit(teacher, data.train, config=TrainConfig(epochs=8, lr=0.1, threads=1))
    path = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), path)
    one = accuracy(_teacher_qat(str(path)), data.test)
    r0, r1 = _ranks("teacher_qat", tmp_path / "out", str(path))
    assert r0["top1"] == r1["top1"] and one > 0.95
    assert all(torch.equal(v, r1["scales"][k]) for k, v in r0["scales"].items())
    assert abs(r0["top1"] - one) <= 0.003 + 1e-9, (one, r0["top1"])


if __name__ == "__main__":
    JOBS[sys.argv[1]](Path(sys.argv[2]), *sys.argv[3:])
