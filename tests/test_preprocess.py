"""Preprocessing: data configs from timm, one ImageNet default, image layouts, and the evaluation transform of
one item."""
import math

import numpy as np
import pytest
import torch

from fastfreeze.preprocess import (IMAGENET_DATA_CONFIG, check_resize_method, image_layout, preprocess_image,
                                   resolve_data_config, with_input_size)


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


def test_denormalize_undoes_the_normalisation_and_clips():
    from fastfreeze.preprocess import denormalize
    config = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.5, 1.0)}
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0], x[0, 1], x[0, 2] = 1.0, -0.5, 3.0  # 0.5 + 0.25, 0.5 - 0.25, 0.5 + 3 (clipped to 1)
    images = denormalize(x, config)
    assert images.shape == (1, 2, 2, 3)
    assert images[0, 0, 0].tolist() == pytest.approx([0.75, 0.25, 1.0])
