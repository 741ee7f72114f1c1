"""Preprocessing: data configs from timm, one ImageNet default, image layouts, and the evaluation transform of
one item."""
import math

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from fastfreeze.preprocess import (IMAGENET_DATA_CONFIG, batch_to_model_input, check_resize_method, image_layout,
                                   preprocess_image, resolve_data_config, with_input_size)


IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


def test_resolve_data_config_from_timm():
    lite = resolve_data_config("tf_efficientnet_lite0")
    assert lite["input_size"] == (3, 224, 224) and lite["interpolation"] == "bicubic"
    assert lite["crop_pct"] == 0.875 and lite["mean"] == (0.5, 0.5, 0.5) and lite["std"] == (0.5, 0.5, 0.5)
    resnet = resolve_data_config("resnet18", size=64)
    assert resnet["input_size"] == (3, 64, 64) and resnet["crop_pct"] == 0.95  # crop kept from timm's cfg
    default = resolve_data_config(None)
    assert default["input_size"] == (3, 224, 224) and default["mean"] == IMAGENET_MEAN
    assert math.isclose(default["crop_pct"], 0.875)
    with pytest.raises(ValueError, match="unknown timm model"):
        resolve_data_config("not_a_model_name")


def test_resolve_data_config_from_module():
    import timm
    body = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    wrapped = torch.nn.Sequential(body, torch.nn.Linear(body.num_features, 2))
    assert resolve_data_config(wrapped, size=48)["input_size"] == (3, 48, 48)
    assert resolve_data_config(wrapped)["mean"] == (0.5, 0.5, 0.5)  # test_resnet's cfg, found inside the wrapper


def test_one_imagenet_default_timms_own():
    import timm.data
    assert IMAGENET_DATA_CONFIG == {"input_size": (3, 224, 224), "interpolation": "bicubic",
                                    "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "crop_pct": 0.875,
                                    "crop_mode": "center"}
    # what timm assumes of a model that says nothing about its preprocessing
    timm_default = timm.data.resolve_data_config({"in_chans": 3})
    assert {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in timm_default.items()} == IMAGENET_DATA_CONFIG
    filled = with_input_size({"input_size": (3, 32, 48), "mean": (0.5, 0.5, 0.5)}, None)
    assert filled["interpolation"] == "bicubic" and filled["std"] == IMAGENET_STD and filled["mean"] == (0.5,) * 3
    assert with_input_size(filled, 64)["input_size"] == (3, 64, 64)
    assert with_input_size(filled, (20, 30))["input_size"] == (3, 20, 30)


def test_image_layouts():
    assert image_layout((28, 28)) == "hw" and image_layout((28, 28, 3)) == "hwc" and image_layout((3, 28, 28)) == "chw"
    assert image_layout((3, 8, 3)) == "chw" and image_layout((3, 8, 3), channels_first_if_ambiguous=False) == "hwc"
    with pytest.raises(ValueError, match=r"cannot read an image of shape \(28, 28, 5\)"):
        image_layout((28, 28, 5))


def test_squish_of_a_uniform_grey_image_is_its_normalised_value():
    config = with_input_size({"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}, 16)
    x = preprocess_image(np.full((10, 12), 51, dtype=np.uint8), config, "squish")
    assert x.shape == (3, 16, 16)
    assert torch.allclose(x, torch.full((3, 16, 16), (51 / 255 - 0.5) / 0.25), atol=1e-6)
    assert check_resize_method("crop") == "crop"
    with pytest.raises(ValueError, match="resize_method must be one of"):
        preprocess_image(np.zeros((4, 4), np.uint8), config, "stretch")


# ------------------------------------------------------------------ the array path against PIL on real photos
# Real, non-uniform photographs (shipped with scikit-image): a wrong filter, a missing antialias, swapped channels
# or a flip moves most pixels by many grey levels. PIL works in 8 bits, rounding after each pass (and clipping
# bicubic's overshoot between its horizontal and vertical passes), so it differs from the float computation by a
# rounding step for bilinear and, for bicubic, by a little more at the sharpest edges.
PIL_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def pil_input(image: np.ndarray, size: int, interpolation: str, mean, std) -> torch.Tensor:
    """The model input worked out with PIL: resize the whole uint8 image, scale to [0, 1], grey to three channels,
    normalise per channel."""
    resized = np.asarray(Image.fromarray(image).resize((size, size), PIL_FILTERS[interpolation]), dtype=np.float64)
    if resized.ndim == 2:
        resized = np.repeat(resized[..., None], 3, axis=2)
    x = (resized / 255 - np.array(mean)) / np.array(std)
    return torch.from_numpy(x).permute(2, 0, 1).float()


def real_photo(name: str) -> np.ndarray:
    return np.ascontiguousarray(getattr(skimage.data, name)())


def assert_like_pil(ours: torch.Tensor, ref: torch.Tensor, std, interpolation: str) -> None:
    grey_levels = (ours - ref).abs() * torch.tensor(std).view(-1, 1, 1) * 255  # differences in 8-bit grey levels
    if interpolation == "bilinear":
        assert float(grey_levels.max()) <= 1.01  # one rounding step
    else:
        assert float(grey_levels.mean()) <= 0.5 and float(grey_levels.flatten().quantile(0.99)) <= 2.5
        assert float(grey_levels.max()) <= 16


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [20, 48])
def test_array_resize_matches_pil_on_real_photos(interpolation, size):
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    config = with_input_size({"interpolation": interpolation, "mean": mean, "std": std}, size)
    photos = np.stack([real_photo("astronaut")[56:456], real_photo("coffee")[:, 44:556]])  # two 400 x 512 photos
    ours = batch_to_model_input(torch.from_numpy(photos), "hwc", config)
    assert ours.shape == (2, 3, size, size)
    for x, photo in zip(ours, photos):
        assert_like_pil(x, pil_input(photo, size, interpolation, mean, std), std, interpolation)
    # channels first, float 0-1: the same images
    floats = torch.from_numpy(photos).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(batch_to_model_input(floats, "chw", config), ours, atol=1e-5, rtol=0)


def test_array_upsampling_of_a_small_grey_image_matches_pil():
    """Fashion-MNIST's case: a 28 x 28 grey image brought up to 64 px, grey repeated in the three channels."""
    small = np.asarray(Image.fromarray(real_photo("camera")).resize((28, 28), Image.BILINEAR))
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.5)
    config = with_input_size({"interpolation": "bicubic", "mean": mean, "std": std}, 64)
    ours = batch_to_model_input(torch.from_numpy(small.copy())[None], "hw", config)[0]
    ref = pil_input(small, 64, "bicubic", mean, std)
    grey_levels = (ours - ref).abs() * torch.tensor(std).view(-1, 1, 1) * 255
    assert float(grey_levels.max()) <= 1.01
    assert float((ref[0] - ref[0].mean()).abs().mean()) > 0.3  # a real image: far from uniform


def test_array_flip_mask_flips_exactly_the_chosen_images():
    photos = np.stack([real_photo("chelsea")[:, :300], real_photo("chelsea")[:, 100:400]])
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    config = with_input_size({"interpolation": "bilinear", "mean": mean, "std": std}, 32)
    ours = batch_to_model_input(torch.from_numpy(photos), "hwc", config, flip=torch.tensor([True, False]))
    assert_like_pil(ours[0], pil_input(np.ascontiguousarray(photos[0][:, ::-1]), 32, "bilinear", mean, std), std,
                    "bilinear")
    assert_like_pil(ours[1], pil_input(photos[1], 32, "bilinear", mean, std), std, "bilinear")


def test_one_array_item_squished_and_cropped_like_pil():
    """`preprocess_image` of one uint8 photo: 'squish' resizes the whole image, 'crop' is timm's evaluation
    transform, which is PIL's resize of the shorter side to size / crop_pct and a centre crop."""
    photo = real_photo("coffee")  # 400 x 600
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    config = with_input_size({"interpolation": "bilinear", "mean": mean, "std": std, "crop_pct": 0.8}, 40)
    assert_like_pil(preprocess_image(photo, config, "squish"), pil_input(photo, 40, "bilinear", mean, std), std,
                    "bilinear")
    shorter = 50  # 40 / 0.8
    resized = Image.fromarray(photo).resize((75, shorter), Image.BILINEAR)  # 600 x 400 keeps its 3:2 ratio
    left, top = 18, 5  # centred: (75 - 40) / 2 = 17.5 rounds to 18 (torchvision's CenterCrop), (50 - 40) / 2
    cropped = np.asarray(resized, dtype=np.float64)[top:top + 40, left:left + 40] / 255
    ref = torch.from_numpy((cropped - np.array(mean)) / np.array(std)).permute(2, 0, 1).float()
    torch.testing.assert_close(preprocess_image(photo, config, "crop"), ref, atol=1e-5, rtol=0)
