import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from torchslim.data import fashion_mnist_dir, read_idx
from torchslim.errors import DataFormatError, DataNotFoundError

CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
         np.float32: 0x0D, np.float64: 0x0E}
STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, CODES[array.dtype.type], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_round_trip_images_and_labels(tmp_path: Path, suffix: str) -> None:
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    got_images = read_idx(write(tmp_path / f"img{suffix}", idx_bytes(images)))
    got_labels = read_idx(write(tmp_path / f"lab{suffix}", idx_bytes(labels)))
    assert got_images.dtype == np.uint8 and got_images.shape == (3, 4, 5)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_multibyte_types_are_big_endian_on_disk(tmp_path: Path, dtype: type) -> None:
    values = np.array([[-3, 2], [1000 if dtype != np.int8 else 100, -1]], dtype=dtype)
    got = read_idx(write(tmp_path / "v", idx_bytes(values)))
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, values)


def test_truncated_file(tmp_path: Path) -> None:
    data = idx_bytes(np.zeros((3, 4, 5), dtype=np.uint8))[:-7]
    message = r"needs 60 data bytes but the file has 53.*--reinstall"
    with pytest.raises(DataFormatError, match=message):
        read_idx(write(tmp_path / "t.gz", data))


def test_bad_magic(tmp_path: Path) -> None:
    data = b"\x1f\x00\x08\x01" + struct.pack(">I", 2) + b"ab"
    with pytest.raises(DataFormatError, match="bad IDX magic 1f000801"):
        read_idx(write(tmp_path / "m", data))


def test_unknown_dtype_code(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="dtype code 0x07"):
        read_idx(write(tmp_path / "c", b"\x00\x00\x07\x01" + struct.pack(">I", 0)))


def test_corrupt_gzip(tmp_path: Path) -> None:
    good = gzip.compress(idx_bytes(np.zeros(100, dtype=np.uint8)))
    path = tmp_path / "bad.gz"
    path.write_bytes(good[:15])   # a gzip header with a cut-off stream
    message = r"bad\.gz: corrupt gzip.*apt-get install --reinstall"
    with pytest.raises(DataFormatError, match=message):
        read_idx(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=r"nope\.gz.*apt-get"):
        read_idx(tmp_path / "nope.gz")


def make_fashion_dir(directory: Path, compress: bool = True) -> Path:
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    labels = np.array([1, 2], dtype=np.uint8)
    for stem in STEMS:
        name = stem + (".gz" if compress else "")
        write(directory / name, idx_bytes(images if "images" in stem else labels))
    return directory


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              compress: bool) -> None:
    monkeypatch.setenv("TORCHSLIM_DATA", str(make_fashion_dir(tmp_path, compress)))
    assert fashion_mnist_dir() == tmp_path


def test_fashion_dir_argument_beats_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHSLIM_DATA", str(tmp_path / "elsewhere"))
    assert fashion_mnist_dir(make_fashion_dir(tmp_path)) == tmp_path


def test_fashion_dir_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHSLIM_DATA", str(tmp_path))
    with pytest.raises(DataNotFoundError) as info:
        fashion_mnist_dir()
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path) in message and "TORCHSLIM_DATA" in message
    assert "train-images-idx3-ubyte.gz" in message and "4 of 4 files missing" in message
    assert "apt-get update && apt-get install -y dataset-fashion-mnist" in message
