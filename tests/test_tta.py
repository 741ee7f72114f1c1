"""Tests for fastfreeze/inference/tta.py: deterministic views give back the plain predictions, a flip average worked out
with torch, crops at the corners by a quadrant image, and data without labels."""
import numpy as np
import pytest
import torch

from fastfreeze.data.image_data import ImageDataLoaders
from fastfreeze.inference.tta import crop_view, hflip, identity, tta, tta_views
from fastfreeze.vision import vision_learner


def learner():
    g = np.random.default_rng(0)
    x = g.integers(0, 255, (24, 16, 16, 3), dtype=np.uint8)
    y = np.arange(24) % 3
    dls = ImageDataLoaders.from_arrays(x, y, x[:10], y[:10], size=32, bs=8)
    torch.manual_seed(0)
    return vision_learner(dls, "test_resnet", pretrained=False, progress=False), x


def test_a_deterministic_view_gives_the_plain_predictions_and_a_flip_averages_by_hand():
    learn, _ = learner()
    plain, targs = learn.get_preds()
    for views in ([identity], [identity, identity]):
        preds, tta_targs = learn.tta(views=views)
        assert torch.allclose(preds, plain, atol=1e-6) and torch.equal(tta_targs, targs)
    assert torch.allclose(learn.tta(n=1)[0], plain, atol=1e-6)
    x = torch.cat([b[0] for b in learn.dls.valid])
    learn.model.eval()
    with torch.no_grad():
        by_hand = (torch.softmax(learn.model(x), 1) + torch.softmax(learn.model(x.flip(-1)), 1)) / 2
    flip_avg, _ = tta(learn, views=[identity, hflip])
    assert torch.allclose(flip_avg, by_hand, atol=1e-5)
    assert not torch.allclose(flip_avg, plain, atol=1e-4)  # the flip did change the predictions
    four, _ = learn.tta()  # n=4: plain, flip, centre crop, flipped centre crop
    assert four.shape == plain.shape and torch.allclose(four.sum(1), torch.ones(len(four)), atol=1e-5)


def test_corner_crops_of_a_quadrant_image():
    x = torch.zeros(1, 1, 4, 4)
    x[..., :2, :2], x[..., :2, 2:], x[..., 2:, :2], x[..., 2:, 2:] = 1.0, 2.0, 3.0, 4.0
    for position, value in [("top_left", 1.0), ("top_right", 2.0), ("bottom_left", 3.0), ("bottom_right", 4.0)]:
        crop = crop_view(position, scale=0.5)(x)
        assert crop.shape == x.shape and torch.allclose(crop, torch.full_like(x, value)), position
    assert [v.__name__ for v in tta_views(6)] == ["identity", "hflip", "crop_center", "crop_center_flipped",
                                                 "crop_top_left", "crop_top_left_flipped"]
    with pytest.raises(ValueError, match="n must be between 1 and 12 views"):
        tta_views(13)
    with pytest.raises(ValueError, match="position must be one of"):
        crop_view("middle")


def test_tta_on_images_without_labels():
    learn, x = learner()
    preds, targs = learn.tta(dl=learn.dls.test_dl(x[:5]), n=2)
    assert targs is None and preds.shape == (5, 3)
    plain, no_targs = learn.get_preds(dl=learn.dls.test_dl(x[:5]))
    assert no_targs is None and torch.allclose(plain, learn.get_preds()[0][:5], atol=1e-6)
