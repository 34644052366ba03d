"""Calibration data loading: .npz, .npy directories, images, and the errors for bad data."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.compress.common.data import load_calibration
from graphopt.compress.common.errors import CalibrationError
from graphopt.frontend.shapes import TensorSpec

IMG = [TensorSpec("input", (1, 3, 16, 20), "float32")]
TWO = [TensorSpec("a", (2, 4), "float32"), TensorSpec("b", (2, 3), "int64")]


def test_npz_keyed_by_input_names_batches_samples(tmp_path):
    p = tmp_path / "c.npz"
    np.savez(p, a=np.arange(5 * 4, dtype=np.float64).reshape(5, 4), b=np.ones((6, 3), np.int32))
    feeds = load_calibration(p, TWO)
    assert len(feeds) == 2  # 5 samples of a in batches of 2; the last half batch is dropped
    assert feeds[1]["a"].shape == (2, 4) and feeds[1]["a"].dtype == np.float32
    assert feeds[0]["b"].dtype == np.int64
    np.testing.assert_array_equal(feeds[1]["a"][0], np.arange(8, 12))


def test_npz_single_array_and_labels_ignored(tmp_path):
    p = tmp_path / "c.npz"
    np.savez(p, x=np.zeros((3, 1, 3, 16, 20), np.float32), y=np.arange(3))
    feeds = load_calibration(p, IMG)
    assert len(feeds) == 3 and feeds[0]["input"].shape == (1, 3, 16, 20)


def test_npy_directory(tmp_path):
    for i in range(4):
        np.save(tmp_path / f"s{i}.npy", np.full((1, 3, 16, 20), i, np.float32))
    feeds = load_calibration(tmp_path, IMG, limit=3)
    assert [float(f["input"][0, 0, 0, 0]) for f in feeds] == [0.0, 1.0, 2.0]


def test_image_directory(tmp_path):
    from PIL import Image

    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    Image.fromarray(rgb).save(tmp_path / "red.png")
    feeds = load_calibration(tmp_path, IMG)
    x = feeds[0]["input"]
    assert x.shape == (1, 3, 16, 20)
    red = [(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225]
    np.testing.assert_allclose(x[0, :, 5, 5], red, rtol=1e-5)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"input": np.zeros((2, 3, 16, 21), np.float32)}, "have shape"),
        ({"input": np.zeros((0, 3, 16, 20), np.float32)}, "empty"),
        ({"input": np.zeros((2, 3, 16, 20), np.complex64)}, "dtype"),
        ({"other": np.zeros((2, 3, 16, 20)), "more": np.zeros(1)}, "no samples for input"),
    ],
)
def test_bad_data(tmp_path, arrays, message):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(CalibrationError, match=message):
        load_calibration(p, IMG)


def test_missing_and_empty(tmp_path):
    with pytest.raises(CalibrationError, match="not found"):
        load_calibration(tmp_path / "nope.npz", IMG)
    with pytest.raises(CalibrationError, match="no .npy or image files"):
        load_calibration(tmp_path, IMG)
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    with pytest.raises(CalibrationError, match="2 inputs"):
        load_calibration(tmp_path, TWO)
