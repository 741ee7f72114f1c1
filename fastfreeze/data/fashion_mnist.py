"""Fashion-MNIST from local files: an IDX reader, the loader, and a stratified subset for low-data experiments.

The data is never fetched behind the user's back: `load_fashion_mnist` reads local IDX files (the Debian package
`dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist) and downloads only with `download=True`.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..utils.checks import check_int

__all__ = ["read_idx", "load_fashion_mnist", "stratified_subset", "FASHION_MNIST_CLASSES"]

PathLike = Union[str, os.PathLike]

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# IDX type code -> big-endian numpy dtype of the stored values.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_IDX_HEADER_SIZE = 4  # two zero bytes, the type code, the number of dimensions


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        if path.suffix == ".gz":
            raise ValueError(f"{path} is named .gz but is not gzip-compressed (it does not start with 1f 8b).")
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as error:  # truncated or corrupt gzip stream
        raise ValueError(f"{path} is a damaged gzip file ({error}); download it again.") from error


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), plain or gzip-compressed, into a native-endian numpy array.

    Format: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
    0x0E float64), the number of dimensions, one big-endian uint32 size per dimension, then the values, big-endian.
    Raises ValueError on a bad header, an unknown type code, or a file shorter or longer than its header says.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No IDX file at {path}.")
    data = _read_bytes(path)
    if len(data) < _IDX_HEADER_SIZE or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file: it must start with two zero bytes, a type code and the number "
                         f"of dimensions; it starts with {data[:4].hex(' ') or 'nothing'}.")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{type_code:02X}; expected one of "
                         f"{', '.join(f'0x{code:02X}' for code in _IDX_DTYPES)}.")
    dims_end = _IDX_HEADER_SIZE + 4 * ndim
    if len(data) < dims_end:
        raise ValueError(f"{path} is truncated: its header announces {ndim} dimensions but the file ends "
                         f"after {len(data)} bytes.")
    shape = tuple(int(size) for size in np.frombuffer(data, dtype=">u4", count=ndim, offset=_IDX_HEADER_SIZE))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - dims_end
    if actual != expected:
        problem = "is truncated" if actual < expected else "has trailing bytes"
        raise ValueError(f"{path} {problem}: shape {shape} of {dtype.name} needs {expected} bytes of data, "
                         f"the file has {actual}.")
    values = np.frombuffer(data, dtype=dtype, offset=dims_end).reshape(shape)
    return values.astype(dtype.newbyteorder("="))  # a native-endian, writable copy


# ----------------------------------------------------------------------------------------------------------------
# Fashion-MNIST
# ----------------------------------------------------------------------------------------------------------------

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_ENV_VAR = "FASTFREEZE_DATA"
_FILE_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fastfreeze" / "fashion-mnist"


def _find_files(directory: Path) -> Optional[list[Path]]:
    """The four IDX files (plain or .gz) in `directory`, its `fashion-mnist/` or its torchvision `FashionMNIST/raw/`."""
    for folder in (directory, directory / "fashion-mnist", directory / "FashionMNIST" / "raw"):
        found = []
        for stem in _FILE_STEMS:
            candidates = [folder / (stem + ".gz"), folder / stem]
            found.append(next((c for c in candidates if c.is_file()), None))
        if all(found):
            return found  # type: ignore[return-value]
    return None


def _download(directory: Path) -> list[Path]:
    try:
        from torchvision.datasets import FashionMNIST
    except ImportError:
        raise ImportError("download=True uses torchvision to fetch Fashion-MNIST: `pip install torchvision`.") from None
    directory.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        FashionMNIST(str(directory), train=train, download=True)
    files = _find_files(directory)
    if files is None:
        raise FileNotFoundError(f"torchvision downloaded Fashion-MNIST into {directory} but the IDX files are not "
                                f"where expected ({directory / 'FashionMNIST' / 'raw'}).")
    return files


def _not_found_message(searched: list[Path]) -> str:
    where = "\n  ".join(str(d) for d in searched)
    return (f"Fashion-MNIST files ({', '.join(s + '[.gz]' for s in _FILE_STEMS)}) not found in:\n  {where}\n"
            f"Get them in one of these ways:\n"
            f"  - on Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist` (installs them in "
            f"{DEBIAN_FASHION_MNIST_DIR});\n"
            f"  - put the four files in a folder and set {_ENV_VAR}=that/folder, or pass root='that/folder';\n"
            f"  - with internet access: load_fashion_mnist(download=True) (uses torchvision).")


def _check_split(images: np.ndarray, labels: np.ndarray, split: str) -> None:
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(f"Fashion-MNIST {split} images should be uint8 of shape (n, 28, 28); "
                         f"got {images.dtype} {images.shape}. Are these the right files?")
    if labels.shape != (len(images),):
        raise ValueError(f"Fashion-MNIST {split}: {len(images)} images but labels of shape {labels.shape}.")
    if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES)):
        raise ValueError(f"Fashion-MNIST {split} labels must be in 0..9; found {labels.min()}..{labels.max()}.")


def load_fashion_mnist(root: Optional[PathLike] = None, download: bool = False
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fashion-MNIST as `(x_train, y_train, x_test, y_test)`: uint8 images (60000/10000, 28, 28), int64 labels.

    Where the files are looked for: `root` when given (and only there); otherwise the folder in the environment
    variable FASTFREEZE_DATA, then /usr/share/datasets/fashion-mnist (Debian package `dataset-fashion-mnist`), then
    the cache folder ~/.cache/fastfreeze/fashion-mnist. A folder may hold the four IDX files (plain or .gz) itself,
    in `fashion-mnist/`, or in torchvision's `FashionMNIST/raw/`. With `download=True` and nothing found, torchvision
    downloads them into `root`, else FASTFREEZE_DATA, else the cache folder. Class names: FASHION_MNIST_CLASSES.
    """
    env_dir = os.environ.get(_ENV_VAR)
    if root is not None:
        searched = [Path(root).expanduser()]
        download_dir = searched[0]
    else:
        searched = ([Path(env_dir).expanduser()] if env_dir else []) + [DEBIAN_FASHION_MNIST_DIR, _default_cache_dir()]
        download_dir = Path(env_dir).expanduser() if env_dir else _default_cache_dir()

    files = next((found for found in map(_find_files, searched) if found is not None), None)
    if files is None:
        if not download:
            raise FileNotFoundError(_not_found_message(searched))
        files = _download(download_dir)

    x_train, y_train, x_test, y_test = (read_idx(path) for path in files)
    y_train, y_test = y_train.astype(np.int64), y_test.astype(np.int64)
    _check_split(x_train, y_train, "train")
    _check_split(x_test, y_test, "test")
    return x_train, y_train, x_test, y_test


def stratified_subset(y: np.ndarray, n_per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of exactly `n_per_class` examples of every class present in `y`, drawn without replacement.

    The same `seed` gives the same indices; they are returned sorted (in dataset order). Raises ValueError when a
    class has fewer than `n_per_class` examples.
    """
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise ValueError(f"y must be a 1-d array of labels; got shape {labels.shape}.")
    check_int(n_per_class, "n_per_class")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < n_per_class:
            raise ValueError(f"Class {label!r} has only {len(members)} examples, fewer than n_per_class="
                             f"{n_per_class}. Lower n_per_class to at most {len(members)}.")
        chosen.append(rng.choice(members, size=n_per_class, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
