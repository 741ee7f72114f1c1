"""Preprocessing: what a model's weights expect of its input (the data config: size, interpolation, mean,
std, crop) and how an image becomes that input.

The data config comes from the model's timm `pretrained_cfg` (`resolve_data_config`); `IMAGENET_DATA_CONFIG`
(timm's defaults) fills what a model does not say. Two ways to bring an image to the input size:

- 'crop' (image files, `ImageDataLoaders.from_folder`): timm's own evaluation transform, resize to
  `size / crop_pct` then centre crop to `size`, normalise (`image_transform`); in training, timm's random
  resized crop and horizontal flip;
- 'squish' (in-memory arrays, `ImageDataLoaders.from_arrays`): the whole image resized to the input size,
  a batch at a time with `torch.nn.functional.interpolate` (`batch_to_model_input`): no crop, since small
  datasets such as Fashion-MNIST are centred already.

`preprocess_image` applies either to one item (a path, a PIL image, an array or a tensor) for `predict`.
"""
from __future__ import annotations

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

from ..utils.hub import hub_repo_id, timm_model_config

DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
# timm's defaults for a model that says nothing of its preprocessing (timm.data.resolve_data_config's own)
IMAGENET_DATA_CONFIG: dict[str, Any] = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "mean": tuple(timm.data.IMAGENET_DEFAULT_MEAN),
    "std": tuple(timm.data.IMAGENET_DEFAULT_STD),
    "crop_pct": timm.data.DEFAULT_CROP_PCT,
    "crop_mode": "center",
}
RESIZE_METHODS = ("crop", "squish")
ImageItem = Union[str, Path, Image.Image, np.ndarray, Tensor]


# ----------------------------------------------------------------------------------------------- data config
def check_resize_method(resize_method: str) -> str:
    if resize_method not in RESIZE_METHODS:
        raise ValueError(f"resize_method must be one of {RESIZE_METHODS}, got {resize_method!r}")
    return resize_method


def resolve_data_config(arch: Union[str, nn.Module, None] = None,
                        size: Union[int, tuple[int, int], None] = None) -> dict[str, Any]:
    """The preprocessing timm uses for `arch`: a dict with `input_size`, `interpolation`, `mean`, `std`,
    `crop_pct`, `crop_mode`.

    `arch` is a timm model name (its `pretrained_cfg` is read from timm's registry: nothing is downloaded; for a
    Hub name 'hf-hub:org/name', from its config.json in the Hub cache, downloaded if needed),
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
    """Cached per name; a tuple of items so the cache cannot be mutated by callers. A Hub name
    ('hf-hub:org/name') reads the `pretrained_cfg` of its config.json (from the Hub cache, or downloaded)."""
    if hub_repo_id(name) is not None:
        config = timm.data.resolve_data_config(pretrained_cfg=timm_model_config(name)[0])
        return tuple((key, config[key]) for key in DATA_CONFIG_KEYS)
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}: see timm.list_models() for the names, pass a Hub name "
                         f"('hf-hub:org/name'), or pass data_config=... to give the preprocessing directly")
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


def square(size: Union[int, tuple[int, int]]) -> tuple[int, int]:
    """`size` as `(height, width)`: an int is a square; both must be positive."""
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return int(height), int(width)


def with_input_size(config: dict[str, Any], size: Union[int, tuple[int, int], None]) -> dict[str, Any]:
    """A copy of `config` (missing keys filled from the ImageNet defaults) with its input size set to `size`."""
    config = {key: config.get(key, IMAGENET_DATA_CONFIG[key]) for key in DATA_CONFIG_KEYS}
    if size is not None:
        config["input_size"] = (config["input_size"][0], *square(size))
    config["input_size"] = tuple(config["input_size"])
    config["mean"], config["std"] = tuple(config["mean"]), tuple(config["std"])
    return config


def choose_config(arch: Union[str, nn.Module, None], size: Union[int, tuple[int, int], None],
                   data_config: Optional[dict[str, Any]]) -> dict[str, Any]:
    """`data_config` when given (completed with ImageNet defaults), else the one resolved from `arch`."""
    if data_config is not None:
        return with_input_size(dict(data_config), size)
    return resolve_data_config(arch, size)


# ------------------------------------------------------------------------------------- images: PIL + timm

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


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def integer_image_range(image: Image.Image) -> int:
    """The largest value the stored dtype of an integer grayscale image holds: 65535 for 16-bit images (modes
    'I;16*', and mode 'I' unless the file says otherwise: a 16-bit PNG opens as 'I'), 2**31 - 1 for a TIFF
    whose BitsPerSample says 32 (PIL's 'I' is a signed 32-bit integer)."""
    tags = getattr(image, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None  # TIFF BitsPerSample
    bits = bits[0] if isinstance(bits, tuple) and bits else bits
    if image.mode == "I" and bits == 32:
        return 2 ** 31 - 1
    return 65535


def scaled_to_8_bits(image: Image.Image) -> Image.Image:
    """An integer ('I', 'I;16') or float ('F') grayscale image as 8-bit grayscale, scaled by the range of its
    dtype: integers by `integer_image_range` (0 to that maximum becomes 0 to 255), floats from [0, 1] (the
    convention of float images, as for arrays). Negative integers, floats outside [0, 1] and NaN or infinite
    values are a ValueError that says how to save the image instead."""
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        if not np.isfinite(pixels).all():
            raise ValueError("this float ('F') image holds NaN or infinite values: fix or remove the image")
        low, high = float(pixels.min()), float(pixels.max())
        if low < 0 or high > 1:
            raise ValueError(f"this float ('F') image holds values {low:g}..{high:g}, outside [0, 1], the range a "
                             f"float image is read in: save it scaled to [0, 1], or as an 8- or 16-bit image")
        scale = 255.0
    else:
        top = integer_image_range(image)
        low, high = int(pixels.min()), int(pixels.max())
        if low < 0 or high > top:
            raise ValueError(f"this {image.mode!r} image holds values {low}..{high}, outside 0..{top}, the range "
                             f"of its dtype: save it as an 8-bit or 16-bit image (values 0..255 or 0..65535)")
        scale = 255.0 / top
    return Image.fromarray(np.clip(np.rint(pixels * scale), 0, 255).astype(np.uint8))


class InputSize:
    """The `(height, width)` training items are made at, changeable while a DataLoader runs
    (`callbacks.progressive_resize.ProgressiveResize`). It lives in a shared-memory tensor: DataLoader worker
    processes, persistent ones included, hold the same memory, so each change reaches them, and every item they
    build after it is made at the new size. Set it between epochs: items a worker has already made keep theirs."""

    def __init__(self, size: Union[int, tuple[int, int]]):
        self.hw = torch.tensor(square(size), dtype=torch.int64).share_memory_()

    def get(self) -> tuple[int, int]:
        """The current `(height, width)`."""
        height, width = self.hw.tolist()
        return int(height), int(width)

    def set(self, size: Union[int, tuple[int, int]]) -> None:
        """Make the next items at `size` (an int for a square, or `(height, width)`)."""
        self.hw.copy_(torch.tensor(square(size), dtype=torch.int64))

    def __repr__(self) -> str:
        return f"InputSize{self.get()}"


class SizedTransform:
    """timm's transform for `data_config` (`image_transform(data_config, training, augment)`) at the size
    `input_size` holds when each item is made; one transform is built per size and kept.

    `transforms` lists the steps of the transform at the current size (what `feature_cache` inspects)."""

    def __init__(self, data_config: dict[str, Any], input_size: InputSize, training: bool = False,
                 augment: Union[bool, dict[str, Any]] = True):
        self.data_config, self.input_size = with_input_size(data_config, None), input_size
        self.training, self.augment = training, augment
        self.built: dict[tuple[int, int], Callable[[Image.Image], Tensor]] = {}

    def current(self) -> Callable[[Image.Image], Tensor]:
        """The transform at the current size (built the first time that size is asked for)."""
        size = self.input_size.get()
        if size not in self.built:
            self.built[size] = image_transform(with_input_size(self.data_config, size), self.training, self.augment)
        return self.built[size]

    @property
    def transforms(self) -> list[Any]:
        return list(getattr(self.current(), "transforms", [self.current()]))

    def __call__(self, image: Image.Image) -> Tensor:
        return self.current()(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB: grayscale is repeated, alpha dropped, palettes expanded, 16-bit, 32-bit and float
    grayscale scaled by their dtype's range (`scaled_to_8_bits`)."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # the route PIL asks for; avoids its warning
    if image.mode in ("I", "F") + SIXTEEN_BIT_MODES:
        image = scaled_to_8_bits(image)
    return image.convert("RGB")


def open_image(path: Union[str, Path]) -> Image.Image:
    """Open and decode the image file at `path` as RGB; every failure is an error naming the file: a file PIL
    cannot read or whose values cannot be scaled (`to_rgb`) a ValueError, a missing file (or a dangling link)
    a FileNotFoundError, an image above PIL's size limit against decompression bombs a ValueError saying how to
    raise it."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now: truncated files fail here, and the pixels outlive the closed file
            decoded = image
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {path} does not exist (or is a link to a file that does not): "
                                f"restore it or remove it from the data") from None
    except Image.DecompressionBombError as error:
        raise ValueError(f"cannot read image file {path}: {error} If you trust this file, raise PIL's limit "
                         f"before building the data: PIL.Image.MAX_IMAGE_PIXELS = None (no limit) or a larger "
                         f"number of pixels; otherwise remove the file") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read image file {path}: {error}. The file is corrupt or not an image: "
                         f"remove or replace it") from error
    try:
        return to_rgb(decoded)
    except ValueError as error:
        raise ValueError(f"image file {path}: {error}") from error


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


def as_image_tensor(images: Union[np.ndarray, Tensor]) -> Tensor:
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
        finite = torch.isfinite(images.reshape(len(images), -1) if images.ndim == 4 else images.reshape(1, -1))
        if not bool(finite.all()):
            first = int((~finite.all(1)).nonzero()[0]) if images.ndim == 4 else None
            where = f"image {first} of the batch holds" if first is not None else "the image holds"
            raise ValueError(f"{where} NaN or infinite values ({int((~finite).sum())} in all): fix or drop those "
                             f"images (e.g. np.nan_to_num(x, nan=0.0) if a missing pixel may read as black)")
        low, high = float(images.min()), float(images.max())
        if not (low >= 0.0 and high <= 1.0):
            raise ValueError(f"float images must hold values in [0, 1], found {low:g}..{high:g}: "
                             f"divide 0-255 images by 255 (or pass them as uint8)")
        if images.dtype == torch.float64:
            images = images.float()
    return images


def interpolate_mode(interpolation: str) -> str:
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
        mode = interpolate_mode(data_config["interpolation"])
        antialias = mode in ("bilinear", "bicubic")  # as PIL and torchvision's Resize do
        x = F.interpolate(x, size=(height, width), mode=mode, antialias=antialias)
        x = x.clamp_(0.0, 1.0)  # bicubic overshoots; saturate as an 8-bit image would
    mean = torch.tensor(data_config["mean"], dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(data_config["std"], dtype=x.dtype).view(1, -1, 1, 1)
    # (x - mean) / std in one pass; a 1-channel x broadcasts to the 3 channels (grayscale repeated)
    return torch.addcmul(-mean / std, x, 1.0 / std)



def denormalize(x: Tensor, data_config: dict[str, Any]) -> np.ndarray:
    """A batch of model inputs `(N, 3, H, W)` back to displayable images: `(N, H, W, 3)` floats in [0, 1]
    (normalisation undone, clipped)."""
    mean = torch.tensor(data_config["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(data_config["std"]).view(1, -1, 1, 1)
    return (x.float().cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()


# --------------------------------------------------------------------------------------------- one item

def is_preprocessed(item: Union[np.ndarray, Tensor]) -> bool:
    """Whether an array or tensor is taken as an already preprocessed (normalised) model input rather than an
    image, from its dtype and range only, the same at every size (docs/input.md): a float array/tensor holding a
    value outside [0, 1] is a model input; a float one within [0, 1], and any integer one, is an image."""
    values = torch.as_tensor(np.asarray(item) if isinstance(item, np.ndarray) else item)
    if not values.is_floating_point() or values.numel() == 0:
        return False
    return bool((values < 0).any() or (values > 1).any())


def describe_item(item: Any) -> str:
    """A short description of an item for messages: the file, or the kind, dtype and shape of the image."""
    if isinstance(item, (str, Path)):
        return f"image file {item}"
    if isinstance(item, Image.Image):
        return f"PIL image (mode {item.mode!r}, size {item.size})"
    kind = "array" if isinstance(item, np.ndarray) else type(item).__name__
    return f"{kind} of dtype {item.dtype} and shape {tuple(item.shape)}"


def item_to_model_input(item: ImageItem, data_config: dict[str, Any], resize_method: str = "crop") -> Tensor:
    """One item as the model's `(3, H, W)` input, for `predict`: an already preprocessed array/tensor as it is
    (`is_preprocessed`; it must have the model's input shape), anything else through `preprocess_image`. NaN or
    infinite values are refused, naming the item."""
    if isinstance(item, (np.ndarray, Tensor)):
        values = torch.as_tensor(item.copy() if isinstance(item, np.ndarray) and not item.flags.writeable else item)
        if values.is_floating_point() and not bool(torch.isfinite(values).all()):
            bad = int((~torch.isfinite(values)).sum())
            raise ValueError(f"cannot predict on this {describe_item(item)}: it holds {bad} NaN or infinite "
                             f"value(s), for which every output would be NaN. Fix the image first (e.g. "
                             f"np.nan_to_num(x, nan=0.0)), or leave it out")
        if is_preprocessed(values):
            expected = tuple(data_config["input_size"])
            if tuple(values.shape) != expected:
                raise ValueError(f"this {describe_item(item)} holds values outside [0, 1] "
                                 f"({float(values.min()):g}..{float(values.max()):g}), so it is taken as an already "
                                 f"preprocessed model input (docs/input.md), which must have the model's input "
                                 f"shape {expected}. For an image, pass uint8 values 0-255 or floats in [0, 1]")
            return values.float()
    return preprocess_image(item, data_config, resize_method)


def preprocess_image(item: ImageItem, data_config: dict[str, Any], resize_method: str = "crop") -> Tensor:
    """The evaluation preprocessing of one image as a `(3, H, W)` float tensor.

    `item` is an image file path, a PIL image, or an array/tensor image ((H, W), (H, W, C) or (C, H, W); uint8
    0-255 or float 0-1). `resize_method` 'crop' is timm's evaluation transform (resize to size/crop_pct, centre
    crop: what `from_folder` uses), 'squish' resizes the whole image to the input size (what `from_tensors` uses).
    """
    check_resize_method(resize_method)
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
    pixels = as_image_tensor(item)
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
