"""Bad input gives a clear error: one test per row of docs/errors.md (some rows point to tests elsewhere)."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from fastfreeze import Callback, DataLoaders, Learner
from fastfreeze.inference.export_format import InvalidExportError
from fastfreeze.inference.predictor import load_learner
from fastfreeze.data.image_data import ImageDataLoaders
from fastfreeze.vision import vision_learner
from helpers import blobs, mlp2, mlp3


def save_image(path, mode="RGB", size=(20, 16), value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(np.full(size[::-1], value * 257, dtype=np.uint16)).save(path)
    elif mode == "P":
        image = Image.new("P", size, 0)
        image.putpalette([value] * 3 + [0] * 765)
        image.save(path)
    else:
        Image.new(mode, size, value if mode == "L" else (value,) * len(mode)).save(path)


def image_folder(root, classes=("a", "b"), per_class=3, modes=("RGB",)):
    for c in classes:
        for i in range(per_class):
            save_image(root / c / f"{i}.png", modes[i % len(modes)], value=40 + 60 * classes.index(c))
    return root


# -- data ---------------------------------------------------------------------------------------------

def test_missing_data_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder .*nowhere does not exist"):
        ImageDataLoaders.from_folder(tmp_path / "nowhere", valid_pct=0.2, num_workers=0)


def test_empty_data_folder(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(ValueError, match=r"found no class sub-folders in .*data: expected path/train/<class>/<image>"):
        ImageDataLoaders.from_folder(tmp_path / "data", valid_pct=0.2, num_workers=0)
    (tmp_path / "data" / "a").mkdir()
    (tmp_path / "data" / "b").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        ImageDataLoaders.from_folder(tmp_path / "data", valid_pct=0.2, num_workers=0)


def test_one_class_only(tmp_path):
    with pytest.raises(ValueError, match=r"the training labels hold a single class \('cats', 2 items\): a classifier "
                                         r"needs at least 2\. Add items of the other classes"):
        ImageDataLoaders.from_folder(image_folder(tmp_path / "d", classes=("cats",)), valid_pct=0.3, num_workers=0)


def test_corrupt_or_non_image_file(tmp_path):
    root = image_folder(tmp_path / "d")
    bad = root / "a" / "broken.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match=r"(?s)1 unreadable image file.*broken.png"):
        ImageDataLoaders.from_folder(root, valid_pct=0.3, num_workers=0, check=True)
    dls = ImageDataLoaders.from_folder(root, valid_pct=0.3, num_workers=0, size=16, bs=16)
    with pytest.raises(ValueError, match=r"cannot read image file .*broken.png.*remove or replace it"):
        list(dls.train) + list(dls.valid)


def test_mixed_channel_counts_are_converted_not_crashed(tmp_path):
    root = image_folder(tmp_path / "d", per_class=5, modes=("RGB", "L", "RGBA", "P", "I;16"))
    dls = ImageDataLoaders.from_folder(root, valid_pct=0.2, num_workers=0, size=16, bs=4, augment=False)
    xs = [x for x, _ in dls.train] + [x for x, _ in dls.valid]
    assert all(x.shape[1:] == (3, 16, 16) for x in xs)
    assert sum(len(x) for x in xs) == 8 + 2  # drop_last on train: 8 of the 8 training images, then 2 valid


# -- labels and model --------------------------------------------------------------------------------

def label_dls(train_max, valid_max=2, n=16):
    x, y = blobs(n)
    y = y.clone()
    y[5] = train_max
    xv, yv = blobs(8, seed=1)
    yv = yv.clone()
    yv[3] = valid_max
    return DataLoaders.from_tensors(x, y, xv, yv, bs=8, shuffle=False, c=3)


def test_label_outside_the_model_outputs():
    learn = Learner(mlp2(n_out=3), label_dls(train_max=7), progress=False)
    with pytest.raises(ValueError, match=r"label 7 in a training batch, but the model has 3 outputs \(labels must be "
                                         r"0\.\.2\).*n_out=8"):
        learn.fit(1)
    learn = Learner(mlp2(n_out=3), label_dls(train_max=2, valid_max=3), progress=False)
    with pytest.raises(ValueError, match="label 3 in a validation batch"):
        learn.fit(1)
    learn = Learner(mlp2(n_out=3), label_dls(train_max=-1), progress=False)
    with pytest.raises(ValueError, match="label -1 in a training batch"):
        learn.fit(1)
    # cross-entropy's ignore_index (-100) is a valid label: no error
    Learner(mlp2(n_out=3), label_dls(train_max=-100), progress=False).fit(1)


def test_head_input_size_does_not_match_the_body():
    x = np.zeros((8, 32, 32, 3), dtype=np.uint8)
    dls = ImageDataLoaders.from_arrays(x, np.arange(8) % 2, x[:4], np.arange(4) % 2, size=32, bs=4)
    with pytest.raises(ValueError, match=r"head's first layer expects 100 input features but the body gives 96: "
                                         r"use nn.Linear\(96, \.\.\.\)"):
        vision_learner(dls, "test_resnet", pretrained=False, head=[nn.Linear(100, 2)], progress=False)
    with pytest.raises(ValueError, match="the head does not fit the body"):
        vision_learner(dls, "test_resnet", pretrained=False, head=nn.Sequential(nn.Flatten(), nn.Linear(7, 2)),
                       progress=False)


@pytest.mark.parametrize("n", [3, -4, 10])
def test_freeze_to_out_of_range(dls_5_batches, n):
    learn = Learner(mlp3(), dls_5_batches, progress=False)
    with pytest.raises(ValueError, match=rf"freeze_to\({n}\) is out of range: this learner has 3 layer groups, so n "
                                         r"must be in \[-3, 2\]"):
        learn.freeze_to(n)


def test_lr_list_of_the_wrong_length(dls_5_batches):
    learn = Learner(mlp3(), dls_5_batches, progress=False)
    for call in (lambda: learn.fit(1, lr=[1e-3, 1e-2]), lambda: learn.fit_one_cycle(1, [1e-3, 1e-2]),
                 lambda: learn.set_lrs(np.array([1e-3, 1e-2, 1e-1, 1.0]))):
        with pytest.raises(ValueError, match=r"got \d learning rates for 3 layer groups: pass one lr, a slice, or a "
                                             r"list of exactly 3"):
            call()


@pytest.mark.parametrize("call", [lambda learn: learn.fit(1, lr=-1e-3), lambda learn: learn.fit(1, lr=0.0),
                                  lambda learn: learn.fit_one_cycle(1, float("nan")),
                                  lambda learn: learn.fit_one_cycle(1, [1e-3, float("inf"), 1e-2]),
                                  lambda learn: learn.fine_tune(1, base_lr=-1e-3),
                                  lambda learn: learn.fine_tune(1, base_lr=float("nan"))])
def test_lr_that_is_not_finite_and_positive(dls_5_batches, call):
    learn = Learner(mlp3(), dls_5_batches, progress=False)
    before = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError, match=r"learning rates must be finite and > 0, got .*: pass a positive lr"):
        call(learn)
    assert all(torch.equal(p, q) for p, q in zip(learn.model.parameters(), before))  # refused before training
    assert learn.recorder.losses == []


def test_slice_with_lo_above_hi(dls_5_batches):
    learn = Learner(mlp3(), dls_5_batches, progress=False)
    with pytest.raises(ValueError, match=r"has lo > hi: slice\(lo, hi\) gives the first layer group lo and the head "
                                         r"hi, so lo must be the smaller lr: slice\(0\.0001, 0\.01\)"):
        learn.fit_one_cycle(1, slice(1e-2, 1e-4))


def test_numpy_array_of_lrs_is_a_list_of_lrs(dls_5_batches):
    """fastai accepts `lr_max=np.array([...])`; the weights are those of the same lrs given as a list."""
    def trained(lr_max):
        learn = Learner(mlp3(), DataLoaders.from_tensors(*blobs(40), *blobs(24, seed=1), bs=8, seed=0), progress=False)
        learn.fit_one_cycle(1, lr_max)
        return [p.detach() for p in learn.model.parameters()]
    as_array, as_list = trained(np.array([1e-4, 1e-3, 1e-2])), trained([1e-4, 1e-3, 1e-2])
    assert all(torch.equal(a, b) for a, b in zip(as_array, as_list))


def test_base_lr_that_is_not_one_number(dls_5_batches):
    learn = Learner(mlp3(), dls_5_batches, progress=False)
    for base_lr in ([1e-4, 1e-3, 1e-2], slice(1e-4, 1e-2), np.array([1e-3, 1e-2, 1e-1])):
        with pytest.raises(TypeError, match=r"base_lr is one number, the head's lr \(fine_tune spreads it over the "
                                            r"layer groups with lr_mult or layer_decay\), or 'auto'.*"
                                            r"learn\.fit_one_cycle\(n, lr_max=\[\.\.\.\]\)"):
            learn.fine_tune(1, base_lr=base_lr)
    with pytest.raises(ValueError, match="base_lr must be a positive number or 'auto', got 'fast'"):
        learn.fine_tune(1, base_lr="fast")


def test_lr_mult_below_one(dls_5_batches):
    learn = Learner(mlp3(), dls_5_batches, progress=False)
    with pytest.raises(ValueError, match=r"lr_mult must be >= 1 \(the head lr over the first group's; 1 gives every "
                                         r"group the head's lr\), got 0\.5"):
        learn.fine_tune(1, base_lr=1e-3, lr_mult=0.5)


def test_epochs_that_are_not_whole_numbers(dls_5_batches):
    learn = Learner(mlp3(), dls_5_batches, progress=False)
    for call in (lambda: learn.fit(1.5), lambda: learn.fit_one_cycle(2.5, 1e-3), lambda: learn.fine_tune(1.5, 1e-3)):
        with pytest.raises(TypeError, match=r"must be a whole number of epochs \(an int\), got [12]\.5"):
            call()
    learn.fit(np.int64(1), 1e-3)  # numpy ints are whole numbers
    assert len(learn.recorder.values) == 1


def test_add_cb_takes_one_callback_object(dls_5_batches):
    learn = Learner(mlp3(), dls_5_batches, progress=False)
    seen = []

    class Count(Callback):
        def after_epoch(self):
            seen.append(self.learn.epoch)
    cb = Count()
    learn.add_cb(cb)
    learn.fit(2, 1e-3)
    assert seen == [0, 1] and cb.learn is learn
    learn.remove_cb(cb)
    assert cb not in learn.cbs
    with pytest.raises(TypeError, match=r"callbacks are objects: pass Count\(\), not the class Count"):
        learn.add_cb(Count)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_infinite_loss(dls_5_batches, bad):
    class Poison(Callback):
        def after_loss(self):
            if self.learn.training and self.learn.iter == 2:
                self.learn.loss = self.learn.loss * bad
    stepped = []

    class Snap(Callback):
        order = 100

        def after_step(self):
            stepped.append([p.detach().clone() for p in self.learn.model.parameters()])
    learn = Learner(mlp2(), dls_5_batches, cbs=[Poison(), Snap()], progress=False)
    learn.divergence_guard.check_every = 1  # every step's loss read before the step (the default reads at the epoch's end)
    with pytest.raises(FloatingPointError, match=rf"training diverged: the training loss is {bad} at epoch 0, batch 2 "
                                                 r"of 'fit 1'\. The weights are all finite, and this batch's step did "
                                                 r"not run: the learner keeps them\. Lower the learning rate"):
        learn.fit(1, lr=1e-2)
    assert len(stepped) == 2  # the two good steps ran, the third did not: the weights are the second step's
    assert all(torch.equal(p, q) for p, q in zip(learn.model.parameters(), stepped[-1]))
    assert len(learn.recorder.losses) == 2


# -- weights and exports -------------------------------------------------------------------------------

def test_missing_weights_file(tmp_path, dls_5_batches):
    learn = Learner(mlp2(), dls_5_batches, path=tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match=r"no saved state at .*models/stage1.pth"):
        learn.load("stage1")
    x = np.zeros((8, 32, 32, 3), dtype=np.uint8)
    dls = ImageDataLoaders.from_arrays(x, np.arange(8) % 2, x[:4], np.arange(4) % 2, size=32, bs=4)
    with pytest.raises(FileNotFoundError, match=r"No weight file at .*missing.pth"):
        vision_learner(dls, "test_resnet", pretrained=tmp_path / "missing.pth", progress=False)


def test_mismatched_weights_file(tmp_path, dls_5_batches):
    other = Learner(mlp2(hidden=8), dls_5_batches, path=tmp_path, progress=False)
    other.save("small")
    learn = Learner(mlp2(hidden=16), dls_5_batches, path=tmp_path, progress=False)
    before = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError, match=r"(?s)do not fit this model:.*with a different shape: 0\.0\.weight: file \(8, 4\) "
                                         r"vs model \(16, 4\)"):
        learn.load("small")
    assert all(torch.equal(p, q) for p, q in zip(learn.model.parameters(), before))  # nothing half-loaded
    torch.save(mlp3().state_dict(), tmp_path / "models" / "three.pth")  # a plain state dict of another model
    with pytest.raises(ValueError, match=r"keys of the model missing from the file: 1\.weight, 1\.bias"):
        learn.load("three")
    torch.save(learn.model.state_dict(), tmp_path / "models" / "plain.pth")  # a plain state dict that fits: loads
    learn.load("plain")


def test_truncated_weights_file(tmp_path, dls_5_batches):
    learn = Learner(mlp2(), dls_5_batches, path=tmp_path, progress=False)
    file = learn.save("model")
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # an interrupted copy
    with pytest.raises(ValueError, match=r"cannot read .*models/model\.pth: it is damaged or incomplete .*Was it cut "
                                         r"short by an interrupted copy or save\? Write it again"):
        learn.load("model")


def test_load_not_strict_with_tensors_of_another_shape(tmp_path, dls_5_batches):
    Learner(mlp2(hidden=8), dls_5_batches, path=tmp_path, progress=False).save("small")
    learn = Learner(mlp2(hidden=16), dls_5_batches, path=tmp_path, progress=False)
    before = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError, match=r"(?s)do not fit this model:.*with a different shape: 0\.0\.weight: file "
                                         r"\(8, 4\) vs model \(16, 4\).*strict=False skips missing and extra keys, "
                                         r"not tensors of another shape"):
        learn.load("small", strict=False)
    assert all(torch.equal(p, q) for p, q in zip(learn.model.parameters(), before))
    torch.save({"0.0.weight": before[0] * 2}, tmp_path / "models" / "part.pth")  # a part that fits: loads
    learn.load("part", strict=False)
    assert torch.equal(learn.model[0][0].weight, before[0] * 2)


def test_load_learner_on_something_that_is_not_an_export(tmp_path, dls_5_batches):
    learn = Learner(mlp2(), dls_5_batches, path=tmp_path, progress=False)
    file = learn.save("model")
    with pytest.raises(InvalidExportError, match="is a file, not a fastfreeze export"):
        load_learner(file)
    with pytest.raises(InvalidExportError, match="not a fastfreeze export: it has no config.json"):
        load_learner(tmp_path / "models")
    with pytest.raises(FileNotFoundError, match="no export at"):
        load_learner(tmp_path / "nothing")


# -- labels from a table, tasks, metrics ----------------------------------------------------------------

def labels_csv(root, text):
    for name in ("a.png", "b.png", "c.png"):
        save_image(root / name)
    (root / "labels.csv").write_text(text)
    return root


def test_table_without_the_named_column(tmp_path):
    root = labels_csv(tmp_path, "file,kind\na.png,cat\nb.png,dog\nc.png,cat\n")
    with pytest.raises(KeyError, match=r"the table has no column 'label' \(label_col='label'\); its columns are "
                                       r"\['file', 'kind'\]: pass label_col= one of these names"):
        ImageDataLoaders.from_csv(root, fn_col="file", label_col="label", valid_pct=0.3)


def test_file_listed_but_absent(tmp_path):
    root = labels_csv(tmp_path, "file,kind\na.png,cat\nmissing.png,dog\nc.png,cat\n")
    with pytest.raises(FileNotFoundError, match=r"(?s)1 file\(s\) listed do not exist .*check path=, folder= and "
                                                r"suff=.*row 1 \(missing.png\) of labels.csv"):
        ImageDataLoaders.from_csv(root)


def test_empty_label(tmp_path):
    root = labels_csv(tmp_path, "file,kind\na.png,cat\nb.png,\nc.png,cat\n")
    with pytest.raises(ValueError, match=r"row 1 \(b.png\) of labels.csv has an empty label"):
        ImageDataLoaders.from_csv(root)


def test_multi_label_item_without_a_tag(tmp_path):
    root = labels_csv(tmp_path, "file,tags\na.png,red round\nb.png,red\nc.png,\n")
    with pytest.raises(ValueError, match=r"row 2 \(c.png\) of labels.csv has no label: every image needs at least "
                                         r"one tag \(pass allow_empty=True"):
        ImageDataLoaders.from_csv(root, label_delim=" ")
    x = np.zeros((3, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"item 2 has no label: its multi-hot row is all zeros"):
        ImageDataLoaders.from_arrays(x, np.array([[1, 0], [0, 1], [0, 0]]), valid_pct=None)


def test_validation_column_that_is_not_boolean(tmp_path):
    root = labels_csv(tmp_path, "file,kind,valid\na.png,cat,False\nb.png,dog,maybe\nc.png,cat,True\n")
    with pytest.raises(ValueError, match=r"row 1 \(b.png\) of labels.csv: the validation column 'valid' holds "
                                         r"'maybe', not True/False"):
        ImageDataLoaders.from_csv(root, valid_col="valid")


def test_from_csv_without_pandas(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_pandas(name, *args, **kwargs):
        if name == "pandas":
            raise ImportError("No module named 'pandas'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_pandas)
    with pytest.raises(ImportError, match=r"needs pandas: pip install 'fastfreeze\[table\]'"):
        ImageDataLoaders.from_csv(tmp_path)


def test_metric_that_cannot_be_combined_over_processes():
    from fastfreeze.core.metrics import accumulated_value

    class MyMetric:
        def reset(self):
            pass

        def update(self, probs, targ):
            pass

        def compute(self):
            return torch.tensor([0.2, 0.4])
    with pytest.raises(TypeError, match=r"metric my_metric \(MyMetric\) cannot be combined over processes: make it "
                                        "a torchmetrics Metric"):
        accumulated_value(MyMetric(), gather=lambda obj: [obj, obj])
    learn = Learner(mlp2(), DataLoaders.from_tensors(*blobs(8), *blobs(8), bs=4), metrics=MyMetric(), progress=False)
    with pytest.raises(TypeError, match=r"metric my_metric computed \(2,\), not one number: give it an average"):
        learn.validate()


def test_interpretation_of_a_learner_that_is_not_single_label():
    from fastfreeze.inference.interpret import ClassificationInterpretation
    x, y = blobs(8)
    learn = Learner(mlp2(), DataLoaders.from_tensors(x, y, x, y, bs=4), loss_func=nn.MSELoss(), progress=False)
    with pytest.raises(ValueError, match="for single-label classifiers, and this learner's task is regression: use "
                                         r"learn.show_results\(\)"):
        ClassificationInterpretation.from_learner(learn)
