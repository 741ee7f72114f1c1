"""Preprocessing: data configs from timm, one ImageNet default, image layouts, and the evaluation transform of
one item."""
import math
import re

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from fastfreeze.data.preprocess import (IMAGENET_DATA_CONFIG, InputSize, SizedTransform, as_image_tensor,
                                        batch_to_model_input, check_resize_method, choose_config, describe_item,
                                        image_layout, image_transform, integer_image_range, interpolate_mode,
                                        is_preprocessed, item_to_model_input, open_image, preprocess_image,
                                        resolve_data_config, scaled_to_8_bits, to_rgb, with_input_size)


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


# ------------------------------------------------------------------ one image: transforms, modes, layouts, ranges
def test_training_transform_is_timms_random_resized_crop_and_flip_only():
    """The documented training augmentation (docs: image_data): a random resized crop with scale 0.08-1 and
    ratio 3/4-4/3 at the config's interpolation, a horizontal flip, then scale and normalise; no colour
    jitter, auto-augment or random erasing. A dict changes timm's options; augment=False is the evaluation
    transform."""
    import torchvision.transforms as T
    config = with_input_size({"interpolation": "bilinear", "mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6)}, 24)
    steps = image_transform(config, training=True).transforms
    assert [type(s).__name__ for s in steps] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip",
                                                "MaybeToTensor", "Normalize"]
    crop, flip, _, normalise = steps
    assert crop.size == (24, 24) and crop.scale == (0.08, 1.0) and crop.ratio == pytest.approx((0.75, 4 / 3), rel=1e-3)
    assert crop.interpolation == T.InterpolationMode.BILINEAR and flip.p == 0.5
    assert normalise.mean.tolist() == pytest.approx([0.1, 0.2, 0.3]) and normalise.std.tolist() == pytest.approx(
        [0.4, 0.5, 0.6])
    custom = image_transform(config, training=True, augment={"scale": (0.5, 1.0)}).transforms
    assert custom[0].scale == (0.5, 1.0) and len(custom) == 4
    evaluation = [type(s).__name__ for s in image_transform(config, training=True, augment=False).transforms]
    assert evaluation == [type(s).__name__ for s in image_transform(config).transforms] == [
        "Resize", "CenterCrop", "MaybeToTensor", "Normalize"]


def test_sixteen_bit_and_other_modes_become_8_bit_rgb():
    grey16 = Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16))  # mode I;16
    assert grey16.mode.startswith("I;16")
    assert np.asarray(to_rgb(grey16)).tolist() == [[[0] * 3, [100] * 3, [255] * 3]]
    grey32 = Image.fromarray(np.array([[257 * 7, 257 * 200]], dtype=np.int32))  # mode I
    assert np.asarray(to_rgb(grey32)).tolist() == [[[7] * 3, [200] * 3]]
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    assert np.asarray(to_rgb(palette)).tolist() == [[[10, 20, 30], [40, 50, 60]]]
    rgba = Image.fromarray(np.array([[[1, 2, 3, 0]]], dtype=np.uint8))
    assert to_rgb(rgba).mode == "RGB" and np.asarray(to_rgb(rgba)).tolist() == [[[1, 2, 3]]]
    rgb = Image.new("RGB", (1, 1))
    assert to_rgb(rgb) is rgb


def test_open_image_names_a_missing_or_unreadable_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image file .*bad\.png: .*remove or replace it"):
        open_image(tmp_path / "bad.png")
    Image.new("L", (3, 2), 9).save(tmp_path / "grey.png")
    image = open_image(tmp_path / "grey.png")
    assert image.mode == "RGB" and image.size == (3, 2) and np.asarray(image).max() == 9


def test_image_layouts_of_every_shape():
    assert image_layout((1, 8, 8)) == image_layout((4, 8, 8)) == "chw"
    assert image_layout((8, 8, 1)) == image_layout((8, 8, 4)) == "hwc"
    assert image_layout((1, 8, 1)) == "chw" and image_layout((1, 8, 1), channels_first_if_ambiguous=False) == "hwc"
    for bad in ((2, 8, 8), (8,), (1, 3, 8, 8)):
        with pytest.raises(ValueError, match="cannot read an image of shape"):
            image_layout(bad)


def test_pixel_types_and_ranges():
    shared = np.zeros((2, 4, 4), dtype=np.uint8)
    assert np.shares_memory(as_image_tensor(shared).numpy(), shared)  # not copied
    read_only = np.zeros((2, 4, 4), dtype=np.uint8)
    read_only.flags.writeable = False
    assert as_image_tensor(read_only).dtype == torch.uint8  # copied, no warning about a read-only array
    assert as_image_tensor(np.array([[0, 255]], dtype=np.int16)).dtype == torch.uint8
    assert as_image_tensor(np.array([[0.0, 1.0]])).dtype == torch.float32  # float64 to float32
    assert as_image_tensor(torch.tensor([[0.5]], dtype=torch.float16)).dtype == torch.float16
    for bad, error, message in [
            (np.array([[-1, 3]], dtype=np.int16), ValueError, r"integer images must hold values 0-255, found -1\.\.3"),
            (np.array([[0, 256]]), ValueError, r"found 0\.\.256"),
            (np.array([[0.0, 1.5]]), ValueError, r"float images must hold values in \[0, 1\], found 0\.\.1\.5"),
            (np.array([[-0.5, 0.5]]), ValueError, r"found -0\.5\.\.0\.5"),
            (np.array([[float("nan")]]), ValueError, r"the image holds NaN or infinite values \(1 in all\): fix or drop"),
            (np.zeros((0, 4, 4)), ValueError, "got no images"),
            (np.zeros((2, 2), dtype=bool), TypeError, "images must be uint8 .* or float .*, not torch.bool"),
            (np.zeros((2, 2), dtype=np.complex64), TypeError, "not torch.complex64")]:
        with pytest.raises(error, match=message):
            as_image_tensor(bad)


def test_interpolation_names_become_torch_modes():
    assert [interpolate_mode(n) for n in ("bicubic", "lanczos", "nearest", "bilinear", "box", "hamming")] == [
        "bicubic", "bicubic", "nearest-exact", "bilinear", "bilinear", "bilinear"]


def test_batches_in_every_layout_without_resizing_are_the_normalised_pixels():
    """At the input size there is nothing to resize: (x / 255 - mean) / std exactly, worked out here, in every
    layout, with alpha dropped and grey repeated."""
    mean, std = (0.5, 0.25, 0.125), (0.5, 0.25, 2.0)
    config = with_input_size({"mean": mean, "std": std}, (2, 3))
    rgba = np.arange(2 * 2 * 3 * 4, dtype=np.uint8).reshape(2, 2, 3, 4) * 5  # (N, H, W, C)
    expected = (torch.from_numpy(rgba[..., :3]).permute(0, 3, 1, 2).double() / 255
                - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(std,
                                                                              dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close(batch_to_model_input(torch.from_numpy(rgba), "hwc", config).double(), expected,
                               atol=1e-6, rtol=0)
    chw = torch.from_numpy(rgba).permute(0, 3, 1, 2).contiguous()
    torch.testing.assert_close(batch_to_model_input(chw, "chw", config).double(), expected, atol=1e-6, rtol=0)
    grey = torch.from_numpy(rgba[..., 0])
    out = batch_to_model_input(grey, "hw", config)
    for c in range(3):
        torch.testing.assert_close(out[:, c].double(), (grey.double() / 255 - mean[c]) / std[c], atol=1e-6, rtol=0)


def test_sizes_and_configs():
    assert with_input_size({}, (20, 30))["input_size"] == (3, 20, 30)
    for bad in (0, (0, 5), (5, -1)):
        with pytest.raises(ValueError, match="size must be positive"):
            with_input_size({}, bad)
    given = choose_config("test_resnet", 40, {"mean": (0.1, 0.2, 0.3), "interpolation": "bilinear"})
    assert given["mean"] == (0.1, 0.2, 0.3) and given["input_size"] == (3, 40, 40) and given["std"] == IMAGENET_STD
    assert choose_config("test_resnet", 40, None) == resolve_data_config("test_resnet", 40)
    with pytest.raises(TypeError, match="arch must be a timm model name, an nn.Module or None, not int"):
        resolve_data_config(3)
    plain = resolve_data_config(torch.nn.Linear(2, 2), 24)  # no pretrained_cfg anywhere: timm's defaults
    assert plain == with_input_size(IMAGENET_DATA_CONFIG, 24)


def test_one_item_of_every_kind_in_crop_mode_is_the_pil_evaluation_transform(tmp_path):
    """A grey array, an RGBA array and a float tensor give what PIL's image of the same pixels gives."""
    import torchvision.transforms as T
    config = with_input_size({"interpolation": "bilinear", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
                              "crop_pct": 0.8}, 16)
    by_hand = T.Compose([T.Resize(20, interpolation=T.InterpolationMode.BILINEAR), T.CenterCrop(16), T.ToTensor(),
                         T.Normalize((0.5,) * 3, (0.5,) * 3)])
    photo = np.ascontiguousarray(skimage.data.chelsea()[:60, :90])
    grey = np.ascontiguousarray(photo[..., 0])
    torch.testing.assert_close(preprocess_image(grey, config), by_hand(Image.fromarray(grey).convert("RGB")))
    torch.testing.assert_close(preprocess_image(grey[..., None], config), by_hand(Image.fromarray(grey).convert("RGB")))
    rgba = np.concatenate([photo, np.full((60, 90, 1), 7, np.uint8)], axis=2)
    torch.testing.assert_close(preprocess_image(rgba, config), by_hand(Image.fromarray(photo)))
    chw = torch.from_numpy(photo).permute(2, 0, 1).contiguous()
    torch.testing.assert_close(preprocess_image(chw, config), by_hand(Image.fromarray(photo)))
    floats = chw.float() / 255  # a float tensor: resized as a tensor (antialiased), not through PIL's 8 bits
    assert float((preprocess_image(floats, config) - by_hand(Image.fromarray(photo))).abs().max()) < 0.05
    with pytest.raises(TypeError, match="cannot preprocess a list: pass a file path, a PIL image, or an array"):
        preprocess_image([[0, 1]], config)


def test_denormalize_undoes_the_normalisation_and_clips():
    from fastfreeze.data.preprocess import denormalize
    config = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.5, 1.0)}
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0], x[0, 1], x[0, 2] = 1.0, -0.5, 3.0  # 0.5 + 0.25, 0.5 - 0.25, 0.5 + 3 (clipped to 1)
    images = denormalize(x, config)
    assert images.shape == (1, 2, 2, 3)
    assert images[0, 0, 0].tolist() == pytest.approx([0.75, 0.25, 1.0])


def test_denormalize_clips_below_zero_too():
    from fastfreeze.data.preprocess import denormalize
    config = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.5, 1.0)}
    x = torch.tensor([-3.0, -0.5, -1.0]).view(1, 3, 1, 1)  # 0.5 - 0.75 (clipped to 0), 0.5 - 0.25, 0.5 - 1 (to 0)
    assert denormalize(x, config)[0, 0, 0].tolist() == pytest.approx([0.0, 0.25, 0.0])


# ------------------------------------------------------------------ one item of every kind, every path through it
def eval_by_hand(size: int, crop_pct: float, mean, std):
    """timm's evaluation transform written out with torchvision: shorter side to int(size / crop_pct), centre crop,
    scale to [0, 1], normalise."""
    import torchvision.transforms as T
    return T.Compose([T.Resize(int(size / crop_pct), interpolation=T.InterpolationMode.BILINEAR),
                      T.CenterCrop(size), T.ToTensor(), T.Normalize(mean, std)])


def test_one_item_from_a_file_or_a_pil_image_in_both_modes(tmp_path):
    """A path (str or Path) is opened and treated as the PIL image: 'crop' is the evaluation transform worked out
    with torchvision, 'squish' PIL's resize of the whole image."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    config = with_input_size({"interpolation": "bilinear", "mean": mean, "std": std, "crop_pct": 0.8}, 16)
    photo = np.ascontiguousarray(skimage.data.chelsea()[:60, :90])
    Image.fromarray(photo).save(tmp_path / "cat.png")
    cropped = eval_by_hand(16, 0.8, mean, std)(Image.fromarray(photo))
    for item in (tmp_path / "cat.png", str(tmp_path / "cat.png"), Image.fromarray(photo)):
        torch.testing.assert_close(preprocess_image(item, config), cropped)
        squished = preprocess_image(item, config, "squish")
        assert squished.shape == (3, 16, 16) and squished.dtype == torch.float32
        assert_like_pil(squished, pil_input(photo, 16, "bilinear", mean, std), std, "bilinear")
    grey = Image.fromarray(photo[..., 1])  # mode L: grey repeated in the three channels
    assert_like_pil(preprocess_image(grey, config, "squish"), pil_input(photo[..., 1], 16, "bilinear", mean, std),
                    std, "bilinear")


def test_an_ambiguous_shape_is_channels_last_for_an_array_and_channels_first_for_a_tensor():
    """(4, 9, 3) could be 4 channels of 9 x 3 or a 4 x 9 RGB image: NumPy arrays are read channels last, tensors
    channels first (torch's convention). At the input size nothing is resized: (x / 255 - mean) / std by hand."""
    mean, std = (0.5, 0.25, 0.125), (0.5, 0.25, 2.0)
    rgb = (np.arange(4 * 9 * 3, dtype=np.uint8).reshape(4, 9, 3) * 2)  # H 4, W 9, C 3
    expected = ((rgb.astype(np.float64) / 255 - np.array(mean)) / np.array(std)).transpose(2, 0, 1)
    ours = preprocess_image(rgb, with_input_size({"mean": mean, "std": std}, (4, 9)), "squish")
    torch.testing.assert_close(ours.double(), torch.from_numpy(expected), atol=1e-6, rtol=0)
    chw = torch.from_numpy(rgb[:3, :4].copy()).permute(2, 0, 1)  # C 3, H 3, W 4: (3, 3, 4)
    expected = ((rgb[:3, :4].astype(np.float64) / 255 - np.array(mean)) / np.array(std)).transpose(2, 0, 1)
    ours = preprocess_image(chw.contiguous(), with_input_size({"mean": mean, "std": std}, (3, 4)), "squish")
    torch.testing.assert_close(ours.double(), torch.from_numpy(expected), atol=1e-6, rtol=0)


def test_float_items_in_every_layout_in_crop_mode_are_the_transform_on_the_tensor():
    """A float image is resized as a float tensor (timm's transform takes tensors): torchvision's antialiased
    bilinear resize, centre crop and normalisation of the (3, H, W) tensor, written out here; grey repeated in the
    three channels, alpha dropped, float16 computed in float32."""
    import torchvision.transforms as T
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.5)
    config = with_input_size({"interpolation": "bilinear", "mean": mean, "std": std, "crop_pct": 0.8}, 16)
    by_hand = T.Compose([T.Resize(20, interpolation=T.InterpolationMode.BILINEAR, antialias=True), T.CenterCrop(16),
                         T.Normalize(mean, std)])
    photo = np.ascontiguousarray(skimage.data.chelsea()[:60, :90]).astype(np.float32) / 255  # (H, W, 3)
    rgb = by_hand(torch.from_numpy(photo).permute(2, 0, 1).contiguous())
    grey = by_hand(torch.from_numpy(photo[..., 0])[None].expand(3, -1, -1).contiguous())
    cases = [(photo, rgb), (np.concatenate([photo, np.ones_like(photo[..., :1])], axis=2), rgb),
             (torch.from_numpy(photo).permute(2, 0, 1).contiguous(), rgb),
             (photo[..., 0], grey), (photo[..., :1], grey), (torch.from_numpy(photo[..., 0]), grey),
             (torch.from_numpy(photo[..., 0])[None], grey)]
    for item, expected in cases:
        ours = preprocess_image(item, config)
        assert ours.shape == (3, 16, 16) and ours.dtype == torch.float32
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    half = preprocess_image(torch.from_numpy(photo).permute(2, 0, 1).half(), config)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, rgb, atol=2e-3, rtol=0)  # float16 holds the pixels to 1/2048


def test_sixteen_bit_grey_in_every_byte_order_with_transparency_and_32_bit_refused_outside_16_bits():
    """16-bit grey is scaled by 255 / 65535 (x / 257, rounded) whatever its byte order or a transparent grey level;
    32-bit grey (mode I) that no file says is 32-bit is read as 16-bit, and values outside 0-65535 are refused."""
    levels = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    for mode, dtype in (("I;16B", ">u2"), ("I;16L", "<u2"), ("I;16N", "=u2")):
        image = Image.frombytes(mode, (3, 1), levels.astype(dtype).tobytes())
        assert image.mode == mode and np.asarray(to_rgb(image)).tolist() == [[[0] * 3, [100] * 3, [255] * 3]]
    transparent = Image.fromarray(levels)  # a 16-bit grey PNG with a tRNS chunk
    transparent.info["transparency"] = 0
    assert np.asarray(to_rgb(transparent)).tolist() == [[[0] * 3, [100] * 3, [255] * 3]]
    wide = Image.fromarray(np.array([[257 * 5, 257 * 3, 70000]], dtype=np.int32))
    with pytest.raises(ValueError, match=r"this 'I' image holds values 771\.\.70000, outside 0\.\.65535, the range "
                                         r"of its dtype: save it as an 8-bit or 16-bit image"):
        to_rgb(wide)


def test_a_palette_with_alpha_per_entry_becomes_its_colours_without_pils_warning():
    import warnings
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = bytes([0, 128])  # one alpha per palette entry, as PNG's tRNS gives it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL warns when such an image is converted other than through RGBA
        assert np.asarray(to_rgb(palette)).tolist() == [[[10, 20, 30], [40, 50, 60]]]


def test_one_pixel_sizes_are_allowed():
    assert with_input_size({}, 1)["input_size"] == (3, 1, 1)
    assert with_input_size({}, (1, 5))["input_size"] == (3, 1, 5)
    assert with_input_size({}, (5, 1))["input_size"] == (3, 5, 1)


def test_model_input_is_float32_whatever_torchs_default_dtype():
    """The docstring's float32 (N, 3, H, W), also when a program has set float64 as torch's default dtype:
    ((x / 255) - mean) / std by hand, in float32."""
    config = with_input_size({"mean": (0.5, 0.25, 0.125), "std": (0.5, 0.25, 2.0)}, (1, 2))
    pixels = torch.tensor([[[0, 255]]], dtype=torch.uint8)  # one 1 x 2 grey image
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        out = batch_to_model_input(pixels, "hw", config)
    finally:
        torch.set_default_dtype(previous)
    assert out.dtype == torch.float32
    assert out[0, :, 0, 0].tolist() == pytest.approx([-1.0, -1.0, -0.0625])  # (0 - mean) / std
    assert out[0, :, 0, 1].tolist() == pytest.approx([1.0, 3.0, 0.4375])  # (1 - mean) / std


# ------------------------------------------------------------------ bit depths (docs/input.md's table), by hand

def test_sixteen_bit_levels_are_divided_by_257_and_rounded(tmp_path):
    """255 / 65535 = 1 / 257: 65535 -> 255, 257 -> 1, 128 -> round(0.498) = 0, 129 -> round(0.502) = 1."""
    Image.fromarray(np.array([[0, 128, 129, 257, 65535]], dtype=np.uint16)).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as image:
        assert integer_image_range(image) == 65535
        assert np.asarray(scaled_to_8_bits(image)).tolist() == [[0, 0, 1, 1, 255]]


def test_a_32_bit_tiff_is_scaled_by_2_to_the_31_minus_1(tmp_path):
    """BitsPerSample 32: 2**30 * 255 / (2**31 - 1) = 127.50000006 -> 128 (over 2**31 + 1 it would be 127.4999999);
    a negative value is refused with the range 0..2147483647 in the message."""
    Image.fromarray(np.array([[0, 2 ** 30, 2 ** 31 - 1]], dtype=np.int32)).save(tmp_path / "wide.tif")
    with Image.open(tmp_path / "wide.tif") as image:
        assert image.mode == "I" and integer_image_range(image) == 2 ** 31 - 1
        assert np.asarray(to_rgb(image)).tolist() == [[[0] * 3, [128] * 3, [255] * 3]]
    Image.fromarray(np.array([[-1, 5]], dtype=np.int32)).save(tmp_path / "negative.tif")
    with pytest.raises(ValueError, match=r"image file .*negative\.tif: this 'I' image holds values -1\.\.5, "
                                         r"outside 0\.\.2147483647, the range of its dtype"):
        open_image(tmp_path / "negative.tif")
    Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)).save(tmp_path / "sixteen.tif")
    with Image.open(tmp_path / "sixteen.tif") as image:  # a TIFF of 16 bits: the 16-bit range
        assert integer_image_range(image) == 65535


def test_float_images_in_0_1_are_times_255_rounded_and_values_outside_are_refused():
    """0.9 in float32 is 0.89999998: times 255 in float64 229.49999 -> 229 (in float32 the product rounds to
    229.5, and rint then gives 230); 0.5 -> 127.5 -> 128 (to even); 1.0 -> 255; 0.0 -> 0."""
    image = Image.fromarray(np.array([[0.0, 0.5, 0.9, 1.0]], dtype=np.float32))
    assert image.mode == "F"
    assert np.asarray(scaled_to_8_bits(image)).tolist() == [[0, 128, 229, 255]]
    assert np.asarray(to_rgb(image)).tolist() == [[[0] * 3, [128] * 3, [229] * 3, [255] * 3]]
    for values, shown in (([0.0, 1.0001], "0..1.0001"), ([-0.0001, 1.0], "-0.0001..1"), ([0.5, 2.5], "0.5..2.5")):
        with pytest.raises(ValueError, match=rf"float \('F'\) image holds values {re.escape(shown)}, outside \[0, 1\]"):
            to_rgb(Image.fromarray(np.array([values], dtype=np.float32)))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"holds NaN or infinite values: fix or remove the image"):
            to_rgb(Image.fromarray(np.array([[0.5, bad]], dtype=np.float32)))


# ------------------------------------------------------------------------- predict's input rule (docs/input.md)

def test_is_preprocessed_is_a_float_holding_a_value_outside_0_1():
    for images in (torch.tensor([0.0, 0.5, 1.0]), np.array([0.0, 1.0]), torch.tensor([1.0]), torch.tensor([0.0]),
                   torch.zeros(0), torch.tensor([300]), np.array([-5], dtype=np.int16), np.array([[0, 255]], np.uint8)):
        assert not is_preprocessed(images)
    for values in (torch.tensor([-0.001, 0.5]), torch.tensor([0.5, 1.001]), torch.tensor([-2.0]),
                   torch.tensor([1.5]), np.array([[2.5]]), torch.tensor([-1.0, 0.5], dtype=torch.bfloat16),
                   torch.tensor([3.0], requires_grad=True)):
        assert is_preprocessed(values)


def test_describe_item_names_the_file_or_the_kind_dtype_and_shape():
    assert describe_item("a/b.png") == "image file a/b.png"
    assert describe_item(Image.new("L", (3, 2))) == "PIL image (mode 'L', size (3, 2))"
    assert describe_item(np.zeros((2, 3), np.uint8)) == "array of dtype uint8 and shape (2, 3)"
    assert describe_item(torch.zeros(3, 4, 4)) == "Tensor of dtype torch.float32 and shape (3, 4, 4)"


def test_item_to_model_input_takes_a_preprocessed_input_as_it_is_and_refuses_a_wrong_shape_or_nan():
    config = with_input_size({}, 4)
    given = torch.linspace(-2.0, 2.0, 48).reshape(3, 4, 4)
    assert torch.equal(item_to_model_input(given, config), given)
    as_float64 = given.double().numpy()
    out = item_to_model_input(as_float64, config)
    assert out.dtype == torch.float32 and torch.equal(out, given)
    read_only = given.numpy().copy()
    read_only.flags.writeable = False
    out = item_to_model_input(read_only, config)
    assert torch.equal(out, given) and not np.shares_memory(out.numpy(), read_only)  # copied, not aliased
    with pytest.raises(ValueError, match=r"this array of dtype float32 and shape \(3, 5, 5\) holds values outside "
                                         r"\[0, 1\] \(-2\.\.2\).* the model's input shape \(3, 4, 4\)"):
        item_to_model_input(np.full((3, 5, 5), -2.0, np.float32) + np.eye(5, dtype=np.float32) * 4, config)
    with_nan = np.zeros((3, 4, 4), np.float32)
    with_nan[0, 0, 0], with_nan[2, 3, 3] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"cannot predict on this array of dtype float32 and shape \(3, 4, 4\): "
                                         r"it holds 2 NaN or infinite value\(s\)"):
        item_to_model_input(with_nan, config)


def test_item_to_model_input_preprocesses_an_image_cropped_by_default_or_squished():
    """A 4 x 4 image, left half 0, right half 255, input 4 px, crop_pct 0.5, mean 0.5, std 0.25: squished it is
    its own pixels normalised, (0 - 0.5) / 0.25 = -2 and (1 - 0.5) / 0.25 = 2; cropped it is first resized to
    8 px, whose centre 4 columns hold the two blended columns next to the edge (strictly between -2 and 2)."""
    config = with_input_size({"mean": (0.5,) * 3, "std": (0.25,) * 3, "crop_pct": 0.5,
                              "interpolation": "bilinear"}, 4)
    image = np.zeros((4, 4, 3), np.uint8)
    image[:, 2:] = 255
    squished = item_to_model_input(image, config, "squish")
    assert squished.shape == (3, 4, 4) and squished[:, :, :2].eq(-2).all() and squished[:, :, 2:].eq(2).all()
    cropped = item_to_model_input(image, config)
    assert cropped.shape == (3, 4, 4)
    torch.testing.assert_close(cropped[:, :, 0], torch.full((3, 4), -2.0))
    torch.testing.assert_close(cropped[:, :, 3], torch.full((3, 4), 2.0))
    assert ((cropped[:, :, 1:3] > -1.99) & (cropped[:, :, 1:3] < 1.99)).all()
    assert torch.equal(item_to_model_input(torch.from_numpy(image).permute(2, 0, 1), config, "squish"), squished)


# -------------------------------------------------------------- progressive resizing (docs/progressive-resizing.md)

def test_input_size_holds_height_and_width_in_shared_memory():
    size = InputSize(8)
    assert size.get() == (8, 8) and size.hw.is_shared() and repr(size) == "InputSize(8, 8)"
    size.set((6, 10))
    assert size.get() == (6, 10) and size.hw.is_shared()
    size.set(12)
    assert size.get() == (12, 12)
    assert InputSize((3, 5)).get() == (3, 5)


def test_sized_transform_builds_one_transform_per_size_at_the_size_set():
    """A uniform grey image of level 51 (0.2) is (0.2 - 0.5) / 0.25 = -1.2 everywhere, at each size set."""
    config = with_input_size({"mean": (0.5,) * 3, "std": (0.25,) * 3, "crop_pct": 1.0,
                              "interpolation": "bilinear"}, 16)
    size = InputSize((8, 12))
    transform = SizedTransform(config, size)
    grey = Image.new("RGB", (20, 20), (51, 51, 51))
    out = transform(grey)
    assert out.shape == (3, 8, 12)
    torch.testing.assert_close(out, torch.full((3, 8, 12), -1.2))
    first = transform.current()
    steps = [type(t).__name__ for t in transform.transforms]
    assert transform.current() is first and "CenterCrop" in steps and "RandomHorizontalFlip" not in steps  # evaluation
    size.set(6)
    assert transform(grey).shape == (3, 6, 6) and transform.current() is not first
    size.set((8, 12))
    assert transform.current() is first and sorted(transform.built) == [(6, 6), (8, 12)]


@pytest.mark.parametrize("training, augment, first_step", [(True, True, "RandomResizedCropAndInterpolation"),
                                                           (True, None, "RandomResizedCropAndInterpolation"),
                                                           (True, False, "Resize"), (False, True, "Resize")])
def test_sized_transform_is_the_training_one_only_when_training_with_augmentation(training, augment, first_step):
    config = with_input_size({}, 16)
    options = {} if augment is None else {"augment": augment}  # None: augment left at its default (True)
    transform = SizedTransform(config, InputSize(10), training=training, **options)
    assert type(transform.transforms[0]).__name__ == first_step
    assert transform(Image.new("RGB", (24, 24), (9, 9, 9))).shape == (3, 10, 10)


def test_a_batch_with_nan_names_the_first_image_that_holds_it_and_counts_all():
    """Images 0, 1 and 3 of a (4, 2, 2, 3) float batch are finite; image 2 holds a NaN and an inf: 'image 2', '2 in
    all'. One image of any other rank is 'the image'."""
    batch = np.full((4, 2, 2, 3), 0.5, np.float32)
    batch[2, 0, 1, 2], batch[2, 1, 1, 0] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"^image 2 of the batch holds NaN or infinite values \(2 in all\): fix or "
                                         r"drop those images"):
        as_image_tensor(batch)
    for one, count in ((batch[2], 2), (batch[2, :, :, 0], 1), (batch[2].transpose(2, 0, 1), 2)):
        with pytest.raises(ValueError, match=rf"^the image holds NaN or infinite values \({count} in all\)"):
            as_image_tensor(one)
