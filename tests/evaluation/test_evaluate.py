import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchslim.errors import ConfigError
from torchslim.evaluation import count_params, evaluate, latency
from torchslim.exporters.onnx import export_onnx
from torchslim.runtime import OnnxRuntimeSession, TorchSession

INPUT_SHAPE = (1, 8, 8)


@pytest.fixture(scope="module", autouse=True)
def no_pause():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(latency, "SWITCH_PAUSE_S", 0.0)
        yield


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 5)).eval()


@pytest.fixture(scope="module")
def loader():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(48, *INPUT_SHAPE, generator=g)
    y = torch.randint(0, 5, (48,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16)


@pytest.fixture(scope="module")
def torch_result(model, loader):
    return evaluate(TorchSession(model, threads=1), loader, repeats=3, warmup=1,
                    measure_memory=False, class_names=list("abcde"))


@pytest.fixture(scope="module")
def onnx_path(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "m.onnx",
                       input_shape=INPUT_SHAPE)


def test_torch_result_accuracy_is_consistent(torch_result, model):
    r = torch_result
    assert r.name == "torch-fp32" and r.runtime == "torch" and r.n == 48
    assert 0.0 <= r.top1 <= r.top5 <= 1.0
    assert sum(map(sum, r.confusion)) == 48
    diag = sum(r.confusion[i][i] for i in range(5))
    assert r.top1 == pytest.approx(diag / 48, abs=1e-6)
    assert r.params == count_params(model) == r.nonzero_params
    assert r.macs == 9 * 4 * 64 + 256 * 5
    assert r.bytes > r.params * 4  # safetensors of the state dict
    assert r.machine["threads"] == 1 and r.agreement is None
    assert r.extra["class_names"] == list("abcde")


def test_onnx_matches_torch_reference(torch_result, onnx_path, loader, model):
    session = OnnxRuntimeSession(onnx_path, threads=1)
    r = evaluate(session, loader, reference=torch_result, repeats=3, warmup=1,
                 measure_memory=False)
    assert r.runtime == "onnxruntime" and r.precision == "fp32"
    assert r.agreement >= 0.999
    assert r.cosine > 0.9999
    assert r.bytes == os.path.getsize(onnx_path)
    assert r.params == count_params(model) and r.macs is None
    assert r.artifact == str(onnx_path)
    assert set(r.latency_ms) == {"1", "32"}
    for stats in r.latency_ms.values():
        assert stats["p50"] <= stats["p90"] <= stats["p99"]
    assert r.items_per_s["32"] > 0


def test_reference_of_other_length_is_rejected(torch_result, model):
    data = [(torch.randn(4, *INPUT_SHAPE), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(ConfigError, match="same data"):
        evaluate(TorchSession(model, threads=1), data, reference=torch_result, repeats=1,
                 warmup=0, batch_sizes=(1,), measure_memory=False)


def test_empty_data_is_config_error(model):
    with pytest.raises(ConfigError, match="no batches"):
        evaluate(TorchSession(model, threads=1), [], measure_memory=False)


def test_numpy_batches_are_accepted(model):
    data = [(np.zeros((2, *INPUT_SHAPE), np.float32), np.array([0, 1]))]
    r = evaluate(TorchSession(model, threads=1), data, name="np", repeats=1, warmup=0,
                 batch_sizes=(1,), measure_memory=False)
    assert r.name == "np" and r.n == 2 and r.per_class[2] is None
