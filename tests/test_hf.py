"""`ImageDataLoaders.from_hf` (data/hf.py, docs/hf-datasets.md) on Hugging Face datasets built in memory: the
vocab read from `ClassLabel`, multi-label from `Sequence(ClassLabel)`, string labels, splits, the preprocessing
of image files (checked against timm's transform run by hand), lazy decoding, and the errors."""
import sys

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

datasets = pytest.importorskip("datasets")
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Sequence, Value  # noqa: E402

from fastfreeze import ImageDataLoaders  # noqa: E402
from fastfreeze.data.preprocess import image_transform  # noqa: E402
from helpers import tiny_learner  # noqa: E402

RNG = np.random.default_rng(0)
NAMES = ["zebra", "ant", "mole"]  # not sorted: the ClassLabel order must be kept


def images(n, size=12):
    return [PILImage.fromarray(RNG.integers(0, 256, (size, size + 2, 3), dtype=np.uint8)) for _ in range(n)]


def class_label_dataset(labels, names=NAMES, **extra):
    features = Features({"image": Image(), "label": ClassLabel(names=names), **{k: f for k, (f, _) in extra.items()}})
    columns = {"image": images(len(labels)), "label": labels, **{k: v for k, (_, v) in extra.items()}}
    return Dataset.from_dict(columns, features=features)


def test_the_vocab_is_the_class_label_names_in_their_order():
    data = DatasetDict(train=class_label_dataset([0, 1, 2, 0, 1, 2, 0, 1]),
                       validation=class_label_dataset([2, 1, 0]))
    dls = ImageDataLoaders.from_hf(data, size=8, bs=4, num_workers=0, augment=False)
    assert dls.vocab == NAMES and dls.c == 3 and dls.task == "single_label"
    assert dls.train.dataset.labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert dls.valid.dataset.labels.tolist() == [2, 1, 0]
    x, y = next(iter(dls.valid))
    assert x.shape == (3, 3, 8, 8) and y.tolist() == [2, 1, 0]


def test_items_are_the_images_through_timms_evaluation_transform():
    """Validation item i is timm's evaluation transform of image i converted to RGB (the files' preprocessing);
    a grayscale image comes back with 3 channels."""
    gray = [PILImage.fromarray(RNG.integers(0, 256, (12, 14), dtype=np.uint8)) for _ in range(2)]
    valid = Dataset.from_dict({"image": gray, "label": [0, 1]},
                              features=Features({"image": Image(), "label": ClassLabel(names=NAMES)}))
    data = DatasetDict(train=class_label_dataset([0, 1, 2, 0]), validation=valid)
    dls = ImageDataLoaders.from_hf(data, size=8, bs=2, num_workers=0)
    by_hand = image_transform(dls.data_config, training=False)
    for i, image in enumerate(gray):
        assert torch.equal(dls.valid.dataset[i][0], by_hand(image.convert("RGB")))


def test_images_are_decoded_one_item_at_a_time():
    data = class_label_dataset([0, 1, 2, 0, 1, 2])
    dls = ImageDataLoaders.from_hf(data, valid_pct=0.5, size=8, bs=2, num_workers=0, augment=False)
    decoded = []
    original = dls.train.dataset.images.__class__.__getitem__

    class Counting(dls.train.dataset.images.__class__):
        def __getitem__(self, key):
            decoded.append(key)
            return original(self, key)
    dls.train.dataset.images.__class__ = Counting
    next(iter(dls.train))
    assert len(decoded) == 2  # one batch of 2: two rows read, not the whole column


def test_multi_label_from_a_sequence_of_class_labels():
    tags = ["red", "round", "small"]
    features = Features({"image": Image(), "tags": Sequence(ClassLabel(names=tags))})
    data = Dataset.from_dict({"image": images(10), "tags": [[0], [1, 2], [0, 2], [2], [0, 1, 2]] * 2},
                             features=features)
    dls = ImageDataLoaders.from_hf(data, label_col="tags", valid_pct=0.2, size=8, bs=4, num_workers=0)
    assert dls.task == "multi_label" and dls.vocab == tags and dls.c == 3
    every = torch.cat([dls.train.dataset.labels, dls.valid.dataset.labels])
    assert every.shape == (10, 3)
    assert sorted(map(tuple, every.tolist())) == sorted([(1, 0, 0), (0, 1, 1), (1, 0, 1), (0, 0, 1), (1, 1, 1)] * 2)
    learn = tiny_learner(dls)
    assert type(learn.loss_func).__name__ == "MultiLabelLoss"


def test_string_labels_are_class_names_sorted_and_split_stratified():
    data = Dataset.from_dict({"img": images(10), "kind": ["dog", "cat"] * 5},
                             features=Features({"img": Image(), "kind": Value("string")}))
    dls = ImageDataLoaders.from_hf(data, image_col="img", label_col="kind", valid_pct=0.2, size=8, bs=2,
                                   num_workers=0)
    assert dls.vocab == ["cat", "dog"]
    # stratified: round(5 * 0.2) = 1 item of each class in validation
    assert sorted(dls.valid.dataset.labels.tolist()) == [0, 1] and len(dls.train.dataset) == 8


def test_a_missing_column_or_split_is_named_with_the_fix():
    data = DatasetDict(train=class_label_dataset([0, 1, 2]), test=class_label_dataset([0, 1, 2]))
    with pytest.raises(KeyError, match=r"no column 'labels' \(its columns: image, label\): pass label_col="):
        ImageDataLoaders.from_hf(data, label_col="labels", valid_split="test", size=8)
    with pytest.raises(KeyError, match=r"no column 'img' .*pass image_col="):
        ImageDataLoaders.from_hf(data, image_col="img", valid_split="test", size=8)
    with pytest.raises(KeyError, match=r"no 'validation' split \(its splits: train, test\): pass valid_split=.*"
                                       r"or valid_pct=0.2"):
        ImageDataLoaders.from_hf(data, size=8)
    with pytest.raises(TypeError, match="datasets.Dataset or DatasetDict"):
        ImageDataLoaders.from_hf({"image": [], "label": []}, size=8)


def test_the_checks_of_the_other_entry_points_apply():
    only_valid = DatasetDict(train=class_label_dataset([0, 1, 0, 1]), validation=class_label_dataset([2, 0]))
    with pytest.raises(ValueError, match=r"validation label\(s\) \['mole'\] never occur in the training labels"):
        ImageDataLoaders.from_hf(only_valid, size=8, num_workers=0)
    single = DatasetDict(train=class_label_dataset([1, 1, 1]), validation=class_label_dataset([1]))
    with pytest.raises(ValueError, match="the training labels hold a single class"):
        ImageDataLoaders.from_hf(single, size=8, num_workers=0)
    unlabelled = class_label_dataset([0, 1, -1, 2, 0])  # -1: the datasets library's "no label"
    with pytest.raises(ValueError, match="'train' item 2 has an empty label"):
        ImageDataLoaders.from_hf(DatasetDict(train=unlabelled), valid_pct=0.2, size=8, num_workers=0)
    not_images = Dataset.from_dict({"image": [[1, 2]] * 4, "label": [0, 1, 0, 1]})
    dls = ImageDataLoaders.from_hf(not_images, valid_pct=0.5, size=8, num_workers=0, bs=2)
    with pytest.raises(TypeError, match=r"column 'image' is a list, not an image: .*cast_column\('image', "):
        next(iter(dls.train))


def test_balance_and_training_on_hf_data():
    data = DatasetDict(train=class_label_dataset([0] * 6 + [1] * 2 + [2] * 2),
                       validation=class_label_dataset([0, 1, 2]))
    dls = ImageDataLoaders.from_hf(data, size=8, bs=2, num_workers=0, balance=True)
    assert dls.train.sampler.weights.tolist() == pytest.approx([1 / 6] * 6 + [1 / 2] * 4)
    learn = tiny_learner(dls, class_weights="balanced")
    assert learn.loss_func.weight.tolist() == pytest.approx([10 / 18, 10 / 6, 10 / 6])
    learn.fit(1, 1e-3)
    assert len(learn.recorder.values) == 1


def test_without_datasets_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now raises ImportError
    with pytest.raises(ImportError, match=r"from_hf needs Hugging Face datasets: pip install 'fastfreeze\[hf\]'"):
        ImageDataLoaders.from_hf(object(), size=8)


def test_the_training_size_can_change_between_epochs_as_for_files():
    """ProgressiveResize's hook: `set_train_size` reaches the items of a Hugging Face dataset too, and the
    validation items stay at the data's size."""
    data = DatasetDict(train=class_label_dataset([0, 1, 2, 0]), validation=class_label_dataset([2, 1]))
    dls = ImageDataLoaders.from_hf(data, size=16, bs=4, num_workers=0, augment=False)
    assert next(iter(dls.train))[0].shape[-2:] == (16, 16)
    dls.set_train_size(8)
    assert dls.current_train_size() == (8, 8)
    assert next(iter(dls.train))[0].shape[-2:] == (8, 8)
    assert next(iter(dls.valid))[0].shape[-2:] == (16, 16)
