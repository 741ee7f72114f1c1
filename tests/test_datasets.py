"""IDX reader, Fashion-MNIST loader and stratified subsets, checked on files written here with `struct`."""
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from fastfreeze.data.fashion_mnist import (DEBIAN_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, load_fashion_mnist,
                                           read_idx, stratified_subset)


def idx_bytes(type_code: int, shape: tuple, values: bytes) -> bytes:
    """An IDX file written by hand: 0, 0, type code, ndim, big-endian uint32 sizes, then the values."""
    return bytes([0, 0, type_code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + values


# 2 images of 2x3 pixels, values 0..5 and 250..255, and 2 labels.
IMAGES = idx_bytes(0x08, (2, 2, 3), bytes([0, 1, 2, 3, 4, 5, 250, 251, 252, 253, 254, 255]))
LABELS = idx_bytes(0x08, (2,), bytes([7, 3]))


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_uint8_images_and_labels(tmp_path: Path, compress: bool):
    for name, content in [("images", IMAGES), ("labels", LABELS)]:
        (tmp_path / name).write_bytes(gzip.compress(content) if compress else content)
    images, labels = read_idx(tmp_path / "images"), read_idx(tmp_path / "labels")
    assert images.dtype == np.uint8 and images.shape == (2, 2, 3)
    assert images[0].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert images[1].tolist() == [[250, 251, 252], [253, 254, 255]]
    assert labels.dtype == np.uint8 and labels.tolist() == [7, 3]


def test_read_idx_detects_gzip_by_suffix_or_magic(tmp_path: Path):
    (tmp_path / "labels.gz").write_bytes(gzip.compress(LABELS))
    assert read_idx(tmp_path / "labels.gz").tolist() == [7, 3]
    (tmp_path / "fake.gz").write_bytes(LABELS)  # named .gz, not compressed
    with pytest.raises(ValueError, match="not gzip"):
        read_idx(tmp_path / "fake.gz")


def test_read_idx_big_endian_int16_and_float32(tmp_path: Path):
    (tmp_path / "i16").write_bytes(idx_bytes(0x0B, (3,), struct.pack(">3h", -2, 300, 32767)))
    values = read_idx(tmp_path / "i16")
    assert values.dtype == np.int16 and values.tolist() == [-2, 300, 32767]
    assert values.dtype.isnative and values.flags.writeable

    (tmp_path / "f32").write_bytes(idx_bytes(0x0D, (2, 2), struct.pack(">4f", 1.5, -0.25, 3.0, 1e-3)))
    values = read_idx(tmp_path / "f32")
    assert values.dtype == np.float32 and values.shape == (2, 2)
    np.testing.assert_array_equal(values, np.array([[1.5, -0.25], [3.0, 1e-3]], dtype=np.float32))


@pytest.mark.parametrize("content, message", [
    (IMAGES[:-1], "truncated"),                          # one data byte short
    (IMAGES[:6], "truncated"),                           # ends inside the dimension sizes
    (IMAGES + b"\x00", "trailing"),                      # one byte too many
    (b"\x01\x00" + IMAGES[2:], "not an IDX file"),       # bad magic
    (b"", "not an IDX file"),                            # empty
    (bytes([0, 0, 0x07, 1]) + struct.pack(">I", 1) + b"\x00", "type code 0x07"),
])
def test_read_idx_rejects_bad_files(tmp_path: Path, content: bytes, message: str):
    (tmp_path / "bad").write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_idx(tmp_path / "bad")


def test_read_idx_rejects_truncated_gzip(tmp_path: Path):
    compressed = gzip.compress(IMAGES)
    (tmp_path / "cut.gz").write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(ValueError, match="damaged gzip"):
        read_idx(tmp_path / "cut.gz")


def test_read_idx_missing_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nope"):
        read_idx(tmp_path / "nope")


# ----------------------------------------------------------------------------------------------------------------

def test_stratified_subset_exact_counts_and_deterministic():
    y = np.array([0] * 10 + [1] * 5 + [2] * 7 + [5] * 3)
    rng = np.random.default_rng(1)
    y = y[rng.permutation(len(y))]
    indices = stratified_subset(y, 3, seed=4)
    assert len(indices) == 12 and len(set(indices.tolist())) == 12
    assert np.bincount(y[indices]).tolist() == [3, 3, 3, 0, 0, 3]
    assert np.array_equal(indices, stratified_subset(y, 3, seed=4))
    assert any(not np.array_equal(indices, stratified_subset(y, 3, seed=s)) for s in range(5, 10))


def test_stratified_subset_errors():
    y = np.array([0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match="only 2 examples"):
        stratified_subset(y, 3, seed=0)
    with pytest.raises(ValueError, match="positive integer"):
        stratified_subset(y, 0, seed=0)


# ----------------------------------------------------------------------------------------------------------------

def write_tiny_fashion_mnist(folder: Path, n_train: int = 4, n_test: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in [("train", n_train), ("t10k", n_test)]:
        pixels = bytes(i % 256 for i in range(n * 28 * 28))
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(0x08, (n, 28, 28), pixels)))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(0x08, (n,), bytes(i % 10 for i in range(n))))


def test_load_fashion_mnist_from_root(tmp_path: Path):
    write_tiny_fashion_mnist(tmp_path)
    x_train, y_train, x_test, y_test = load_fashion_mnist(tmp_path)
    assert x_train.shape == (4, 28, 28) and x_train.dtype == np.uint8
    assert x_train[0, 0, :3].tolist() == [0, 1, 2] and x_train[1, 0, 0] == 784 % 256
    assert y_train.dtype == np.int64 and y_train.tolist() == [0, 1, 2, 3]
    assert x_test.shape == (2, 28, 28) and y_test.tolist() == [0, 1]


def test_load_fashion_mnist_from_env_var(tmp_path: Path, monkeypatch):
    write_tiny_fashion_mnist(tmp_path / "fashion-mnist", n_train=6)
    monkeypatch.setenv("FASTFREEZE_DATA", str(tmp_path))
    assert load_fashion_mnist()[0].shape == (6, 28, 28)


def test_load_fashion_mnist_missing_says_how_to_get_it(tmp_path: Path):
    with pytest.raises(FileNotFoundError) as error:
        load_fashion_mnist(tmp_path / "empty")
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "FASTFREEZE_DATA" in message and "download=True" in message


@pytest.mark.skipif(not (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_debian_package():
    x_train, y_train, x_test, y_test = load_fashion_mnist(DEBIAN_FASHION_MNIST_DIR)
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int64
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10
    assert x_train.max() == 255 and x_train.min() == 0
    assert len(FASHION_MNIST_CLASSES) == 10 and FASHION_MNIST_CLASSES[9] == "Ankle boot"
    subset = stratified_subset(y_train, 10, seed=0)
    assert np.bincount(y_train[subset]).tolist() == [10] * 10
