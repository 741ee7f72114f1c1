"""One validation path for every way data comes in (issue 26, points 1, 2, 3, 5 and 9): each test is written
against what a user sees, the exception type and the words that name the fix, with counts worked out by hand."""
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from fastfreeze import Callback, DataLoaders, Learner, accuracy
from fastfreeze.callbacks.mixup import CutMix, MixUp
from fastfreeze.core.validation import check_classes, spelling_variants
from fastfreeze.data.image_data import ImageDataLoaders
from fastfreeze.data.preprocess import is_preprocessed, open_image
from fastfreeze.inference.predictor import load_learner
from fastfreeze.vision import vision_learner
from helpers import array_dls, blobs, mlp2

pd = pytest.importorskip("pandas")

SINGLE = r"the training labels hold a single class \({}, (\d+) items\): a classifier needs at least 2\. Add items"


def grey(path, value=100, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)
    return path


def folder(root, classes=("cat", "dog"), n=4):
    for c in classes:
        for i in range(n):
            grey(root / c / f"{c}{i}.png", 50 + 100 * classes.index(c))
    return root


def table(root, names, labels, valid=None):
    for n in dict.fromkeys(names):
        grey(root / n)
    columns = {"fname": names, "label": labels}
    if valid is not None:
        columns["is_valid"] = valid
    return pd.DataFrame(columns)


def quiet(build, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build(*args, **kwargs)


# ------------------------------------------------------------------------------ 1. tables accept what folders refuse

def test_a_single_class_is_refused_with_the_same_message_from_every_entry_point(tmp_path):
    x = np.zeros((6, 8, 8), np.uint8)
    names = [f"{i}.png" for i in range(6)]
    entries = {
        "folder": lambda: ImageDataLoaders.from_folder(folder(tmp_path / "f", ("cat",)), valid_pct=0.25,
                                                       num_workers=0),
        "table": lambda: ImageDataLoaders.from_df(table(tmp_path / "t", names, ["cat"] * 6), tmp_path / "t",
                                                  num_workers=0),
        "list": lambda: ImageDataLoaders.from_lists(tmp_path / "t", names, ["cat"] * 6, num_workers=0),
        "strings in an array": lambda: ImageDataLoaders.from_arrays(x, np.array(["cat"] * 6), size=8),
        "arrays": lambda: ImageDataLoaders.from_arrays(x, np.zeros(6, int), size=8),
        "tensors": lambda: DataLoaders.from_tensors(torch.zeros(6, 2), torch.zeros(6, dtype=torch.long))}
    for where, build in entries.items():
        name = "0" if where in ("arrays", "tensors") else "'cat'"
        with pytest.raises(ValueError, match=SINGLE.format(name)):
            build()


def test_a_class_only_in_validation_rows_is_refused(tmp_path):
    names = [f"{i}.png" for i in range(6)]
    df = table(tmp_path, names, ["cat", "dog", "cat", "dog", "cat", "bird"], [False] * 4 + [True] * 2)
    with pytest.raises(ValueError, match=r"validation label\(s\) \['bird'\] never occur in the training labels "
                                         r"\(which hold 2 classes, \['cat', 'dog'\]\).*Add training items of those "
                                         r"classes or drop them from validation"):
        ImageDataLoaders.from_df(df, tmp_path, valid_col="is_valid", num_workers=0)
    x = np.zeros((4, 8, 8), np.uint8)  # the same through arrays of names
    with pytest.raises(ValueError, match=r"validation label\(s\) \['bird'\] never occur"):
        ImageDataLoaders.from_arrays(x, np.array(["cat", "dog"] * 2), x[:2], np.array(["cat", "bird"]), size=8)


def test_a_file_listed_twice_is_refused_naming_the_rows_unless_it_repeats_its_label(tmp_path):
    names = ["a.png", "b.png", "c.png", "d.png", "a.png", "e.png"]
    labels = ["cat", "dog", "cat", "dog", "dog", "cat"]
    with pytest.raises(ValueError, match=r"1 item\(s\) listed more than once with different labels.*\n  row 0 "
                                         r"\(a\.png\) of the table: 'cat', row 4 \(a\.png\) of the table: 'dog'\n"
                                         r"Keep one row per file"):
        ImageDataLoaders.from_df(table(tmp_path, names, labels), tmp_path, num_workers=0)
    labels[4] = "cat"
    flags = [False, False, False, True, True, True]
    with pytest.raises(ValueError, match=r"1 item\(s\) are in both the training and the validation data.*\n  row 0 "
                                         r"\(a\.png\) of the table \(train\), row 4 \(a\.png\) of the table \(valid\)"):
        ImageDataLoaders.from_df(table(tmp_path, names, labels, flags), tmp_path, valid_col="is_valid",
                                 num_workers=0)
    flags[4] = False  # the same label in the same split: kept once, said
    with pytest.warns(UserWarning, match=r"1 item\(s\) repeat another with the same label and are counted once"):
        dls = ImageDataLoaders.from_df(table(tmp_path, names, labels, flags), tmp_path, valid_col="is_valid",
                                       num_workers=0)
    report = dls.summary(show=False)
    assert (report.n_train, report.n_valid) == (3, 2)  # 6 rows, one repeated: a, b, c train; d, e valid
    assert report.train_counts == [2, 1] and report.valid_counts == [1, 1]  # cat: a, c | e; dog: b | d
    assert report.skipped == [("row 4 (a.png) of the table", "the same file as row 0 (a.png) of the table: "
                                                              "counted once")]


def test_labels_differing_by_case_or_spaces_warn_and_say_how_to_normalise(tmp_path):
    names = [f"{i}.png" for i in range(8)]
    labels = ["cat", "cat ", "Dog", "dog", "cat", "dog", "Dog", "cat"]
    with pytest.warns(UserWarning, match=r"labels that differ only by case or surrounding spaces: 'cat' / 'cat '; "
                                         r"'Dog' / 'dog'\..*df\[col\] = df\[col\]\.str\.strip\(\)\.str\.lower\(\)"):
        dls = ImageDataLoaders.from_df(table(tmp_path, names, labels), tmp_path, valid_pct=None, num_workers=0)
    assert dls.vocab == ["Dog", "cat", "dog"]  # spaces ignored (one 'cat'), case kept (two dogs): as the warning says
    assert dls.summary(show=False).train_counts == [2, 4, 2]
    assert spelling_variants(["a", "b", "B ", "c"]) == [["B ", "b"]]


def test_a_csv_without_header_is_refused_with_header_none(tmp_path):
    for i in range(6):
        grey(tmp_path / f"{i}.png")
    rows = [f"{i}.png,{'cat' if i % 2 else 'dog'}" for i in range(6)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"the column names of labels\.csv look like a row of data: the file-name "
                                         r"column is called '0\.png', which is an existing file.*header=None"):
        ImageDataLoaders.from_csv(tmp_path, "labels.csv", num_workers=0)
    dls = ImageDataLoaders.from_csv(tmp_path, "labels.csv", header=None, valid_pct=None, num_workers=0)
    assert dls.summary(show=False).n_train == 6  # no row lost
    (tmp_path / "named.csv").write_text("name,dog\n" + "\n".join(rows) + "\n")  # header's label is a class name
    with pytest.warns(UserWarning, match=r"the label column of named\.csv is called 'dog', which is also one of its "
                                         r"labels.*header=None"):
        ImageDataLoaders.from_csv(tmp_path, "named.csv", valid_pct=None, num_workers=0)


def test_the_table_warnings_are_listed_in_the_summary_notes(tmp_path):
    """Each table warning (the label column named like a label, case/space variants, a repeated row) is both a
    UserWarning and a note of dls.summary(), in the order the table is read."""
    for i in range(7):
        grey(tmp_path / f"{i}.png")
    rows = ["0.png,dog", "1.png,cat", "2.png,Cat", "3.png,dog", "4.png,cat", "5.png,dog", "1.png,cat"]  # 1.png twice
    (tmp_path / "named.csv").write_text("name,dog\n" + "\n".join(rows) + "\n")  # the header's label is a class
    with pytest.warns(UserWarning) as said:
        dls = ImageDataLoaders.from_csv(tmp_path, "named.csv", valid_pct=None, num_workers=0)
    notes = dls.summary(show=False).notes
    assert len(notes) == 3 and notes == [str(w.message) for w in said]
    assert notes[0].startswith("the label column of named.csv is called 'dog', which is also one of its labels")
    assert notes[1].startswith("labels that differ only by case or surrounding spaces: 'Cat' / 'cat'.")
    assert notes[2].startswith("1 item(s) repeat another with the same label and are counted once:\n  row 6 "
                               "(1.png) of named.csv: the same file as row 1 (1.png) of named.csv")
    text = str(dls.summary(show=False))
    assert "warnings:\n  - the label column of named.csv is called 'dog'" in text
    assert "\n  - 1 item(s) repeat another with the same label and are counted once:\n      row 6 (1.png)" in text
    assert dls.summary(show=False).train_counts == [1, 2, 3]  # Cat: row 2 | cat: 1, 4 (6 repeats 1) | dog: 0, 3, 5


def test_multi_label_tags_only_in_validation_follow_the_single_label_rule(tmp_path):
    """Tags read from the labels that only validation rows carry are refused, as classes are; tags named with
    vocab= (or the columns of multi-hot arrays) without a training example are a warning naming them."""
    names = [f"{i}.png" for i in range(5)]
    labels = ["cat dog", "dog", "cat", "cat bird", "dog"]
    flags = [False, False, False, True, True]
    df = table(tmp_path, names, labels, flags)
    with pytest.raises(ValueError, match=r"validation tag\(s\) \['bird'\] never occur in the training labels \(which "
                                         r"hold 2 tags, \['cat', 'dog'\]\): the model would get outputs it never "
                                         r"trains\. Add training items with those tags or drop them from validation; "
                                         r"if the tags are meant to be there, pass vocab= naming every tag"):
        ImageDataLoaders.from_df(df, tmp_path, label_delim=" ", valid_col="is_valid", num_workers=0)
    with pytest.warns(UserWarning, match=r"2 of the 4 tags have no training example: \['bird', 'emu'\]\. The model "
                                         r"gets outputs for them that never train"):
        dls = ImageDataLoaders.from_df(df, tmp_path, label_delim=" ", valid_col="is_valid", num_workers=0,
                                       vocab=["bird", "cat", "dog", "emu"])
    report = dls.summary(show=False)
    # training rows 0-2: cat on 0 and 2, dog on 0 and 1; validation rows 3-4: cat and bird on 3, dog on 4
    assert report.train_counts == [0, 2, 2, 0] and report.valid_counts == [1, 1, 1, 0]
    assert report.notes[0].startswith("2 of the 4 tags have no training example: ['bird', 'emu']")
    x = np.zeros((4, 8, 8), np.uint8)
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [1, 0, 0]])  # column 2: no item, training or validation
    with pytest.warns(UserWarning, match=r"1 of the 3 tags have no training example: \[2\]"):
        arrays = ImageDataLoaders.from_arrays(x, y, valid_pct=None, size=8)
    assert arrays.task == "multi_label" and arrays.c == 3


def test_classes_without_validation_items_are_a_warning_and_a_note_from_every_entry_point(tmp_path):
    x = np.zeros((6, 8, 8), np.uint8)
    message = r"no validation items for the class\(es\) \['{}'\]: the validation loss and metrics say nothing about it"
    with pytest.warns(UserWarning, match=message.format("emu")):
        dls = ImageDataLoaders.from_arrays(x, np.array(["ant", "bee", "emu"] * 2), x[:2], np.array(["ant", "bee"]),
                                           size=8)
    assert dls.summary(show=False).valid_counts == [1, 1, 0]
    assert dls.summary(show=False).notes[-1].startswith("no validation items for the class(es) ['emu']")
    with pytest.warns(UserWarning, match=message.format("2")):  # integer labels: the classes are 0, 1, 2
        tensors = DataLoaders.from_tensors(torch.zeros(6, 2), torch.tensor([0, 1, 2] * 2), torch.zeros(2, 2),
                                           torch.tensor([0, 1]))
    assert tensors.summary(show=False).valid_counts == [1, 1, 0]
    names = [f"{i}.png" for i in range(6)]
    with pytest.warns(UserWarning, match=message.format("dog")):
        listed = ImageDataLoaders.from_df(table(tmp_path, names, ["cat", "dog"] * 3, [False] * 4 + [True, False]),
                                          tmp_path, valid_col="is_valid", num_workers=0)
    assert listed.summary(show=False).valid_counts == [1, 0]  # the one validation row (4) is a cat
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every class in validation: nothing to say
        ImageDataLoaders.from_arrays(x, np.array([0, 1, 2] * 2), x[:3], np.array([2, 1, 0]), size=8)


# ------------------------------------------------------------------------------------------------------ 2. arrays

def test_integer_labels_with_gaps_are_refused_unless_the_classes_are_named():
    x = np.zeros((6, 8, 8), np.uint8)
    y = np.array([0, 1, 5, 0, 1, 5])
    with pytest.raises(ValueError, match=r"the class indices have gaps: \[2, 3, 4\] have no item although labels go up "
                                         r"to 5, so the model would get 6 outputs, 3 of which never train\. Number the "
                                         r"classes 0\.\.2 \(e\.g\. np\.unique\(y, return_inverse=True\)\[1\]\)"):
        ImageDataLoaders.from_arrays(x, y, valid_pct=None, size=8)
    with pytest.raises(ValueError, match=r"gaps: \[2, 3, 4\].*pass c="):
        DataLoaders.from_tensors(torch.zeros(6, 2), torch.as_tensor(y))
    with pytest.warns(UserWarning, match=r"3 of the 6 classes have no training example: \['c', 'd', 'e'\]"):
        dls = ImageDataLoaders.from_arrays(x, y, valid_pct=None, size=8, vocab=list("abcdef"))
    assert dls.c == 6 and dls.summary(show=False).train_counts == [2, 2, 0, 0, 0, 2]
    with pytest.warns(UserWarning, match=r"1 of the 3 classes have no training example: \[2\]"):
        check_classes([0, 1, 0], c=3)


def test_whole_number_float_labels_say_the_task_and_accuracy_on_regression_is_refused():
    x = np.zeros((6, 8, 8), np.uint8)
    y = np.array([0., 1., 2., 0., 1., 2.])
    with pytest.warns(UserWarning, match=r"floats that are all whole numbers \(3 distinct values, 0 to 2\): read as "
                                         r"regression targets \(task='regression'.*pass task='single_label'"):
        dls = ImageDataLoaders.from_arrays(x, y, valid_pct=None, size=8)
    assert dls.task == "regression" and dls.c == 1
    with pytest.raises(ValueError, match=r"metrics=accuracy compares predicted classes with class labels, but this "
                                         r"learner's task is regression.*build the data with task='single_label'"):
        Learner(nn.Linear(3 * 8 * 8, 1), dls, loss_func=nn.MSELoss(), metrics=accuracy, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said explicitly: no warning
        classes = ImageDataLoaders.from_arrays(x, y, valid_pct=None, size=8, task="single_label")
    assert classes.task == "single_label" and classes.c == 3


def test_string_labels_in_arrays_are_encoded_through_a_vocabulary():
    x = np.zeros((6, 8, 8), np.uint8)
    dls = ImageDataLoaders.from_arrays(x, np.array(["dog", "cat", "emu"] * 2), x[:3], ["emu", "cat", "cat"], size=8)
    assert dls.vocab == ["cat", "dog", "emu"] and dls.c == 3
    assert dls.train.dataset.labels.tolist() == [1, 0, 2, 1, 0, 2]
    assert dls.valid.dataset.labels.tolist() == [2, 0, 0]


def test_unknown_labels_in_test_dl_are_refused_naming_them():
    dls = array_dls()  # vocab ant, bee, cat
    x = np.zeros((3, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=r"test_dl labels \[7\] are not among this data's classes \(the vocab "
                                         r"\['ant', 'bee', 'cat'\]\).*Fix or drop those items"):
        dls.test_dl(x, labels=[0, 1, 7])
    with pytest.raises(ValueError, match=r"test_dl labels \['zebra'\] are not among this data's classes"):
        dls.test_dl(x, labels=["ant", "zebra", "bee"])
    assert dls.test_dl(x, labels=["cat", "ant", "bee"]).dataset.labels.tolist() == [2, 0, 1]
    no_vocab = ImageDataLoaders.from_arrays(x, np.array([0, 1, 2]), valid_pct=None, size=8)
    with pytest.raises(ValueError, match=r"test_dl labels \[5\] are not among this data's classes \(class indices "
                                         r"0\.\.2\)"):
        no_vocab.test_dl(x, labels=[0, 5, 1])
    with pytest.raises(ValueError, match="test_dl labels are class names, but this data has no vocab"):
        no_vocab.test_dl(x, labels=["a", "b", "c"])


# ----------------------------------------------------------------------------------------------------- 3. folders

def test_a_symlink_loop_counts_each_real_file_once_and_summary_says_so(tmp_path):
    root = folder(tmp_path / "d", n=4)
    os.symlink(root / "cat", root / "cat" / "again")  # a loop: cat/again/again/... is cat
    os.symlink(root / "cat" / "cat0.png", root / "cat" / "same.png")  # the same file twice in its class
    with pytest.warns(UserWarning, match=r"1 item\(s\) repeat another with the same label and are counted once"):
        dls = ImageDataLoaders.from_folder(root, valid_pct=0.25, num_workers=0)
    report = dls.summary(show=False)
    assert report.n_train + report.n_valid == 8  # 4 + 4 real files (before: one per path through the loop)
    assert report.train_counts == [3, 3] and report.valid_counts == [1, 1]
    reasons = dict(report.skipped)
    assert reasons[str(root / "cat" / "again")].startswith("a link to a folder already read")
    assert reasons[str(root / "cat" / "same.png")] == f"the same file as {root / 'cat' / 'cat0.png'}: counted once"
    os.symlink(root / "cat" / "cat1.png", root / "dog" / "stolen.png")  # one file, two classes
    with pytest.raises(ValueError, match=r"(?s)listed more than once with different labels.*cat1\.png: 'cat', .*"
                                         r"stolen\.png: 'dog'"):
        quiet(ImageDataLoaders.from_folder, root, valid_pct=0.25, num_workers=0)


def test_images_outside_class_folders_and_dangling_links_are_reported_up_front(tmp_path):
    root = folder(tmp_path / "d" / "train")
    folder(tmp_path / "d" / "valid", n=1)
    grey(root / "stray.png")
    os.symlink(tmp_path / "gone.png", root / "dog" / "dangling.png")
    with pytest.warns(UserWarning) as said:
        dls = ImageDataLoaders.from_folder(tmp_path / "d", num_workers=0)
    text = "\n".join(str(w.message) for w in said)
    assert f"1 image(s) lie directly in {root}, outside the class folders, and are not used" in text
    assert "1 link(s) in" in text and "dangling.png" in text and "Restore their targets or remove the links" in text
    report = dls.summary(show=False)
    assert (str(root / "stray.png"), "outside the class folders: not used") in report.skipped
    assert report.train_counts == [4, 4]
    assert sum(len(y) for _, y in dls.valid) == 2 and len(dls.train.dataset) == 8  # no dangling link among them
    assert [dls.train.dataset[i][1] for i in range(8)] == [0] * 4 + [1] * 4  # every item loads


@pytest.mark.parametrize("mode, pixels, suffix, expected", [
    ("F", np.full((4, 5), 0.5, np.float32), ".tif", 128),  # floats: [0, 1] x 255
    ("I;16", np.full((4, 5), 40000, np.uint16), ".png", 156),  # 16-bit: 40000 / 257 = 155.6
    ("I", np.full((4, 5), 2 ** 30, np.int32), ".tif", 128)])  # 32-bit TIFF: 2**30 * 255 / (2**31 - 1) = 127.5
def test_float_and_16_or_32_bit_images_are_scaled_by_their_dtype_range(tmp_path, mode, pixels, suffix, expected):
    path = tmp_path / f"x{suffix}"
    Image.fromarray(pixels).save(path)
    with Image.open(path) as check:
        assert check.mode == mode
    assert np.asarray(open_image(path)).tolist() == [[[expected] * 3] * 5] * 4


def test_images_that_cannot_be_scaled_and_decompression_bombs_name_the_file(tmp_path, monkeypatch):
    Image.fromarray(np.full((4, 5), 3.0, np.float32)).save(tmp_path / "bright.tif")
    with pytest.raises(ValueError, match=r"image file .*bright\.tif: this float \('F'\) image holds values 3\.\.3, "
                                         r"outside \[0, 1\].*save it scaled to \[0, 1\]"):
        open_image(tmp_path / "bright.tif")
    Image.fromarray(np.full((4, 5), np.nan, np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(ValueError, match=r"image file .*nan\.tif: this float \('F'\) image holds NaN or infinite"):
        open_image(tmp_path / "nan.tif")
    grey(tmp_path / "bomb.png", size=(30, 30))  # 900 pixels, more than twice the limit set below
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match=r"cannot read image file .*bomb\.png: .*raise PIL's limit before building the "
                                         r"data: PIL\.Image\.MAX_IMAGE_PIXELS = None"):
        open_image(tmp_path / "bomb.png")


# -------------------------------------------------------------------------------------------------- 5. prediction

def test_predict_refuses_non_finite_input_naming_the_item(good_export):
    learn = vision_learner(array_dls(), "test_resnet", pretrained=False, progress=False)
    image = torch.rand(3, 32, 32)
    image[0, 1, 2] = float("nan")
    for predictor in (learn, load_learner(good_export)):
        with pytest.raises(ValueError, match=r"cannot predict on this Tensor of dtype torch\.float32 and shape "
                                             r"\(3, 32, 32\): it holds 1 NaN or infinite value"):
            predictor.predict(image)
    array = np.full((40, 40, 3), np.inf, np.float32)
    with pytest.raises(ValueError, match=r"array of dtype float32 and shape \(40, 40, 3\): it holds 4800 NaN"):
        learn.predict(array)


def test_the_normalisation_rule_reads_dtype_and_range_only_at_every_size():
    """Floats in [0, 1] are an image (normalised by predict) at the input size and at any other size, exactly as
    the uint8 image they come from; floats outside [0, 1] are a preprocessed input, used as they are."""
    torch.manual_seed(0)
    learn = vision_learner(array_dls(), "test_resnet", pretrained=False, progress=False)  # 32 px, 'squish'
    model = learn.model.eval()
    mean = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)  # test_resnet's config: ImageNet's mean and std
    std = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    for size in (32, 48):
        pixels = torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
        image = pixels.float() / 255
        assert not is_preprocessed(image) and not is_preprocessed(pixels)
        _, _, from_float = learn.predict(image)
        _, _, from_uint8 = learn.predict(pixels)
        torch.testing.assert_close(from_float, from_uint8, rtol=0, atol=1e-6)
        if size == 32:  # the input size: no resize, so the input is (x - mean) / std, worked out here
            with torch.no_grad():
                by_hand = model(((image - mean) / std).unsqueeze(0)).softmax(-1)[0]
            torch.testing.assert_close(from_float, by_hand, rtol=0, atol=1e-5)
    normalised = (torch.rand(3, 32, 32) - 0.5) * 4
    assert is_preprocessed(normalised) and is_preprocessed(normalised.numpy())
    with torch.no_grad():
        as_given = model(normalised.unsqueeze(0)).softmax(-1)[0]
    torch.testing.assert_close(learn.predict(normalised)[2], as_given, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"holds values outside \[0, 1\] .* so it is taken as an already preprocessed "
                                         r"model input \(docs/input\.md\), which must have the model's input shape "
                                         r"\(3, 32, 32\)\. For an image, pass uint8 values 0-255 or floats in \[0, 1\]"):
        learn.predict((torch.rand(3, 48, 48) - 0.5) * 4)


# ------------------------------------------------------------------------------------------------------- 9. mixup

@pytest.mark.parametrize("mixer", [MixUp, CutMix])
def test_mixup_and_cutmix_take_the_class_count_from_the_learner_without_a_vocab(mixer):
    x, y = blobs(16)
    x = x.view(16, 1, 2, 2)  # images for CutMix
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    dls = DataLoaders(train, train)  # no vocab, no c
    assert dls.c is None
    seen = []

    class Targets(Callback):  # records the mixed targets
        order = 99

        def after_loss(self):
            if self.learn.training:
                seen.append(self.learn.yb[0].shape)
    model = nn.Sequential(nn.Flatten(), mlp2(n_out=3))
    Learner(model, dls, cbs=[mixer(), Targets()], progress=False).fit(1)
    assert seen == [(8, 3), (8, 3)]  # one-hot over the model's 3 outputs
