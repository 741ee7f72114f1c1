"""The training items made as validation items are: the flips of an array dataset switched off, the validation
transform in place of the training one, nothing for a dataset it cannot tell about; the training data itself
unchanged."""
import numpy as np
import torch

from fastfreeze.data.eval_view import eval_view
from fastfreeze.data.image_data import ArrayImageDataset
from fastfreeze.data.preprocess import resolve_data_config


def test_an_array_dataset_is_viewed_without_its_flips():
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    images[:, :, :4] = 255  # left half white: a flip shows as a white right half
    config = resolve_data_config("test_resnet", size=8)
    train = ArrayImageDataset(images, [0, 1, 0, 1], config, augment=True)
    view = eval_view(train)
    assert view.augment is False and train.augment is True
    x, _ = view.__getitems__([(i, 7) for i in range(4)])
    assert (x[:, :, :, :4] > x[:, :, :, 4:]).all()  # no image flipped, whatever the seed


class WithTransform:
    def __init__(self, transform):
        self.transform = transform


def test_a_dataset_with_a_transform_gets_the_validation_transform():
    train, valid = WithTransform("random crop and flip"), WithTransform("resize and centre crop")
    view = eval_view(train, valid)
    assert view.transform == "resize and centre crop" and train.transform == "random crop and flip"


def test_nothing_when_it_cannot_tell():
    assert eval_view(WithTransform("random crop"), None) is None
    assert eval_view(torch.utils.data.TensorDataset(torch.zeros(2, 3))) is None
