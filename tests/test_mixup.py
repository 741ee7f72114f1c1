"""MixUp and CutMix: soft targets worked out here from each batch's own mixing, hard labels in validation,
and a clear refusal of what they cannot mix."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastfreeze import Callback, DataLoaders, Learner, accuracy
from fastfreeze.core.checkpoint import CheckpointCallback
from fastfreeze.finetune.feature_cache import FeatureCache
from fastfreeze.data.image_data import ImageDataLoaders
from fastfreeze.core.losses import MultiLabelLoss
from fastfreeze.callbacks.mixup import CutMix, MixUp
from helpers import blobs, mlp2, transfer_learner


class Batches(Callback):
    """Each training batch as the data gave it (before MixUp, order -1) and as the model saw it; the labels of
    validation batches; the training losses."""

    def __init__(self):
        self.order = -1
        self.raw, self.mixed, self.valid_labels, self.losses, self.preds = [], [], [], [], []

    def before_batch(self):
        if self.learn.training:
            self.raw.append((self.learn.xb[0].clone(), self.learn.yb[0].clone()))

    def after_loss(self):
        if self.learn.training:
            self.mixed.append((self.learn.xb[0].clone(), self.learn.yb[0].clone()))
            self.preds.append(self.learn.pred.detach().clone())
            self.losses.append(float(self.learn.loss.detach()))
        else:
            self.valid_labels.append(self.learn.yb[0].clone())


def five_batches():
    return DataLoaders.from_tensors(*blobs(40), *blobs(24, seed=1), bs=8, seed=0)


def onehot(y, c=3, smoothing=0.0):
    return F.one_hot(y, c).double() * (1 - smoothing) + smoothing / c


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixup_soft_targets_in_training_hard_labels_in_validation(smoothing):
    seen = Batches()
    learn = Learner(mlp2(), five_batches(), metrics=accuracy, cbs=[MixUp(0.4, label_smoothing=smoothing), seen],
                    progress=False)
    learn.fit(1, lr=1e-2)
    for (x, y), (mx, soft), pred, loss in zip(seen.raw, seen.mixed, seen.preds, seen.losses):
        flipped = x.flip(0)
        i = torch.argmax((x - flipped).abs())  # where the two images differ most: lam is readable there
        lam = float((mx.flatten()[i] - flipped.flatten()[i]) / (x.flatten()[i] - flipped.flatten()[i]))
        assert 0 <= lam <= 1
        torch.testing.assert_close(mx, lam * x + (1 - lam) * flipped, rtol=0, atol=1e-5)
        expected = lam * onehot(y, smoothing=smoothing) + (1 - lam) * onehot(y.flip(0), smoothing=smoothing)
        torch.testing.assert_close(soft.double(), expected, rtol=0, atol=1e-5)
        # the loss is cross-entropy against those probabilities
        assert loss == pytest.approx(float(-(soft * F.log_softmax(pred, 1)).sum(1).mean()), rel=1e-5)
    assert any(0.05 < float(s.max()) < 0.95 for _, s in seen.mixed)  # some batch really was mixed
    # validation: the data's integer labels, and the accuracy of the model on them
    assert all(y.dtype == torch.int64 and y.ndim == 1 for y in seen.valid_labels)
    xv, yv = learn.dls.valid.dataset.tensors
    learn.model.eval()
    assert learn.recorder.values[-1]["accuracy"] == pytest.approx(float((learn.model(xv).argmax(1) == yv).float().mean()))


def test_cutmix_pastes_a_box_and_mixes_labels_by_its_area():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 8, 8)
    y = torch.arange(16) % 3
    dls = DataLoaders.from_tensors(x, y, x[:4], y[:4], bs=8, seed=0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 3))
    seen = Batches()
    np.random.seed(1)
    Learner(model, dls, cbs=[CutMix(1.0), seen], progress=False).fit(2, lr=1e-3)
    boxes = 0
    for (raw, y), (mixed, soft) in zip(seen.raw, seen.mixed):
        pasted = (mixed != raw).any(1)  # (B, H, W): where another image's pixels are
        torch.testing.assert_close(mixed[:, :, pasted[0]], raw.flip(0)[:, :, pasted[0]], rtol=0, atol=0)
        assert torch.equal(pasted, pasted[:1].expand_as(pasted))  # one box for the whole batch
        rows, cols = pasted[0].any(1).nonzero(), pasted[0].any(0).nonzero()
        if len(rows):
            boxes += 1
            assert pasted[0].sum() == len(rows) * len(cols)  # a rectangle
        lam = 1 - float(pasted[0].sum()) / 64
        expected = lam * onehot(y) + (1 - lam) * onehot(y.flip(0))
        torch.testing.assert_close(soft.double(), expected, rtol=0, atol=1e-6)
    assert boxes >= 2


def test_mixed_fit_resumes_exactly(tmp_path):
    def make(path, seed=0):
        torch.manual_seed(seed)
        return Learner(mlp2(), five_batches(), path=path, progress=False, cbs=MixUp(0.4))

    class Kill(Callback):
        order = 100

        def after_epoch(self):
            raise KeyboardInterrupt
    np.random.seed(0)
    full = make(tmp_path / "full")
    full.fit_one_cycle(2, 1e-2)
    np.random.seed(0)
    killed = make(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        killed.fit_one_cycle(2, 1e-2, cbs=[CheckpointCallback(), Kill()])
    np.random.seed(123)  # another NumPy state: the checkpoint's comes back
    resumed = make(tmp_path / "run", seed=3)
    resumed.fit_one_cycle(2, 1e-2, resume_from="checkpoint")
    for a, b in zip(resumed.model.parameters(), full.model.parameters()):
        assert torch.equal(a, b)


def test_feature_cache_is_not_used_while_mixing(capsys):
    learn = transfer_learner(cbs=[MixUp(0.4)])
    cache = FeatureCache()
    learn.fit(1, lr=1e-2, cbs=[cache])
    assert cache.info is None
    assert "MixUp mixes the images of every training batch" in capsys.readouterr().out


@pytest.mark.parametrize("loss,message", [
    (nn.BCEWithLogitsLoss(), "task is multi-label \\(its loss BCEWithLogitsLoss\\)"),
    (MultiLabelLoss(), "task is multi-label \\(its loss MultiLabelLoss\\)"),
    (nn.MSELoss(), "task is regression \\(its loss MSELoss\\)"),
    (nn.NLLLoss(), "this learner's loss is NLLLoss"),
    (nn.CrossEntropyLoss(label_smoothing=0.1), "smoothed twice"),
])
def test_losses_that_cannot_take_mixed_targets_are_refused(loss, message):
    learn = Learner(mlp2(), five_batches(), loss_func=loss, cbs=MixUp(0.4, label_smoothing=0.1), progress=False)
    with pytest.raises(ValueError, match=message):
        learn.fit(1)


def test_targets_and_batches_it_cannot_mix_are_refused():
    x, y = blobs(40)
    multi = DataLoaders.from_tensors(x, F.one_hot(y, 3).float(), c=3, bs=8)  # multi-label style targets
    with pytest.raises(ValueError, match="needs one integer class label per image"):
        Learner(mlp2(), multi, cbs=MixUp(), progress=False).fit(1)
    odd = DataLoaders.from_tensors(x[:21], y[:21], bs=7)
    with pytest.raises(ValueError, match="needs an even batch size; this batch has 7 images"):
        Learner(mlp2(), odd, cbs=MixUp(), progress=False).fit(1)
    with pytest.raises(ValueError, match="CutMix .* needs image batches"):
        Learner(mlp2(), five_batches(), cbs=CutMix(), progress=False).fit(1)
    no_classes = DataLoaders(five_batches().train)  # the model's last nn.Linear says 3 (test_validation)

    class NoLinear(nn.Module):  # and a model without one cannot say it
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(4, 3))

        def forward(self, x):
            return x @ self.w
    with pytest.raises(ValueError, match=r"needs the number of classes .* pass MixUp\(num_classes=\.\.\.\)"):
        Learner(NoLinear(), no_classes, cbs=MixUp(), progress=False).fit(1)
    with pytest.raises(ValueError, match="alpha must be a number >= 0"):
        MixUp(-1)


@pytest.mark.parametrize("cb", [MixUp(0.4), CutMix(1.0)])
def test_multi_label_and_regression_data_are_refused_whatever_the_loss(cb):
    """The data's task decides (tasks.task_of): multi-hot rows or float targets are refused even with a
    cross-entropy loss given by hand."""
    x = np.random.default_rng(0).integers(0, 255, (8, 16, 16, 3), dtype=np.uint8)
    tags = np.array([[1, 0, 1], [0, 1, 0]] * 4)
    values = np.linspace(0.0, 1.0, 8).astype(np.float32)
    for y, task in ((tags, "multi-label"), (values, "regression")):
        dls = ImageDataLoaders.from_arrays(x, y, x[:4], y[:4], size=16, bs=4)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))
        learn = Learner(model, dls, loss_func=nn.CrossEntropyLoss(), cbs=cb, progress=False)
        with pytest.raises(ValueError, match=f"{type(cb).__name__} mixes single-label classes; this learner's task "
                                             f"is {task}"):
            learn.fit(1)
