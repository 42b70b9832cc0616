import json
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from torchslim.errors import ConfigError
from torchslim.evaluation import EvalResult, count_params, evaluate, latency, output_cosine
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


class TokenClassifier(nn.Module):
    """Token ids (int64) and a float mask, as a transformers encoder takes them."""

    def __init__(self, vocab: int = 20, width: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.proj = nn.Linear(width, width)
        self.head = nn.Linear(width, classes)

    def hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(self.embed(ids))) * mask[..., None]   # (N, T, width)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.hidden(ids, mask)
        return self.head(h.sum(1) / mask.sum(1, keepdim=True))


class Encoder(TokenClassifier):
    forward = TokenClassifier.hidden   # embeddings out, no classes


def token_batches(n_batches: int = 3, size: int = 4, seq: int = 6) -> list:
    g = torch.Generator().manual_seed(2)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(0, 20, (size, seq), generator=g)
        mask = torch.ones(size, seq)
        mask[:, seq - 2:] = 0.0   # padding at the end
        out.append(({"ids": ids, "mask": mask}, torch.randint(0, 3, (size,), generator=g)))
    return out


def example(batch: tuple) -> dict:
    return batch[0]


def test_dict_inputs_with_integer_ids_are_classified_timed_and_counted():
    torch.manual_seed(0)
    model = TokenClassifier().eval()
    data = token_batches()
    session = TorchSession(model, threads=1, example_inputs=example(data[0]))
    r = evaluate(session, data, repeats=2, warmup=0, batch_sizes=(1, 8), measure_memory=False)
    with torch.no_grad():
        logits = torch.cat([model(**x) for x, _ in data])
    labels = torch.cat([y for _, y in data])
    assert r.n == 12
    assert r.top1 == pytest.approx(float((logits.argmax(1) == labels).float().mean()), abs=1e-6)
    assert r.macs == 6 * 8 * 8 + 8 * 3            # 6 tokens through proj, one head call
    assert set(r.latency_ms) == {"1", "8"}
    assert np.allclose(r.logits, logits.numpy(), atol=1e-6)


def test_tuple_inputs_through_onnx_runtime_keep_the_int64_ids(tmp_path):
    torch.manual_seed(0)
    model = TokenClassifier().eval()
    data = [((x["ids"], x["mask"]), y) for x, y in token_batches()]
    path = tmp_path / "tokens.onnx"
    torch.onnx.export(model, data[0][0], str(path), input_names=["ids", "mask"],
                      output_names=["logits"], dynamic_axes={"ids": {0: "batch"},
                                                             "mask": {0: "batch"}},
                      dynamo=False)
    session = OnnxRuntimeSession(path, threads=1)
    assert [s.dtype for s in session.inputs] == ["int64", "float32"]
    base = evaluate(TorchSession(model, threads=1, example_inputs=data[0][0]), data,
                    repeats=1, warmup=0, batch_sizes=(2,), measure_memory=False)
    r = evaluate(session, data, reference=base, repeats=1, warmup=0, batch_sizes=(2,),
                 measure_memory=True)
    assert r.agreement == 1.0 and r.cosine > 0.99999
    assert r.peak_mem_bytes is None and "float input" in r.extra["peak_mem_skipped"]


def test_metric_measures_embeddings_against_the_reference():
    torch.manual_seed(0)
    model = Encoder().eval()
    data = [(x, None) for x, _ in token_batches()]
    inputs = example(data[0])
    base = evaluate(TorchSession(model, threads=1, example_inputs=inputs), data,
                    metric=output_cosine, repeats=1, warmup=0, batch_sizes=(1,),
                    measure_memory=False)
    noisy = Encoder().eval()
    noisy.load_state_dict(model.state_dict())
    with torch.no_grad():
        noisy.proj.weight.add_(0.1 * torch.randn_like(noisy.proj.weight))
    r = evaluate(TorchSession(noisy, threads=1, example_inputs=inputs), data, reference=base,
                 metric=output_cosine, repeats=1, warmup=0, batch_sizes=(1,),
                 measure_memory=False)
    assert base.top1 is None and base.per_class == [] and base.agreement is None
    assert base.metrics == {}                       # nothing to compare the baseline with
    assert r.logits.shape == (12, 6, 8)
    a, b = base.logits.reshape(12, -1), r.logits.reshape(12, -1)
    by_hand = np.mean(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))
    assert r.metrics == {"cosine_to_reference": pytest.approx(by_hand, abs=1e-6)}
    assert 0.5 < r.metrics["cosine_to_reference"] < 0.999
    assert r.cosine == pytest.approx(by_hand, abs=1e-6)
    back = EvalResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back.metrics == r.metrics and back.top1 is None


def test_metric_against_float_targets_and_a_custom_metric():
    torch.manual_seed(0)
    model = Encoder().eval()
    with torch.no_grad():
        data = [(x, model(**x)) for x, _ in token_batches()]  # targets: the fp32 embeddings
    session = TorchSession(model, threads=1, example_inputs=example(data[0]))
    r = evaluate(session, data, metric=output_cosine, repeats=1, warmup=0, batch_sizes=(1,),
                 measure_memory=False)
    assert r.metrics["cosine_to_targets"] == pytest.approx(1.0, abs=1e-6)

    def max_error(outputs, targets, reference):
        return {"max_abs_error": float(np.abs(outputs - targets).max())}

    r = evaluate(session, data, metric=max_error, repeats=1, warmup=0, batch_sizes=(1,),
                 measure_memory=False)
    assert r.metrics == {"max_abs_error": 0.0}


def test_targets_that_are_not_labels_need_a_metric():
    model = Encoder().eval()
    data = [(x, None) for x, _ in token_batches(1)]
    session = TorchSession(model, threads=1, example_inputs=example(data[0]))
    with pytest.raises(ConfigError, match="metric=output_cosine"):
        evaluate(session, data, repeats=1, warmup=0, batch_sizes=(1,), measure_memory=False)
    with pytest.raises(ConfigError, match="finite number"):
        evaluate(session, data, metric=lambda o, t, r: {"bad": float("nan")}, repeats=1,
                 warmup=0, batch_sizes=(1,), measure_memory=False)


def test_a_batch_that_is_not_a_pair_is_explained(model):
    with pytest.raises(ConfigError, match=r"\(inputs, target\)"):
        evaluate(TorchSession(model, threads=1), [torch.zeros(2, *INPUT_SHAPE)],
                 measure_memory=False)
