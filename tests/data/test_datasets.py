import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from torchslim.data import DataBundle, calibration_subset, dataset_names, load_data
from torchslim.errors import ConfigError, UnknownNameError

MEAN, STD = 0.2860, 0.3530
N_TRAIN, N_TEST = 200, 50
REAL = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


@pytest.fixture
def fashion_root(tmp_path: Path) -> Path:
    """A tiny Fashion-MNIST: image i has its whole first row = i (flip-invariant id),
    random pixels elsewhere; train ids 0..199, test ids 200..249."""
    rng = np.random.default_rng(0)
    for prefix, ids in (("train", range(N_TRAIN)), ("t10k", range(N_TRAIN, N_TRAIN + N_TEST))):
        ids = np.array(ids, dtype=np.uint8)
        images = rng.integers(0, 256, (len(ids), 28, 28), dtype=np.uint8)
        images[:, 0, :] = ids[:, None]
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", (ids % 10).astype(np.uint8))
    return tmp_path


def ids(x: torch.Tensor) -> list[int]:
    """Recover image ids from normalised tensors (N, 1, 28, 28)."""
    return (x[:, 0, 0, 0] * STD + MEAN).mul(255).round().long().tolist()


def split_ids(bundle: DataBundle) -> tuple[list[int], list[int], list[int]]:
    return tuple(ids(loader.dataset.tensors[0])  # type: ignore[return-value]
                 for loader in (bundle.train, bundle.val, bundle.test))


def test_dataset_names() -> None:
    assert dataset_names() == ["digits", "fashion-mnist"]


def test_unknown_dataset() -> None:
    with pytest.raises(UnknownNameError, match="'cifar'.*digits, fashion-mnist"):
        load_data("cifar")


def test_fashion_splits(fashion_root: Path) -> None:
    bundle = load_data(root=fashion_root, val_size=40, batch_size=16, eval_batch_size=25)
    train, val, test = split_ids(bundle)
    assert (len(train), len(val), len(test)) == (160, 40, 50)
    assert sorted(train + val) == list(range(N_TRAIN))
    assert test == list(range(N_TRAIN, N_TRAIN + N_TEST))   # official order, untouched
    assert bundle.info.class_names[0] == "T-shirt/top" and bundle.info.input_shape == (1, 28, 28)
    assert bundle.train.batch_size == 16 and bundle.test.batch_size == 25


def test_fashion_labels_and_normalisation(fashion_root: Path) -> None:
    bundle = load_data(root=fashion_root, val_size=40)
    x, y = bundle.val.dataset.tensors
    assert x.dtype == torch.float32 and x.shape == (40, 1, 28, 28) and y.dtype == torch.int64
    assert y.tolist() == [i % 10 for i in ids(x)]
    raw = torch.tensor(ids(x), dtype=torch.float32) / 255
    torch.testing.assert_close(x[:, 0, 0, 5], (raw - MEAN) / STD)


def test_fashion_split_is_deterministic_by_seed(fashion_root: Path) -> None:
    a = split_ids(load_data(root=fashion_root, val_size=40, seed=1))
    b = split_ids(load_data(root=fashion_root, val_size=40, seed=1))
    c = split_ids(load_data(root=fashion_root, val_size=40, seed=2))
    assert a == b
    assert sorted(a[1]) != sorted(c[1])


def test_limits_take_seeded_subsets(fashion_root: Path) -> None:
    full_train, _, _ = split_ids(load_data(root=fashion_root, val_size=40))
    bundle = load_data(root=fashion_root, val_size=40, train_limit=50, test_limit=20)
    train, val, test = split_ids(bundle)
    assert (len(train), len(val), len(test)) == (50, 40, 20)
    assert set(train) <= set(full_train) and set(test) <= set(range(N_TRAIN, N_TRAIN + N_TEST))
    assert split_ids(load_data(root=fashion_root, val_size=40, train_limit=50))[0] == train
    big = load_data(root=fashion_root, val_size=40, train_limit=10_000)
    assert len(big.train.dataset) == 160


def test_bad_options(fashion_root: Path) -> None:
    with pytest.raises(ConfigError, match="val_size=5000 must be smaller than the 200"):
        load_data(root=fashion_root)
    with pytest.raises(ConfigError, match="batch_size=0"):
        load_data(root=fashion_root, val_size=40, batch_size=0)
    with pytest.raises(ConfigError, match="train_limit=0"):
        load_data(root=fashion_root, val_size=40, train_limit=0)


def test_train_loader_shuffles_and_flips_deterministically(fashion_root: Path) -> None:
    def epoch(bundle: DataBundle) -> torch.Tensor:
        return torch.cat([x for x, _ in bundle.train])

    a = epoch(load_data(root=fashion_root, val_size=40, batch_size=32, seed=3))
    b = epoch(load_data(root=fashion_root, val_size=40, batch_size=32, seed=3))
    assert torch.equal(a, b)
    bundle = load_data(root=fashion_root, val_size=40, batch_size=32, seed=3)
    stored = dict(zip(ids(bundle.train.dataset.tensors[0]), bundle.train.dataset.tensors[0]))
    flipped = [not torch.equal(x, stored[i]) for i, x in zip(ids(a), a)]
    assert all(torch.equal(x.flip(-1), stored[i]) for i, x, f in zip(ids(a), a, flipped) if f)
    assert 40 < sum(flipped) < 120                      # p = 0.5 over 160 images
    assert ids(a) != sorted(ids(a))                     # shuffled
    bundle.train.generator.manual_seed(7)               # what the training loop does per epoch
    first = epoch(bundle)
    bundle.train.generator.manual_seed(7)
    assert torch.equal(epoch(bundle), first)


def test_no_augmentation_when_disabled(fashion_root: Path) -> None:
    bundle = load_data(root=fashion_root, val_size=40, augment=False)
    x, _ = next(iter(bundle.train))
    stored = dict(zip(ids(bundle.train.dataset.tensors[0]), bundle.train.dataset.tensors[0]))
    assert all(torch.equal(img, stored[i]) for i, img in zip(ids(x), x))


def digit_keys(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x}


def test_digits_bundle() -> None:
    bundle = load_data("digits", batch_size=64, seed=0)
    sizes = [len(loader.dataset) for loader in (bundle.train, bundle.val, bundle.test)]
    assert sizes == [1078, 359, 360]
    x, y = next(iter(bundle.train))
    assert x.shape == (64, 1, 8, 8) and y.shape == (64,) and bundle.info.num_classes == 10
    train, val, test = (digit_keys(loader.dataset.tensors[0])
                        for loader in (bundle.train, bundle.val, bundle.test))
    # load_digits has a few duplicate images; the splits share at most those
    assert len(train & val) + len(train & test) + len(val & test) <= 5
    everything = torch.cat([loader.dataset.tensors[0]
                            for loader in (bundle.train, bundle.val, bundle.test)])
    assert abs(everything.mean().item()) < 1e-3 and abs(everything.std().item() - 1) < 1e-3


def test_digits_deterministic_by_seed() -> None:
    a, b, c = (load_data("digits", seed=s).val.dataset.tensors[0] for s in (4, 4, 5))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_digits_not_augmented() -> None:
    bundle = load_data("digits", batch_size=2000)
    x, _ = next(iter(bundle.train))
    assert digit_keys(x) == digit_keys(bundle.train.dataset.tensors[0])


def test_calibration_subset() -> None:
    bundle = load_data("digits")
    loader = calibration_subset(bundle, 100, seed=1, batch_size=32)
    batches = list(loader)
    assert [len(x) for x, _ in batches] == [32, 32, 32, 4]
    x = torch.cat([b[0] for b in batches])
    assert len(digit_keys(x)) >= 99     # drawn without replacement (modulo duplicate images)
    assert digit_keys(x) <= digit_keys(bundle.train.dataset.tensors[0])
    again = torch.cat([b[0] for b in calibration_subset(bundle.train, 100, seed=1)])
    other = torch.cat([b[0] for b in calibration_subset(bundle, 100, seed=2)])
    assert torch.equal(x, again) and not torch.equal(x, other)


def test_calibration_subset_too_large() -> None:
    with pytest.raises(ConfigError, match="n=5000 .* holds 1078"):
        calibration_subset(load_data("digits"), 5000)


@pytest.mark.skipif(not (REAL / "train-images-idx3-ubyte.gz").is_file(),
                    reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHSLIM_DATA", raising=False)
    bundle = load_data()
    sizes = [len(loader.dataset) for loader in (bundle.train, bundle.val, bundle.test)]
    assert sizes == [55000, 5000, 10000]
    x = bundle.val.dataset.tensors[0]   # 5,000 random training images: mean 0, std 1
    assert abs(x.mean().item()) < 0.02 and abs(x.std().item() - 1) < 0.02
