"""Image data for `vision_learner`, preprocessed the way the chosen timm model was trained.

The preprocessing facts (input size, interpolation, mean, std, crop_pct, crop_mode) come from the model's timm
`pretrained_cfg` (`resolve_data_config`), so the data and the model agree. Two sources of images:

- files (`ImageDataLoaders.from_folder`): opened with PIL, converted to RGB, then timm's own transforms
  (`timm.data.create_transform`). Training with `augment=True`: timm's training transform, i.e. a random resized
  crop (scale 0.08-1) and a horizontal flip, with no colour jitter, no auto-augment and no random erasing
  (pass a dict as `augment` to change timm's options). Evaluation: resize to `size / crop_pct`, centre crop
  to `size`, normalise. This is the 'crop' resize method.
- in-memory arrays (`ImageDataLoaders.from_tensors` / `from_arrays`): the uint8 or float images are kept as they
  are and whole batches are converted at once (3 channels, scale to [0, 1], resize the whole image to the input
  size with `torch.nn.functional.interpolate`, normalise), which is much faster on CPU than per-item PIL work.
  Augmentation here is a random horizontal flip only. This is the 'squish' resize method (no crop: small
  datasets such as Fashion-MNIST are centred already and a crop would cut their borders).

`ImageDataLoaders.preprocess(item)` applies the same evaluation preprocessing to one item for `predict`.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import timm
import timm.data
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset

from fastfreeze.data import DataLoaders

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
IMAGENET_DATA_CONFIG: dict[str, Any] = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "mean": tuple(timm.data.IMAGENET_DEFAULT_MEAN),
    "std": tuple(timm.data.IMAGENET_DEFAULT_STD),
    "crop_pct": timm.data.DEFAULT_CROP_PCT,
    "crop_mode": "center",
}
FOLDER_LAYOUT = ("expected path/train/<class>/<image> and path/valid/<class>/<image>, "
                 "or path/<class>/<image> with valid_pct=0.2")
ImageItem = Union[str, Path, Image.Image, np.ndarray, Tensor]


# ----------------------------------------------------------------------------------------------- data config

def resolve_data_config(arch: Union[str, nn.Module, None] = None,
                        size: Union[int, tuple[int, int], None] = None) -> dict[str, Any]:
    """The preprocessing timm uses for `arch`: a dict with `input_size`, `interpolation`, `mean`, `std`,
    `crop_pct`, `crop_mode`.

    `arch` is a timm model name (its `pretrained_cfg` is read from timm's registry: nothing is downloaded),
    a model (timm's resolution on it, or on its first sub-module carrying a `pretrained_cfg`, e.g. a timm body
    inside a bigger model), or None (ImageNet defaults: 224 px, bicubic, crop_pct 0.875, ImageNet mean/std).
    `size` (an int or `(height, width)`) overrides the input size; crop_pct is kept.
    """
    if arch is None:
        config = dict(IMAGENET_DATA_CONFIG)
    elif isinstance(arch, str):
        config = dict(_timm_name_config(arch))
    elif isinstance(arch, nn.Module):
        config = _module_config(arch)
    else:
        raise TypeError(f"arch must be a timm model name, an nn.Module or None, not {type(arch).__name__}")
    return with_input_size(config, size)


@lru_cache(maxsize=None)
def _timm_name_config(name: str) -> tuple[tuple[str, Any], ...]:
    """Cached per name; a tuple of items so the cache cannot be mutated by callers."""
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}: see timm.list_models() for the names, or pass "
                         f"data_config=... to give the preprocessing directly")
    pretrained_cfg = timm.get_pretrained_cfg(name)
    if pretrained_cfg is not None:
        config = timm.data.resolve_data_config(pretrained_cfg=pretrained_cfg.to_dict())
    else:  # no registry entry: build the model's skeleton on the meta device (no memory, no weights)
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
        config = timm.data.resolve_model_data_config(model)
    return tuple((key, config[key]) for key in DATA_CONFIG_KEYS)


def _module_config(model: nn.Module) -> dict[str, Any]:
    carrier = next((m for m in model.modules() if getattr(m, "pretrained_cfg", None)), model)
    config = timm.data.resolve_model_data_config(carrier)
    return {key: config[key] for key in DATA_CONFIG_KEYS}


def with_input_size(config: dict[str, Any], size: Union[int, tuple[int, int], None]) -> dict[str, Any]:
    """A copy of `config` (missing keys filled from the ImageNet defaults) with its input size set to `size`."""
    config = {key: config.get(key, IMAGENET_DATA_CONFIG[key]) for key in DATA_CONFIG_KEYS}
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        if height < 1 or width < 1:
            raise ValueError(f"size must be positive, got {size!r}")
        config["input_size"] = (config["input_size"][0], int(height), int(width))
    config["input_size"] = tuple(config["input_size"])
    config["mean"], config["std"] = tuple(config["mean"]), tuple(config["std"])
    return config


def _choose_config(arch: Union[str, nn.Module, None], size: Union[int, tuple[int, int], None],
                   data_config: Optional[dict[str, Any]]) -> dict[str, Any]:
    """`data_config` when given (completed with ImageNet defaults), else the one resolved from `arch`."""
    if data_config is not None:
        return with_input_size(dict(data_config), size)
    return resolve_data_config(arch, size)


# ------------------------------------------------------------------------------------- files: PIL + timm

def image_transform(data_config: dict[str, Any], training: bool = False,
                    augment: Union[bool, dict[str, Any]] = True) -> Callable[[Image.Image], Tensor]:
    """timm's transform for `data_config`: the training one when `training` and `augment` (random resized crop
    + horizontal flip; a dict `augment` is passed on to `timm.data.create_transform`, e.g.
    `{'scale': (0.5, 1.0), 'auto_augment': 'rand-m9-mstd0.5'}`), else the evaluation one (resize, centre crop,
    normalise)."""
    config = with_input_size(data_config, None)
    if training and augment:
        options: dict[str, Any] = {"auto_augment": None, "re_prob": 0.0, "color_jitter": None}
        if isinstance(augment, dict):
            options.update(augment)
        return timm.data.create_transform(**config, is_training=True, **options)
    return timm.data.create_transform(**config, is_training=False)


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB: grayscale is repeated, alpha dropped, palettes expanded, 16-bit scaled down."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # the route PIL asks for; avoids its warning
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit grayscale: keep the full range
        pixels = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    return image.convert("RGB")


def open_image(path: Union[str, Path]) -> Image.Image:
    """Open and decode the image file at `path` as RGB; a file PIL cannot read gives a ValueError naming it."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now: truncated files fail here, and the pixels outlive the closed file
            return to_rgb(image)
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read image file {path}: {error}. The file is corrupt or not an image: "
                         f"remove or replace it") from error


def find_bad_images(paths: Sequence[Path]) -> list[tuple[Path, str]]:
    """Decode every file in `paths` with PIL; return `(path, reason)` for each that fails."""
    bad = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
        except (OSError, SyntaxError, ValueError) as error:
            bad.append((path, str(error)))
    return bad


class ImageFolderDataset(Dataset):
    """Image files with integer labels; `transform` maps the opened RGB PIL image to a tensor.

    Files are read lazily: a corrupt file fails only when its item is loaded, with a ValueError naming the
    file (`ImageDataLoaders.from_folder(..., check=True)` checks every file up front instead)."""

    def __init__(self, items: Sequence[Path], labels: Sequence[int],
                 transform: Optional[Callable[[Image.Image], Any]] = None):
        if len(items) != len(labels):
            raise ValueError(f"{len(items)} items but {len(labels)} labels: they must match")
        self.items, self.labels, self.transform = [Path(p) for p in items], [int(y) for y in labels], transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image = open_image(self.items[i])
        return (self.transform(image) if self.transform is not None else image), self.labels[i]


def get_image_files(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files anywhere under `folder`, sorted; hidden files and folders (names starting with '.',
    e.g. `.ipynb_checkpoints` or macOS `._x.jpg`) are skipped."""
    suffixes = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root, f) for f in files if not f.startswith(".") and os.path.splitext(f)[1].lower() in suffixes]
    return sorted(found)


def class_folders(folder: Path) -> list[Path]:
    """The visible sub-folders of `folder`, sorted by name: one per class."""
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _require_folder(folder: Path, what: str) -> None:
    if not folder.exists():
        raise FileNotFoundError(f"{what} {folder} does not exist ({FOLDER_LAYOUT})")
    if not folder.is_dir():
        raise NotADirectoryError(f"{what} {folder} is not a folder ({FOLDER_LAYOUT})")


def _labelled_files(folder: Path, extensions: Sequence[str],
                    vocab: Optional[list[str]] = None) -> tuple[list[str], list[Path], list[int]]:
    """Classes, files and labels from `folder/<class>/...`. With `vocab` (the training classes) the folder is a
    validation folder: its classes must be among them, and a class may be missing or empty."""
    folders = class_folders(folder)
    if not folders:
        stray = get_image_files(folder, extensions)
        found = "images but no class sub-folders" if stray else "no class sub-folders"
        raise ValueError(f"found {found} in {folder}: {FOLDER_LAYOUT}")
    names = [f.name for f in folders]
    files_per_class = [get_image_files(f, extensions) for f in folders]
    if vocab is None:
        empty = [f for f, files in zip(folders, files_per_class) if not files]
        if len(empty) == len(folders):
            raise ValueError(f"no image files ({', '.join(extensions)}) in the class folders of {folder}: "
                             f"{FOLDER_LAYOUT}")
        if empty:
            raise ValueError(f"class folder {empty[0]} holds no image files ({', '.join(extensions)}): "
                             f"add images or remove the folder")
        if len(names) < 2:
            raise ValueError(f"need at least 2 classes, found only {names[0]!r} in {folder}: "
                             f"add a sub-folder of images per class")
        vocab = names
    else:
        unknown = [n for n in names if n not in vocab]
        if unknown:
            raise ValueError(f"validation classes {unknown} in {folder} are not among the training classes "
                             f"{vocab}: rename or remove them, or add them to the training folder")
    index = {name: i for i, name in enumerate(vocab)}
    files = [p for class_files in files_per_class for p in class_files]
    labels = [index[name] for name, class_files in zip(names, files_per_class) for _ in class_files]
    return vocab, files, labels


def split_indices(labels: Union[Sequence[int], np.ndarray, Tensor], valid_pct: float,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified random split: in each class, `round(n_class * valid_pct)` shuffled items (at most n_class - 1,
    so every class keeps a training item) go to validation. Returns sorted `(train_idx, valid_idx)`; the same
    seed gives the same split."""
    if not 0 < valid_pct < 1:
        raise ValueError(f"valid_pct must be between 0 and 1 (exclusive), got {valid_pct}")
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    train, valid = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_valid = min(math.floor(len(members) * valid_pct + 0.5), len(members) - 1)
        valid.append(members[:n_valid])
        train.append(members[n_valid:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(valid))


# --------------------------------------------------------------------------- arrays: whole-batch transform

def image_layout(item_shape: Sequence[int], channels_first_if_ambiguous: bool = True) -> str:
    """'hw', 'hwc' or 'chw' for the shape of ONE image; channels are 1, 3 or 4 (alpha is dropped)."""
    if len(item_shape) == 2:
        return "hw"
    if len(item_shape) == 3:
        first, last = item_shape[0] in (1, 3, 4), item_shape[-1] in (1, 3, 4)
        if first and (not last or channels_first_if_ambiguous):
            return "chw"
        if last:
            return "hwc"
    raise ValueError(f"cannot read an image of shape {tuple(item_shape)}: expected (H, W) grayscale, "
                     f"(H, W, C) or (C, H, W) with C in 1, 3, 4 (one more leading dimension for a batch)")


def _as_image_tensor(images: Union[np.ndarray, Tensor]) -> Tensor:
    """`images` as a uint8 or float tensor (shared with the input when possible), checking the value range:
    integers must lie in 0-255, floats in [0, 1]."""
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = images.copy()
    images = torch.as_tensor(images)
    if images.dtype == torch.bool or images.is_complex():
        raise TypeError(f"images must be uint8 (0-255) or float (0-1), not {images.dtype}")
    if images.numel() == 0:
        raise ValueError("got no images (an empty array)")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        low, high = int(images.min()), int(images.max())
        if low < 0 or high > 255:
            raise ValueError(f"integer images must hold values 0-255, found {low}..{high}: rescale them to uint8")
        return images.to(torch.uint8)
    if images.is_floating_point():
        low, high = float(images.min()), float(images.max())
        if not (low >= 0.0 and high <= 1.0):
            raise ValueError(f"float images must hold values in [0, 1], found {low:g}..{high:g}: "
                             f"divide 0-255 images by 255 (or pass them as uint8)")
        if images.dtype == torch.float64:
            images = images.float()
    return images


def _interpolate_mode(interpolation: str) -> str:
    """timm's interpolation name as a `torch.nn.functional.interpolate` mode (lanczos → bicubic, other
    filters → bilinear)."""
    return {"bicubic": "bicubic", "lanczos": "bicubic", "nearest": "nearest-exact"}.get(interpolation, "bilinear")


def batch_to_model_input(images: Tensor, layout: str, data_config: dict[str, Any],
                         flip: Optional[Tensor] = None) -> Tensor:
    """A batch of raw images (uint8 0-255 or float 0-1, in `layout` after the batch dimension) as the model's
    input: float32 `(N, 3, H, W)` resized (whole image, no crop) to the config's input size, normalised.
    `flip` is an optional boolean mask of the images to flip horizontally."""
    if layout == "hw":
        images = images.unsqueeze(1)
    elif layout == "hwc":
        images = images.permute(0, 3, 1, 2)
    images = images[:, :3]  # drop alpha
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if flip is not None:  # on the small source images: flipping commutes with resizing
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    height, width = data_config["input_size"][-2:]
    if tuple(x.shape[-2:]) != (height, width):
        mode = _interpolate_mode(data_config["interpolation"])
        antialias = mode in ("bilinear", "bicubic")  # as PIL and torchvision's Resize do
        x = F.interpolate(x, size=(height, width), mode=mode, antialias=antialias)
        x = x.clamp_(0.0, 1.0)  # bicubic overshoots; saturate as an 8-bit image would
    mean = torch.tensor(data_config["mean"], dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(data_config["std"], dtype=x.dtype).view(1, -1, 1, 1)
    # (x - mean) / std in one pass; a 1-channel x broadcasts to the 3 channels (grayscale repeated)
    return torch.addcmul(-mean / std, x, 1.0 / std)


def _collate_ready_batch(batch: Any) -> Any:
    """`collate_fn` for datasets whose `__getitems__` already returns a whole `(x, y)` batch."""
    return batch


class ArrayImageDataset(Dataset):
    """In-memory images kept as they are (uint8 or float, `(N,H,W)`, `(N,H,W,C)` or `(N,C,H,W)`), converted to the
    model's input a whole batch at a time: torch's DataLoader calls `__getitems__` with the batch's indices.

    `indices` selects a subset without copying the images; `augment` flips images horizontally at random."""

    def __init__(self, images: Union[np.ndarray, Tensor], labels: Union[np.ndarray, Tensor, Sequence[int]],
                 data_config: dict[str, Any], augment: bool = False,
                 indices: Optional[Union[np.ndarray, Tensor, Sequence[int]]] = None, layout: Optional[str] = None):
        self.images = _as_image_tensor(images)
        if self.images.ndim not in (3, 4):
            raise ValueError(f"images must be a batch: (N, H, W), (N, H, W, C) or (N, C, H, W), "
                             f"got shape {tuple(self.images.shape)}")
        self.layout = layout or image_layout(self.images.shape[1:],
                                             channels_first_if_ambiguous=not isinstance(images, np.ndarray))
        self.labels = _as_labels(labels, len(self.images))
        self.indices = (torch.arange(len(self.images)) if indices is None
                        else torch.as_tensor(np.asarray(indices), dtype=torch.long))
        self.data_config, self.augment = with_input_size(data_config, None), augment

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, positions: Sequence[int]) -> tuple[Tensor, Tensor]:
        rows = self.indices[torch.as_tensor(positions, dtype=torch.long)]
        flip = torch.rand(len(rows)) < 0.5 if self.augment else None
        x = batch_to_model_input(self.images[rows], self.layout, self.data_config, flip)
        return x, self.labels[rows]

    def __getitem__(self, position: int) -> tuple[Tensor, Tensor]:
        x, y = self.__getitems__([position])
        return x[0], y[0]


def _as_labels(labels: Union[np.ndarray, Tensor, Sequence[int]], n: int) -> Tensor:
    labels = (labels if isinstance(labels, Tensor) else torch.as_tensor(np.asarray(labels))).reshape(-1)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got {labels.dtype}")
    if len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} labels: they must match")
    if len(labels) and int(labels.min()) < 0:
        raise ValueError(f"labels must be class indices >= 0, found {int(labels.min())}")
    return labels.long()


# --------------------------------------------------------------------------------------------- one item

def preprocess_image(item: ImageItem, data_config: dict[str, Any], resize_method: str = "crop") -> Tensor:
    """The evaluation preprocessing of one image as a `(3, H, W)` float tensor.

    `item` is an image file path, a PIL image, or an array/tensor image ((H, W), (H, W, C) or (C, H, W); uint8
    0-255 or float 0-1). `resize_method` 'crop' is timm's evaluation transform (resize to size/crop_pct, centre
    crop: what `from_folder` uses), 'squish' resizes the whole image to the input size (what `from_tensors` uses).
    """
    if resize_method not in ("crop", "squish"):
        raise ValueError(f"resize_method must be 'crop' or 'squish', got {resize_method!r}")
    if isinstance(item, (str, Path)):
        item = open_image(item)
    if isinstance(item, Image.Image):
        item = to_rgb(item)
        if resize_method == "crop":
            return image_transform(data_config, training=False)(item)
        item = torch.from_numpy(np.array(item))  # (H, W, 3) uint8
    if not isinstance(item, (np.ndarray, Tensor)):
        raise TypeError(f"cannot preprocess a {type(item).__name__}: pass a file path, a PIL image, or an "
                        f"array/tensor image")
    pixels = _as_image_tensor(item)
    layout = image_layout(pixels.shape, channels_first_if_ambiguous=not isinstance(item, np.ndarray))
    if resize_method == "squish":
        return batch_to_model_input(pixels.unsqueeze(0), layout, data_config)[0]
    if pixels.dtype == torch.uint8:  # exactly the file path: through PIL
        array = pixels.permute(1, 2, 0) if layout == "chw" else pixels
        array = array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array
        return preprocess_image(Image.fromarray(array.contiguous().numpy()), data_config, "crop")
    x = pixels.unsqueeze(0) if layout == "hw" else (pixels.permute(2, 0, 1) if layout == "hwc" else pixels)
    x = x[:3].expand(3, -1, -1) if x.shape[0] == 1 else x[:3]
    return image_transform(data_config, training=False)(x.float().contiguous())  # timm transforms take tensors


# ------------------------------------------------------------------------------------------ DataLoaders

def default_num_workers() -> int:
    """Worker processes for decoding image files: `min(4, cpu count)`."""
    return min(4, os.cpu_count() or 1)


class ImageDataLoaders(DataLoaders):
    """Training and validation DataLoaders of images preprocessed for a timm model.

    `data_config` is the resolved preprocessing (`resolve_data_config`); `resize_method` says how one item is
    brought to the input size at evaluation ('crop' for files, 'squish' for arrays), so `preprocess` matches the
    validation data."""

    def __init__(self, train: Any, valid: Any = None, vocab: Optional[Sequence[str]] = None, c: Optional[int] = None,
                 data_config: Optional[dict[str, Any]] = None, resize_method: str = "crop"):
        super().__init__(train, valid, vocab=vocab, c=c,
                         data_config=with_input_size(data_config or IMAGENET_DATA_CONFIG, None))
        if resize_method not in ("crop", "squish"):
            raise ValueError(f"resize_method must be 'crop' or 'squish', got {resize_method!r}")
        self.resize_method = resize_method

    @classmethod
    def from_folder(cls, path: Union[str, Path], train: str = "train", valid: str = "valid",
                    valid_pct: Optional[float] = None, seed: int = 0, bs: Optional[int] = None,
                    size: Union[int, tuple[int, int], None] = None, num_workers: Optional[int] = None,
                    augment: Union[bool, dict[str, Any]] = True, arch: Union[str, nn.Module, None] = None,
                    data_config: Optional[dict[str, Any]] = None, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                    check: bool = False) -> "ImageDataLoaders":
        """Images from `path/train/<class>/*` and `path/valid/<class>/*`, or, with `valid_pct`, from
        `path/<class>/*` split at random (stratified per class, seeded by `seed`).

        Classes are the sub-folder names, sorted (`dls.vocab`); images anywhere below a class folder count.
        Preprocessing comes from `data_config`, else from `arch`'s timm config, with `size` overriding the input
        size. `num_workers=None` uses `min(4, cpu count)` worker processes (pass 0 to load in the main process).
        `check=True` decodes every file first and reports all unreadable ones at once; otherwise a bad file
        fails when it is loaded, with an error naming it. `bs=None`: 64, or smaller for a small training set
        (`data.default_batch_size`).
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"image folder {path} does not exist")
        if valid_pct is None:
            train_folder, valid_folder = path / train, path / valid
            _require_folder(train_folder, "training folder")
            _require_folder(valid_folder, "validation folder")
            vocab, train_files, train_labels = _labelled_files(train_folder, extensions)
            _, valid_files, valid_labels = _labelled_files(valid_folder, extensions, vocab)
            if not valid_files:
                raise ValueError(f"no image files in the class folders of {valid_folder}: {FOLDER_LAYOUT}")
        else:
            _require_folder(path, "image folder")
            names = {f.name for f in class_folders(path)}
            if {train, valid} <= names:
                raise ValueError(f"{path} has '{train}' and '{valid}' folders, which valid_pct would take as "
                                 f"classes: drop valid_pct to use them, or point path at the folder of classes")
            vocab, files, labels = _labelled_files(path, extensions)
            train_idx, valid_idx = split_indices(labels, valid_pct, seed)
            if len(valid_idx) == 0:
                raise ValueError(f"valid_pct={valid_pct} leaves no validation images out of {len(files)} in {path}: "
                                 f"raise valid_pct or add images")
            train_files, train_labels = [files[i] for i in train_idx], [labels[i] for i in train_idx]
            valid_files, valid_labels = [files[i] for i in valid_idx], [labels[i] for i in valid_idx]
        if check:
            bad = find_bad_images(train_files + valid_files)
            if bad:
                listing = "\n".join(f"  {p}: {reason}" for p, reason in bad[:50])
                more = f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else ""
                raise ValueError(f"{len(bad)} unreadable image file(s): remove or replace them\n{listing}{more}")
        config = _choose_config(arch, size, data_config)
        train_ds = ImageFolderDataset(train_files, train_labels, image_transform(config, True, augment))
        valid_ds = ImageFolderDataset(valid_files, valid_labels, image_transform(config, False))
        workers = default_num_workers() if num_workers is None else num_workers
        loaders = DataLoaders.from_dsets(train_ds, valid_ds, bs=bs, num_workers=workers, seed=seed,
                                         persistent_workers=workers > 0)
        return cls(loaders.train, loaders.valid, vocab=vocab, data_config=config, resize_method="crop")

    @classmethod
    def from_tensors(cls, x: Union[np.ndarray, Tensor], y: Union[np.ndarray, Tensor, Sequence[int]],
                     x_valid: Union[np.ndarray, Tensor, None] = None,
                     y_valid: Union[np.ndarray, Tensor, Sequence[int], None] = None,
                     valid_pct: Optional[float] = 0.2, vocab: Optional[Sequence[str]] = None,
                     size: Union[int, tuple[int, int], None] = None, arch: Union[str, nn.Module, None] = None,
                     data_config: Optional[dict[str, Any]] = None, bs: Optional[int] = None, augment: bool = False,
                     seed: int = 0, num_workers: int = 0) -> "ImageDataLoaders":
        """In-memory images: uint8 `(N,H,W)` grayscale, `(N,H,W,C)`, or uint8/float `(N,C,H,W)` (C in 1, 3, 4;
        floats in [0, 1]), with integer labels `y`.

        Validation: `x_valid`/`y_valid` when given, else a stratified `valid_pct` split of `x` seeded by `seed`
        (`valid_pct=None`: no validation set). Each batch is converted at once: 3 channels, resized to the input
        size with the config's interpolation (antialiased), normalised; `augment=True` adds random horizontal
        flips to training batches. The images are not copied. `num_workers=0` by default: the batch resize
        already uses torch's threads. `bs=None`: 64, or smaller for a small training set
        (`data.default_batch_size`).
        """
        config = _choose_config(arch, size, data_config)
        labels = _as_labels(y, len(x))
        if x_valid is not None:
            if y_valid is None:
                raise ValueError("x_valid was given without y_valid: pass both")
            train_ds = ArrayImageDataset(x, labels, config, augment=augment)
            valid_ds = ArrayImageDataset(x_valid, y_valid, config)
        elif valid_pct:
            train_idx, valid_idx = split_indices(labels, valid_pct, seed)
            train_ds = ArrayImageDataset(x, labels, config, augment, indices=train_idx)
            valid_ds = ArrayImageDataset(train_ds.images, labels, config, indices=valid_idx, layout=train_ds.layout)
        else:
            train_ds, valid_ds = ArrayImageDataset(x, labels, config, augment=augment), None
        all_labels = train_ds.labels if valid_ds is None else torch.cat([train_ds.labels, valid_ds.labels])
        n_classes = int(all_labels.max()) + 1
        if vocab is not None and n_classes > len(vocab):
            raise ValueError(f"labels go up to {n_classes - 1} but vocab has only {len(vocab)} classes")
        loaders = DataLoaders.from_dsets(train_ds, valid_ds, bs=bs, num_workers=num_workers, seed=seed,
                                         collate_fn=_collate_ready_batch, persistent_workers=num_workers > 0)
        return cls(loaders.train, loaders.valid, vocab=vocab, c=None if vocab is not None else n_classes,
                   data_config=config, resize_method="squish")

    @classmethod
    def from_arrays(cls, x: np.ndarray, y: Union[np.ndarray, Sequence[int]], x_valid: Optional[np.ndarray] = None,
                    y_valid: Union[np.ndarray, Sequence[int], None] = None, **kwargs: Any) -> "ImageDataLoaders":
        """`from_tensors` for numpy arrays (same arguments); e.g. Fashion-MNIST's uint8 `(N, 28, 28)`."""
        return cls.from_tensors(x, y, x_valid, y_valid, **kwargs)

    def test_dl(self, images: Union[np.ndarray, Tensor], labels: Union[np.ndarray, Tensor, Sequence[int]],
                bs: Optional[int] = None) -> torch.utils.data.DataLoader:
        """A DataLoader over more in-memory images, preprocessed as the validation data is (for
        `learn.validate(dl)` / `learn.get_preds(dl)`), e.g. a full test split."""
        dataset = ArrayImageDataset(images, labels, self.data_config)
        batch_size = bs or getattr(self.valid, "batch_size", None) or 128
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                           collate_fn=_collate_ready_batch, pin_memory=torch.cuda.is_available())

    def preprocess(self, item: ImageItem) -> Tensor:
        """One image (path, PIL image, array or tensor) preprocessed as the validation data is: `(3, H, W)`."""
        return preprocess_image(item, self.data_config, self.resize_method)

    def show_batch(self, n: int = 9, path: Union[str, Path, None] = None, valid: bool = False) -> Any:
        """A grid of `n` images of the first training (or `valid`) batch, de-normalised, titled with their
        labels; saved to `path` when given. Returns the matplotlib figure."""
        import matplotlib.pyplot as plt

        x, y = next(iter(self.valid if valid else self.train))
        n = min(n, len(x))
        mean = torch.tensor(self.data_config["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(self.data_config["std"]).view(1, -1, 1, 1)
        images = (x[:n].float().cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        figure, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2 * rows), squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i < n:
                ax.imshow(images[i])
                label = int(y[i])
                ax.set_title(self.vocab[label] if self.vocab else str(label), fontsize=9)
        figure.tight_layout()
        if path is not None:
            figure.savefig(path, bbox_inches="tight")
        return figure
