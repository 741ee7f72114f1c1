"""Tests for fastfreeze/data/image_data.py: folders of tiny generated images, in-memory arrays, timm data configs."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from fastfreeze.data.image_data import ImageDataLoaders, ImageFolderDataset, split_indices

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Every image of a class is one uniform grey level, so a pixel tells which folder an item came from.
CLASS_GREY = {"dogs": 40, "cats": 120, "birds": 200}
MODES = ["RGB", "L", "RGBA", "P", "RGB"]  # grayscale, RGBA and palette files among plain RGB ones


def save_uniform(path: Path, grey: int, mode: str, size=(20, 24)) -> None:
    """A uniform image of `grey` written in `mode` (its RGB conversion is (grey, grey, grey))."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        image = Image.new("P", size, 0)
        image.putpalette([grey, grey, grey] + [0, 0, 0] * 255)
    elif mode == "L":
        image = Image.new("L", size, grey)
    elif mode == "RGBA":
        image = Image.new("RGBA", size, (grey, grey, grey, 255))
    else:
        image = Image.new("RGB", size, (grey, grey, grey))
    image.save(path)


def make_folder(root: Path, splits=("train", "valid"), per_split=(5, 2)) -> Path:
    for split, n in zip(splits, per_split):
        for name, grey in CLASS_GREY.items():
            for i in range(n):
                save_uniform(root / split / name / f"{name}_{i}.png", grey, MODES[i % len(MODES)])
    return root


def class_of_pixel(value: float) -> str:
    """The class whose grey level is nearest to a de-normalised pixel value in [0, 1]."""
    return min(CLASS_GREY, key=lambda name: abs(CLASS_GREY[name] / 255 - value))


def denormalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    return x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)


# ---------------------------------------------------------------------------------------------- folders

def test_from_folder_vocab_shapes_and_labels(tmp_path):
    dls = ImageDataLoaders.from_folder(make_folder(tmp_path), bs=4, size=32, num_workers=0)
    assert dls.vocab == ["birds", "cats", "dogs"]  # sorted folder names
    assert dls.c == 3
    assert len(dls.train.dataset) == 15 and len(dls.valid.dataset) == 6
    seen = []
    for loader in (dls.train, dls.valid):  # train batches are randomly cropped/flipped: uniform images stay uniform
        for x, y in loader:
            assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
            for image, label in zip(x, y):
                pixels = denormalise(image, IMAGENET_MEAN, IMAGENET_STD)
                assert torch.allclose(pixels, pixels.mean(), atol=1e-4)  # grey: the 3 channels agree
                seen.append((class_of_pixel(pixels.mean().item()), dls.vocab[label]))
    assert len(seen) == 12 + 6  # 15 training items in batches of 4, last partial batch dropped
    assert all(from_pixels == from_label for from_pixels, from_label in seen)
    item_path = dls.valid.dataset.items[0]
    assert dls.vocab[dls.valid.dataset.labels[0]] == item_path.parent.name


def test_eval_normalisation_matches_hand_computation(tmp_path):
    dls = ImageDataLoaders.from_folder(make_folder(tmp_path), bs=4, size=32, num_workers=0)
    white = Image.new("RGB", (40, 30), (255, 255, 255))
    colour = Image.new("RGB", (40, 30), (200, 100, 50))
    x_white, x_colour = dls.preprocess(white), dls.preprocess(colour)
    assert x_white.shape == (3, 32, 32)
    for c in range(3):
        assert torch.allclose(x_white[c], torch.tensor((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]), atol=1e-5)
        expected = ((200, 100, 50)[c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(x_colour[c], torch.tensor(expected), atol=1e-5)


def test_preprocess_of_pil_image_equals_eval_transform_by_hand(tmp_path):
    dls = ImageDataLoaders.from_folder(make_folder(tmp_path), bs=4, size=32, num_workers=0)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (45, 60, 3), dtype=np.uint8))
    # timm's eval transform written out: shorter side to floor(32 / 0.875) = 36, centre crop 32, normalise
    by_hand = T.Compose([T.Resize(36, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32),
                         T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(dls.preprocess(image), by_hand(image), atol=1e-6)
    image.save(tmp_path / "item.png")
    assert torch.allclose(dls.preprocess(tmp_path / "item.png"), by_hand(image), atol=1e-6)
    assert torch.allclose(dls.preprocess(np.asarray(image)), by_hand(image), atol=1e-6)  # uint8 array: as a file


def test_valid_pct_split_is_seeded_and_covers_every_item_once(tmp_path):
    for name, grey in CLASS_GREY.items():
        for i in range(8):
            save_uniform(tmp_path / name / f"{i}.png", grey, "RGB")
    def split(seed):
        dls = ImageDataLoaders.from_folder(tmp_path, valid_pct=0.25, seed=seed, bs=4, size=16, num_workers=0)
        return dls.train.dataset.items, dls.valid.dataset.items
    train, valid = split(0)
    assert len(valid) == 6 and len(train) == 18  # 8 per class, 2 of each to validation
    assert sorted(train + valid) == sorted(tmp_path.glob("*/*.png"))
    assert split(0) == (train, valid)
    assert split(1)[1] != valid


def test_split_indices_stratified_and_exhaustive():
    labels = [0] * 10 + [1] * 6 + [2] * 4
    train, valid = split_indices(labels, 0.25, seed=3)
    assert sorted(np.concatenate([train, valid]).tolist()) == list(range(20))
    assert [int(np.sum(np.asarray(labels)[valid] == c)) for c in range(3)] == [3, 2, 1]  # round(n * 0.25)
    with pytest.raises(ValueError, match="valid_pct"):
        split_indices(labels, 1.5)


def test_corrupt_file_error_names_the_file(tmp_path):
    root = make_folder(tmp_path)
    bad = root / "valid" / "cats" / "broken.png"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    dls = ImageDataLoaders.from_folder(root, bs=4, size=32, num_workers=0)
    with pytest.raises(ValueError) as error:
        list(dls.valid)
    assert str(bad) in str(error.value) and "remove or replace" in str(error.value)
    second = root / "train" / "dogs" / "also_broken.jpg"
    second.write_bytes(b"not an image")
    with pytest.raises(ValueError) as error:  # check=True reports every bad file at once
        ImageDataLoaders.from_folder(root, bs=4, size=32, num_workers=0, check=True)
    assert str(bad) in str(error.value) and str(second) in str(error.value)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageDataLoaders.from_folder(tmp_path / "nowhere", num_workers=0)
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "valid").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders") as error:
        ImageDataLoaders.from_folder(tmp_path / "empty", num_workers=0)
    assert str(tmp_path / "empty" / "train") in str(error.value) and "<class>" in str(error.value)
    (tmp_path / "noimages" / "a").mkdir(parents=True)
    (tmp_path / "noimages" / "b").mkdir()
    (tmp_path / "noimages" / "a" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="no image files"):
        ImageDataLoaders.from_folder(tmp_path / "noimages", valid_pct=0.2, num_workers=0)
    for i in range(3):
        save_uniform(tmp_path / "single" / "cats" / f"{i}.png", 10, "RGB")
    with pytest.raises(ValueError, match=r"the training labels hold a single class \('cats', 2 items\): a classifier needs at "
                                         r"least 2\. Add items of the other classes"):
        ImageDataLoaders.from_folder(tmp_path / "single", valid_pct=0.3, num_workers=0)
    root = make_folder(tmp_path / "extra")
    save_uniform(root / "valid" / "zebras" / "0.png", 10, "RGB")
    with pytest.raises(ValueError, match="zebras"):
        ImageDataLoaders.from_folder(root, num_workers=0)
    with pytest.raises(FileNotFoundError, match="valid_pct"):  # no valid folder: the message suggests valid_pct
        ImageDataLoaders.from_folder(make_folder(tmp_path / "trainonly", splits=("train",)), num_workers=0)


def test_show_batch_saves_a_figure(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    dls = ImageDataLoaders.from_folder(make_folder(tmp_path / "data"), bs=4, size=32, num_workers=0)
    figure = dls.show_batch(n=4, path=tmp_path / "batch.png")
    assert (tmp_path / "batch.png").stat().st_size > 0
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert len(titles) == 4 and set(titles) <= set(dls.vocab)


def test_image_folder_dataset_converts_modes_to_rgb(tmp_path):
    paths = []
    for mode in ["L", "RGBA", "P"]:
        paths.append(tmp_path / f"{mode}.png")
        save_uniform(paths[-1], 90, mode)
    dataset = ImageFolderDataset(paths, [0, 1, 2], transform=None)
    for i in range(3):
        image, label = dataset[i]
        assert image.mode == "RGB" and label == i
        assert np.all(np.asarray(image) == 90)


# ----------------------------------------------------------------------------------------------- arrays

def test_from_arrays_grayscale_uint8():
    n = 20
    values = np.arange(n, dtype=np.uint8) * 12  # image i is uniform with value 12 i
    x = np.repeat(values[:, None, None], 28, axis=1).repeat(28, axis=2)  # (N, 28, 28)
    y = np.arange(n) % 4
    dls = ImageDataLoaders.from_arrays(x, y, valid_pct=0.25, size=32, bs=6, arch="tf_efficientnet_lite0")
    assert dls.c == 4 and dls.data_config["mean"] == (0.5, 0.5, 0.5)
    xb, yb = next(iter(dls.valid))
    assert xb.shape == (4, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert torch.equal(xb[:, 0], xb[:, 1]) and torch.equal(xb[:, 1], xb[:, 2])
    valid_rows = dls.valid.dataset.indices
    expected = (torch.from_numpy(values[valid_rows.numpy()]).float() / 255 - 0.5) / 0.5
    assert torch.allclose(xb[:, 0, 5, 7], expected, atol=1e-5)  # uniform stays uniform through the resize
    assert torch.equal(yb, torch.from_numpy(y[valid_rows.numpy()]))
    train_batches = list(dls.train)
    assert [len(b[0]) for b in train_batches] == [6, 6]  # 16 training items, bs 6: the partial batch is dropped


def test_from_arrays_channels_last_and_imagenet_normalisation():
    x = np.zeros((6, 28, 28, 3), dtype=np.uint8)
    x[..., 0] = 255  # pure red
    dls = ImageDataLoaders.from_arrays(x, [0, 1] * 3, valid_pct=None, size=16, bs=6)
    xb, _ = next(iter(dls.train))
    assert xb.shape == (6, 3, 16, 16)
    for c, value in enumerate((1.0, 0.0, 0.0)):
        expected = (value - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(xb[:, c], torch.tensor(expected), atol=1e-5)


def test_from_tensors_float_channels_first():
    x = torch.zeros(10, 3, 20, 20)
    x[:, 1] = 0.25
    x_valid = torch.full((4, 3, 20, 20), 1.0)
    dls = ImageDataLoaders.from_tensors(x, torch.arange(10) % 2, x_valid, torch.tensor([0, 1, 0, 1]),
                                        vocab=["no", "yes"], size=32, bs=5)
    assert dls.vocab == ["no", "yes"] and dls.c == 2
    xb, yb = next(iter(dls.train))
    assert xb.shape == (5, 3, 32, 32)
    assert torch.allclose(xb[:, 1], torch.tensor((0.25 - IMAGENET_MEAN[1]) / IMAGENET_STD[1]), atol=1e-5)
    xv, yv = next(iter(dls.valid))
    assert torch.allclose(xv[:, 2], torch.tensor((1 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]), atol=1e-5)
    assert yv.tolist() == [0, 1, 0, 1]


def test_array_flip_augmentation_flips_some_images():
    half = np.zeros((64, 16, 16), dtype=np.uint8)
    half[:, :, 8:] = 255  # dark left half, bright right half
    torch.manual_seed(0)
    dls = ImageDataLoaders.from_arrays(half, np.arange(64) % 2, valid_pct=None, size=16, bs=64, augment=True,
                                       data_config={"mean": (0, 0, 0), "std": (1, 1, 1)})
    xb, _ = next(iter(dls.train))
    flipped = xb[:, 0, 0, 0] > 0.5  # bright on the left
    assert torch.all(xb[flipped, 0, :, :8] == 1) and torch.all(xb[~flipped, 0, :, :8] == 0)
    assert 10 < int(flipped.sum()) < 54  # about half of 64


def test_array_bicubic_resize_saturates_like_an_8bit_image():
    checkerboard = ((np.indices((8, 8)).sum(0) % 2) * 255).astype(np.uint8)[None]  # (1, 8, 8), 0 and 255
    config = {"interpolation": "bicubic", "mean": (0, 0, 0), "std": (1, 1, 1)}
    dls = ImageDataLoaders.from_arrays(checkerboard, [0], valid_pct=None, size=32, bs=1, data_config=config,
                                       vocab=["black", "white"])
    xb, _ = next(iter(dls.train))
    assert xb.min() == 0 and xb.max() == 1  # bicubic overshoots past the extremes; clipped as PIL does


def test_array_preprocess_matches_batches():
    x = np.random.default_rng(1).integers(0, 256, (8, 28, 28), dtype=np.uint8)
    dls = ImageDataLoaders.from_arrays(x, np.arange(8) % 2, valid_pct=0.5, size=32, bs=8)
    xb, _ = next(iter(dls.valid))
    first = int(dls.valid.dataset.indices[0])
    assert torch.allclose(dls.preprocess(x[first]), xb[0], atol=1e-6)
    assert torch.allclose(dls.preprocess(Image.fromarray(x[first])), xb[0], atol=1e-6)


def test_array_input_errors():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ImageDataLoaders.from_tensors(torch.full((4, 3, 8, 8), 255.0), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="labels"):
        ImageDataLoaders.from_arrays(np.zeros((4, 8, 8), np.uint8), [0, 1, 0])
    with pytest.raises(ValueError, match="shape"):
        ImageDataLoaders.from_arrays(np.zeros((4, 8, 8, 5), np.uint8), [0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"x must be a batch of images, .* but it has 5 dimensions \(shape \(2, 4, 3, 8, "
                                         r"8\)\): a batch of batches\? Join them first, e\.g\. x\.reshape"):
        ImageDataLoaders.from_arrays(np.zeros((2, 4, 3, 8, 8), np.uint8), [0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"x holds no images \(shape \(0, 8, 8, 3\)\)"):
        ImageDataLoaders.from_arrays(np.zeros((0, 8, 8, 3), np.uint8), np.zeros(0, int))
    with pytest.raises(ValueError, match=r"x_valid holds no images"):
        ImageDataLoaders.from_arrays(np.zeros((4, 8, 8, 3), np.uint8), [0, 1, 0, 1], np.zeros((0, 8, 8, 3), np.uint8), [])


def test_array_class_count_refuses_one_class_and_validation_only_classes():
    x = np.zeros((8, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"single class \(0, 8 items\).*pass vocab= naming every class"):
        ImageDataLoaders.from_arrays(x, np.zeros(8, int), valid_pct=None, size=8)
    with pytest.raises(ValueError, match=r"validation label\(s\) \[2\] never occur in the training labels.*pass vocab="):
        ImageDataLoaders.from_arrays(x, np.arange(8) % 2, x[:3], [0, 1, 2], size=8)
    dls = ImageDataLoaders.from_arrays(x, np.arange(8) % 2, x[:3], [0, 1, 2], size=8, vocab=["a", "b", "c"])
    assert dls.c == 3  # named by the vocab: accepted
    split = ImageDataLoaders.from_arrays(x, np.arange(8) % 2, valid_pct=0.25, size=8)
    assert split.c == 2  # counted on the training rows of the split


# ---------------------------------------------------------------------------------------------- configs


def test_loaders_use_the_default_batch_size_unless_given():
    x = np.zeros((500, 8, 8), dtype=np.uint8)
    y = np.arange(500) % 10
    dls = ImageDataLoaders.from_arrays(x, y, valid_pct=None, size=8)
    assert dls.train.batch_size == 16 and len(dls.train) == 31  # 500 // 16, the partial batch dropped
    dls = ImageDataLoaders.from_arrays(x, y, valid_pct=None, size=8, bs=64)
    assert dls.train.batch_size == 64 and len(dls.train) == 7


# ------------------------------------------------------------------------------------ tables (from_df, from_csv)

def grey_files(root: Path, names_and_greys) -> None:
    for name, grey in names_and_greys:
        save_uniform(root / name, grey, "RGB", size=(12, 12))


def test_from_df_valid_col_vocab_and_labels_by_hand(tmp_path):
    import pandas as pd
    greys = {"cats": 120, "dogs": 40, "birds": 200}
    rows = [("c0", "cats", False), ("d0", "dogs", False), ("b0", "birds", False), ("c1", "cats", True),
            ("d1", "dogs", False), ("b1", "birds", True)]
    grey_files(tmp_path / "images", [(f"{n}.png", greys[c]) for n, c, _ in rows])
    df = pd.DataFrame(rows, columns=["name", "animal", "is_valid"])
    # fastai's meanings: the file is path/folder/<fn_col><suff>; columns by name (or position, below)
    dls = ImageDataLoaders.from_df(df, tmp_path, fn_col="name", label_col="animal", valid_col="is_valid",
                                   folder="images", suff=".png", size=16, bs=2, num_workers=0)
    assert dls.task == "single_label" and dls.vocab == ["birds", "cats", "dogs"] and dls.c == 3
    assert [p.name for p in dls.train.dataset.items] == ["c0.png", "d0.png", "b0.png", "d1.png"]
    assert [p.name for p in dls.valid.dataset.items] == ["c1.png", "b1.png"]
    assert dls.train.dataset.labels.tolist() == [1, 2, 0, 2] and dls.valid.dataset.labels.tolist() == [1, 0]
    x, y = next(iter(dls.valid))
    pixels = [denormalise(image, IMAGENET_MEAN, IMAGENET_STD).mean().item() for image in x]
    assert [class_of_pixel(p) for p in pixels] == [dls.vocab[i] for i in y]  # the right file behind each label
    by_position = ImageDataLoaders.from_df(df.assign(name=df.name + ".png"), tmp_path / "images", valid_col=2,
                                           size=16, bs=2, num_workers=0)  # fn_col=0, label_col=1: fastai's defaults
    assert by_position.vocab == dls.vocab and len(by_position.valid.dataset) == 2


def test_from_df_valid_pct_is_a_stratified_split(tmp_path):
    import pandas as pd
    names = [f"{c}{i}.png" for c in "ab" for i in range(10)]
    grey_files(tmp_path, [(n, 40) for n in names])
    df = pd.DataFrame({"f": names, "y": [n[0] for n in names]})
    dls = ImageDataLoaders.from_df(df, tmp_path, valid_pct=0.3, seed=1, size=16, num_workers=0)
    valid_labels = dls.valid.dataset.labels.tolist()
    assert len(valid_labels) == 6 and valid_labels.count(0) == valid_labels.count(1) == 3  # round(10 * 0.3) each
    assert len(dls.train.dataset) == 14


def test_from_csv_multi_label_with_a_delimiter(tmp_path):
    grey_files(tmp_path / "imgs", [(f"{i}.png", 40 * i) for i in range(4)])
    (tmp_path / "labels.csv").write_text("file,tags,valid\n0.png,shoe red,False\n1.png,red,False\n"
                                         "2.png,shirt,True\n3.png,shirt shoe,False\n")
    dls = ImageDataLoaders.from_csv(tmp_path, "labels.csv", folder="imgs", label_delim=" ", valid_col="valid",
                                    size=16, num_workers=0)
    assert dls.task == "multi_label" and dls.vocab == ["red", "shirt", "shoe"] and dls.c == 3
    assert dls.train.dataset.labels.tolist() == [[1, 0, 1], [1, 0, 0], [0, 1, 1]]
    assert dls.valid.dataset.labels.tolist() == [[0, 1, 0]]


def test_from_df_tag_columns_and_regression(tmp_path):
    import pandas as pd
    grey_files(tmp_path, [(f"{i}.png", 40) for i in range(4)])
    df = pd.DataFrame({"f": [f"{i}.png" for i in range(4)], "cat": [1, 0, 1, 0], "dog": [0, 1, 1, 1],
                       "age": [1.5, 2.25, 3.0, 0.5], "v": [0, 0, 0, 1]})
    tags = ImageDataLoaders.from_df(df, tmp_path, label_col=["cat", "dog"], valid_col="v", size=16, num_workers=0)
    assert tags.task == "multi_label" and tags.vocab == ["cat", "dog"]
    assert tags.train.dataset.labels.tolist() == [[1, 0], [0, 1], [1, 1]]
    reg = ImageDataLoaders.from_df(df, tmp_path, label_col="age", valid_col="v", size=16, num_workers=0)
    assert reg.task == "regression" and reg.c == 1 and reg.vocab is None
    assert reg.train.dataset.labels.tolist() == [[1.5], [2.25], [3.0]]


def test_from_df_errors_name_the_row_or_the_column(tmp_path):
    import pandas as pd
    grey_files(tmp_path, [("a.png", 40), ("b.png", 40)])
    df = pd.DataFrame({"f": ["a.png", "b.png"], "y": ["x", ""]})
    with pytest.raises(KeyError, match=r"no column 'label' \(label_col='label'\)"):
        ImageDataLoaders.from_df(df, tmp_path, label_col="label")
    with pytest.raises(ValueError, match=r"row 1 \(b.png\) of the table has an empty label"):
        ImageDataLoaders.from_df(df, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"row 1 \(c.png\) of the table"):
        ImageDataLoaders.from_df(df.assign(f=["a.png", "c.png"]), tmp_path)
    zero_row = pd.DataFrame({"f": ["a.png", "b.png"], "t1": [1, 0], "t2": [0, 0]})
    with pytest.raises(ValueError, match="item 1 has no label: its multi-hot row is all zeros"):
        ImageDataLoaders.from_df(zero_row, tmp_path, label_col=["t1", "t2"])
    Path(tmp_path / "b.png").write_bytes(b"not an image")
    dls = ImageDataLoaders.from_df(df.assign(y=["x", "z"]), tmp_path, valid_pct=None, size=16, num_workers=0)
    with pytest.raises(ValueError, match=r"row 1 \(b.png\) of the table: cannot read image file"):
        dls.train.dataset[1]


def test_test_dl_on_files_and_arrays_without_labels(tmp_path):
    dls = ImageDataLoaders.from_folder(make_folder(tmp_path), bs=4, size=32, num_workers=0)
    files = dls.valid.dataset.items
    dl = dls.test_dl(files)
    batches = list(dl)
    assert all(len(b) == 1 for b in batches)  # (x,): no labels
    x = torch.cat([b[0] for b in batches])
    expected = torch.stack([dls.valid.dataset[i][0] for i in range(len(files))])  # the validation transform
    assert torch.allclose(x, expected)
    labelled = dls.test_dl(files, labels=[dls.vocab[i] for i in dls.valid.dataset.labels])
    assert torch.cat([b[1] for b in labelled]).tolist() == list(dls.valid.dataset.labels)
    images = np.full((3, 10, 10), 255, dtype=np.uint8)  # white squares, as an array batch
    array_batch = next(iter(dls.test_dl(images)))[0]
    white = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(1, 3, 1, 1)
    assert array_batch.shape == (3, 3, 32, 32) and torch.allclose(array_batch, white.expand(3, 3, 32, 32), atol=1e-5)


def test_check_lists_unreadable_files_with_their_rows(tmp_path):
    import pandas as pd
    grey_files(tmp_path, [("a.png", 40), ("c.png", 40)])
    (tmp_path / "b.png").write_bytes(b"not an image")
    df = pd.DataFrame({"f": ["a.png", "b.png", "c.png"], "y": ["x", "y", "x"]})
    with pytest.raises(ValueError, match=r"1 unreadable image file\(s\): remove or replace them\n  row 1 \(b.png\) of "
                                         r"labels.csv: "):
        ImageDataLoaders.from_df(df, tmp_path, check=True, source="labels.csv", valid_pct=None)
