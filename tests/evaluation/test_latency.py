import numpy as np
import pytest

from torchslim.errors import ConfigError
from torchslim.evaluation import latency
from torchslim.evaluation.latency import measure_latency, tile_batch


class Recorder:
    runtime, precision, threads, artifact, name = "fake", "fp32", 1, None, "fake"

    def __init__(self):
        self.batches = []

    def run(self, batch):
        self.batches.append(batch.shape[0])
        return np.zeros((batch.shape[0], 2), dtype=np.float32)


@pytest.fixture(autouse=True)
def no_pause(monkeypatch):
    monkeypatch.setattr(latency, "SWITCH_PAUSE_S", 0.0)


def test_tile_batch_cycles_real_samples():
    samples = np.arange(3, dtype=np.float32).reshape(3, 1)
    np.testing.assert_array_equal(tile_batch(samples, 5)[:, 0], [0, 1, 2, 0, 1])


def test_warmup_then_repeats_per_batch_size():
    session = Recorder()
    lat, ips = measure_latency(session, np.ones((4, 2)), batch_sizes=(1, 8), repeats=5,
                               warmup=2)
    assert session.batches == [1] * 7 + [8] * 7
    assert set(lat) == {"1", "8"} and set(ips) == {"1", "8"}
    for stats in lat.values():
        assert stats["p50"] <= stats["p90"] <= stats["p99"]
        assert set(stats) == {"p50", "p90", "p99", "mean"}
    assert ips["8"] > 0


def test_min_time_extends_the_run():
    session = Recorder()
    measure_latency(session, np.ones((1, 2)), batch_sizes=(1,), repeats=1, warmup=0,
                    min_time_s=0.02)
    assert len(session.batches) > 1


def test_rejects_no_samples():
    with pytest.raises(ConfigError):
        measure_latency(Recorder(), np.ones((0, 2)), batch_sizes=(1,))


def test_tile_batch_tiles_every_input_and_keeps_integer_dtypes():
    samples = {"ids": np.array([[1, 2], [3, 4], [5, 6]], dtype=np.int64),
               "pixels": np.arange(3, dtype=np.float64).reshape(3, 1)}
    batch = tile_batch(samples, 4)
    assert batch["ids"].dtype == np.int64 and batch["pixels"].dtype == np.float32
    np.testing.assert_array_equal(batch["ids"][:, 0], [1, 3, 5, 1])
    np.testing.assert_array_equal(batch["pixels"][:, 0], [0, 1, 2, 0])
    ids, mask = tile_batch((samples["ids"], np.ones((3, 2), bool)), 2)
    assert ids.dtype == np.int64 and mask.dtype == bool and ids.shape == mask.shape == (2, 2)


def test_inputs_without_a_common_batch_axis_are_explained():
    with pytest.raises(ConfigError, match="common batch axis"):
        tile_batch({"a": np.ones((3, 2)), "b": np.ones((2, 2))}, 4)


class DictRecorder(Recorder):
    def run(self, batch):
        self.batches.append({k: (v.shape, v.dtype.name) for k, v in batch.items()})
        return np.zeros((len(batch["ids"]), 2), dtype=np.float32)


def test_latency_of_a_dict_input_model():
    session = DictRecorder()
    sample = {"ids": np.zeros((2, 5), np.int32), "mask": np.ones((2, 5), np.int64)}
    lat, _ = measure_latency(session, sample, batch_sizes=(3,), repeats=2, warmup=1)
    assert session.batches == [{"ids": ((3, 5), "int32"), "mask": ((3, 5), "int64")}] * 3
    assert set(lat) == {"3"}
