import io

import numpy as np
import pytest

from torchslim.data import load_data
from torchslim.errors import ConfigError, UnknownNameError
from torchslim.evaluation.robustness import (CORRUPTIONS, corrupt, corrupt_pixels, from_pixels,
                                             to_pixels)
from torchslim.evaluation.robustness._jpeg import LUMA, dct_matrix, jpeg_quantize, quality_table
from torchslim.evaluation.robustness.suite import collect_split

NAMES = CORRUPTIONS.names()
RANDOM = {"gaussian_noise", "shift"}   # the two that draw from the seed


@pytest.fixture(scope="module")
def digits():
    data = load_data("digits")
    x, _ = collect_split(data.test)
    return x[:64], data.info.mean, data.info.std


def test_registry_holds_the_six_corruptions():
    assert NAMES == ["blur", "brightness", "contrast", "gaussian_noise", "jpeg", "shift"]


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_images(digits, name):
    x, mean, std = digits
    a = corrupt(x, name, 3, mean=mean, std=std, seed=7)
    b = corrupt(x.copy(), name, 3, mean=mean, std=std, seed=7)
    assert a.dtype == np.float32 and a.shape == x.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, x)   # it did corrupt


@pytest.mark.parametrize("name", NAMES)
def test_other_seed_other_images_only_where_random(digits, name):
    x, mean, std = digits
    a = corrupt(x, name, 3, mean=mean, std=std, seed=0)
    b = corrupt(x, name, 3, mean=mean, std=std, seed=1)
    assert np.array_equal(a, b) is (name not in RANDOM)


@pytest.mark.parametrize("name", NAMES)
def test_severity_zero_is_the_identity(digits, name):
    x, mean, std = digits
    np.testing.assert_array_equal(corrupt(x, name, 0, mean=mean, std=std), x)


@pytest.mark.parametrize("name", NAMES)
def test_harm_grows_with_severity(digits, name):
    x, mean, std = digits
    p = to_pixels(x, mean, std)
    err = [float(np.abs(corrupt_pixels(p, name, s) - p).mean()) for s in range(6)]
    assert err[0] == 0.0
    assert all(a <= b + 1e-7 for a, b in zip(err, err[1:])), err
    assert err[5] > err[1] > 0


def test_corruption_happens_in_pixel_space_and_is_clipped():
    mean, std = 0.25, 0.5
    pixels = np.array([0.0, 0.5, 0.95, 1.0], np.float32).reshape(1, 1, 2, 2)
    x = from_pixels(pixels, mean, std)                       # what a loader yields
    out = to_pixels(corrupt(x, "brightness", 1, mean=mean, std=std), mean, std)
    np.testing.assert_allclose(out.reshape(-1), [0.1, 0.6, 1.0, 1.0], atol=1e-6)
    out = to_pixels(corrupt(x, "contrast", 5, mean=mean, std=std), mean, std)
    m = pixels.mean()
    np.testing.assert_allclose(out.reshape(-1), (pixels.reshape(-1) - m) * 0.2 + m, atol=1e-6)


def test_noise_has_its_sigma():
    p = np.full((200, 1, 16, 16), 0.5, np.float32)
    out = corrupt_pixels(p, "gaussian_noise", 3)
    assert abs(float((out - p).std()) - 0.12) < 0.003
    assert abs(float((out - p).mean())) < 0.003


def test_shift_moves_a_pixel_by_the_severity_in_some_direction():
    p = np.zeros((50, 1, 9, 9), np.float32)
    p[:, :, 4, 4] = 1.0
    for severity, k in ((1, 1), (3, 2), (5, 3)):
        out = corrupt_pixels(p, "shift", severity, seed=3)
        assert np.all(out.sum(axis=(1, 2, 3)) == 1.0)
        rows, cols = np.nonzero(out[:, 0] == 1.0)[1:]
        moves = np.stack([rows - 4, cols - 4], axis=1)
        assert np.all(np.abs(moves).max(axis=1) == k)
        assert len({tuple(m) for m in moves}) > 3   # directions drawn per image


def test_blur_keeps_a_flat_image_and_spreads_a_point():
    flat = np.full((2, 3, 10, 10), 0.4, np.float32)
    np.testing.assert_allclose(corrupt_pixels(flat, "blur", 5), flat, atol=1e-6)
    point = np.zeros((1, 1, 11, 11), np.float32)
    point[0, 0, 5, 5] = 1.0
    out = corrupt_pixels(point, "blur", 3)
    assert abs(float(out.sum()) - 1.0) < 1e-5 and out[0, 0, 5, 5] < 0.2
    np.testing.assert_allclose(out[0, 0], out[0, 0].T, atol=1e-7)   # isotropic


def test_dct_matrix_is_orthonormal():
    d = dct_matrix()
    np.testing.assert_allclose(d @ d.T, np.eye(8), atol=1e-12)
    np.testing.assert_allclose(quality_table(LUMA, 50), LUMA)
    assert quality_table(LUMA, 100).max() == 1 and quality_table(LUMA, 10)[0, 0] == 80


@pytest.mark.parametrize("mode, within", [("L", 0.1), ("RGB", 1.5)])
def test_jpeg_matches_pillows_codec(mode, within):
    """Our block-DCT quantization lands on libjpeg's own round trip (to 0.01 of a level in
    gray, about one level in colour, where libjpeg's YCbCr rounding differs), while both
    move the pixels by about 10 levels."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    channels = 1 if mode == "L" else 3
    img = np.stack([0.5 + 0.3 * np.sin(xx / (3 + c)) * np.cos(yy / (4 + c))
                    for c in range(channels)])
    img = np.clip(img + rng.normal(0, 0.05, img.shape), 0, 1)
    img = np.round(img * 255) / 255
    ours = jpeg_quantize(img[None].astype(np.float32), 20)[0]
    buf = io.BytesIO()
    arr = (img * 255).round().astype(np.uint8)
    Image.fromarray(arr[0] if mode == "L" else arr.transpose(1, 2, 0), mode).save(
        buf, format="JPEG", quality=20, subsampling=0)
    theirs = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255
    theirs = theirs[None] if mode == "L" else theirs.transpose(2, 0, 1)
    levels = lambda a, b: float(np.abs(a - b).mean() * 255)  # noqa: E731
    assert levels(theirs, img) > 8.0
    assert levels(ours, theirs) < within


def test_three_channels_with_per_channel_statistics():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 12, 12)).astype(np.float32)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    for name in NAMES:
        out = corrupt(x, name, 5, mean=mean, std=std)
        p = to_pixels(out, mean, std)
        assert out.shape == x.shape and 0.0 <= p.min() and p.max() <= 1.0
    with pytest.raises(ConfigError, match="2 values for 3-channel"):
        corrupt(x, "blur", 1, mean=[0.5, 0.5], std=0.2)


def test_bad_inputs_are_one_clear_error():
    x = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(UnknownNameError, match="unknown corruption 'fog'"):
        corrupt(x, "fog", 1, mean=0.0, std=1.0)
    with pytest.raises(ConfigError, match="severity=6"):
        corrupt(x, "blur", 6, mean=0.0, std=1.0)
    with pytest.raises(ConfigError, match=r"images \(N, C, H, W\)"):
        corrupt(np.zeros((2, 64), np.float32), "blur", 1, mean=0.0, std=1.0)
    with pytest.raises(ConfigError, match="std"):
        corrupt(x, "blur", 1, mean=0.0, std=0.0)
