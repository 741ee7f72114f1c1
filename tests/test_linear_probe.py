"""The default fine_tune with few images per class (issue 17): the head fitted as a probe on cached body
features, decided from the training data alone; fastai's recipe otherwise, and for `base_lr=<float>`, an
explicit strategy, multi-label and regression learners, step by step."""
import copy
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from helpers import RecordLrs, one_cycle_oracle, same, state_of, tiny_learner
from fastfreeze import Callback, CheckpointCallback
from fastfreeze.cli import main
from fastfreeze.data.image_data import ImageDataLoaders
from fastfreeze.finetune.default_choice import MIN_PER_CLASS_TO_FINE_TUNE, MIN_PER_CLASS_TO_MEASURE, decide
from fastfreeze.finetune.linear_probe import PROBE_LR, PROBE_STEPS, fit_probe
from fastfreeze.inference.predictor import load_learner

FEW = 3 * 8   # 3 classes, 8 images each (below MIN_PER_CLASS_TO_MEASURE: the head probe, nothing measured), 3 batches
ENOUGH = 3 * MIN_PER_CLASS_TO_FINE_TUNE      # 25 each


def image_dls(n_train, valid_seed=100, n_valid=12, n_classes=3, size=32, labels=None):
    """Random images with labels round-robin; the validation images and labels come from their own seed."""
    x = np.random.default_rng(0).integers(0, 255, (n_train, size, size, 3), dtype=np.uint8)
    v = np.random.default_rng(valid_seed)
    xv = v.integers(0, 255, (n_valid, size, size, 3), dtype=np.uint8)
    if labels is not None:  # another task: labels(n) gives the targets of n items
        return ImageDataLoaders.from_arrays(x, labels(n_train), xv, labels(n_valid), size=size, bs=8)
    return ImageDataLoaders.from_arrays(x, np.arange(n_train) % n_classes, xv, v.integers(0, n_classes, n_valid),
                                        size=size, bs=8, vocab=[f"c{i}" for i in range(n_classes)])


class FirstHead(Callback):
    """The head's weights when the first training step starts."""

    def __init__(self):
        self.seen = {}

    def before_batch(self):
        if self.learn.training and not self.seen:
            self.seen.update(state_of(self.learn.model.head))


# ---------------------------------------------------------------------------------------------------------
# the decision and the probe never read the validation set
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_train", [FEW, ENOUGH], ids=["probe kept", "fine-tuned"])
def test_changing_only_the_validation_set_gives_the_same_weights(n_train):
    """Other validation images, labels and size: the same decision and the same final weights and buffers,
    bit for bit, in both outcomes (and for the probe, with no validation set at all)."""
    finals = []
    for valid_seed, n_valid in [(100, 12), (200, 30)] + ([(None, 0)] if n_train == FEW else []):
        learn = tiny_learner(image_dls(n_train, valid_seed=valid_seed or 0, n_valid=max(n_valid, 1)))
        if valid_seed is None:
            learn.dls.valid = None
        learn.fine_tune(1)
        finals.append((state_of(learn.model), learn.fine_tune_choice.probe_kept))
    assert all(kept == (n_train == FEW) for _, kept in finals)
    assert all(same(finals[0][0], other) for other, _ in finals[1:])


# ---------------------------------------------------------------------------------------------------------
# the threshold, and the two outcomes
# ---------------------------------------------------------------------------------------------------------
def test_the_threshold_is_25_images_per_class():
    assert decide(24 * 10, 10)[0] is True and decide(25 * 10, 10)[0] is False
    assert decide(249, 10)[0] is True       # 24.9 per class
    assert decide(100, 2)[0] is False and decide(100, 10)[0] is True
    assert decide(100, 10)[1].startswith("10 training images per class (fewer than 25)")
    assert decide(250, 10)[1].startswith("25 training images per class (at least 25)")


def test_8_images_per_class_keep_the_head_probe(capsys):
    """The head is fitted on cached features, the body is not touched (weights and BatchNorm statistics), no
    epoch runs, and the output says what was decided and why."""
    learn = tiny_learner(image_dls(FEW))
    body, head = state_of(learn.model.body), state_of(learn.model.head)
    learn.fine_tune(3)
    assert learn.recorder.phases == [] and learn.recorder.losses == [] and learn.fine_tune_state is None
    assert same(state_of(learn.model.body), body)
    assert not same(state_of(learn.model.head), head)
    choice = learn.fine_tune_choice
    assert (choice.probe_kept, choice.n_items, choice.n_classes, choice.per_class) == (True, FEW, 3, 8)
    assert choice.seconds > 0
    out = capsys.readouterr().out
    assert FEW / 3 < MIN_PER_CLASS_TO_MEASURE
    assert "fine_tune: 8 training images per class (fewer than 25)" in out
    assert "fitted as a probe" in out and f"{PROBE_STEPS} full-batch steps over {FEW} cached items" in out
    assert f"pass base_lr=, e.g. {learn.auto_lr['base_lr']:.2e}" in out


def test_the_kept_head_is_adamw_on_the_training_features_written_out():
    """Worked out here, without the library's code: the body in eval mode over every training image (read
    through test_dl, in dataset order), the head's pooling, then PROBE_STEPS full-batch AdamW steps written out
    (betas 0.9/0.99, eps 1e-5, bias corrections, decoupled decay learn.wd on the Linear weights only) on a
    copy of the initial head in train mode. No dropout (ps=0): the fit does not depend on the items' order."""
    dls = image_dls(FEW)
    learn = tiny_learner(dls, ps=0.0)
    head = copy.deepcopy(learn.model.head)
    train = dls.train.dataset
    (xb, yb), = list(dls.test_dl(train.images[train.indices], train.labels[train.indices], bs=FEW))
    with torch.no_grad():
        pooled = head[:2](copy.deepcopy(learn.model.body).eval()(xb))
    rest = head[2:].train()
    params = list(rest.parameters())
    decayed = {id(m.weight) for m in rest.modules() if isinstance(m, nn.Linear)}
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    lr, eps, wd = PROBE_LR, 1e-5, learn.wd
    for t in range(1, PROBE_STEPS + 1):
        grads = torch.autograd.grad(nn.functional.cross_entropy(rest(pooled), yb), params)
        with torch.no_grad():
            for p, g, (m, v) in zip(params, grads, moments):
                m.mul_(0.9).add_(0.1 * g)
                v.mul_(0.99).add_(0.01 * g * g)
                if id(p) in decayed:
                    p.mul_(1 - lr * wd)
                p.sub_(lr * (m / (1 - 0.9 ** t)) / ((v / (1 - 0.99 ** t)).sqrt() + eps))
    learn.fine_tune(1)
    got, want = state_of(learn.model.head), state_of(head)
    for k in want:
        torch.testing.assert_close(got[k].float(), want[k].float(), rtol=1e-4, atol=1e-4, msg=k)
    assert not torch.allclose(got["4.weight"], state_of(tiny_learner(dls, ps=0.0).model.head)["4.weight"])


def test_25_images_per_class_run_fastais_recipe_with_the_weights_of_base_lr_the_auto_value(capsys):
    """From 25 images per class (so also at 50 and 500) choose='by_size' is exactly the code path of before:
    fastai's recipe at the 'auto' lr, bit-identical to passing that lr as a number, from the head's init."""
    learn = tiny_learner(image_dls(ENOUGH))
    head = state_of(learn.model.head)
    first = FirstHead()
    learn.fine_tune(1, cbs=[first], choose="by_size")
    nb = ENOUGH // 8
    assert learn.recorder.phases == ["frozen"] * nb + ["unfrozen"] * nb
    assert same(first.seen, head)  # no probe: the first step starts from the head's initialization
    assert learn.fine_tune_choice.probe_kept is False and learn.fine_tune_choice.recipe == "stagewise"
    assert "fine_tune: 25 training images per class (at least 25)" in capsys.readouterr().out
    by_number = tiny_learner(image_dls(ENOUGH))  # new loaders: the same order of batches
    by_number.fine_tune(1, base_lr=learn.auto_lr["base_lr"])
    assert by_number.fine_tune_choice is None
    assert same(state_of(by_number.model), state_of(learn.model))


# ---------------------------------------------------------------------------------------------------------
# base_lr=<float>, explicit strategies, other tasks: fastai's recipe, step by step
# ---------------------------------------------------------------------------------------------------------
def test_float_base_lr_with_few_images_is_fastais_recipe_step_by_step():
    """One frozen epoch at slice(2e-3) (pct_start 0.99, div 25), then all groups at slice(1e-5, 1e-3)
    (base_lr/2, lr_mult 100; pct_start 0.3, div 5), from the head's initialization: no probe."""
    learn = tiny_learner(image_dls(FEW))
    head = state_of(learn.model.head)
    rec, first = RecordLrs(), FirstHead()
    learn.fine_tune(2, base_lr=2e-3, cbs=[rec, first])
    assert learn.fine_tune_choice is None and same(first.seen, head)
    nb = FEW // 8
    assert learn.recorder.phases == ["frozen"] * nb + ["unfrozen"] * (2 * nb)
    lrs, g = np.array(rec.lrs), learn.n_groups
    f_lr, _ = one_cycle_oracle(nb, 2e-3, pct_start=0.99)
    u_lr, _ = one_cycle_oracle(2 * nb, 1e-3, div=5.0, pct_start=0.3)
    np.testing.assert_allclose(lrs[:nb, -1], f_lr, rtol=1e-6)
    np.testing.assert_allclose(lrs[nb:, -1], u_lr, rtol=1e-6)
    for i in range(g):  # geometric from base_lr/200 (first group) to base_lr/2 (head)
        np.testing.assert_allclose(lrs[nb:, i], u_lr / 100 ** (1 - i / (g - 1)), rtol=1e-6)


def test_auto_with_an_explicit_strategy_fits_no_probe():
    learn = tiny_learner(image_dls(FEW))
    head = state_of(learn.model.head)
    first = FirstHead()
    learn.fine_tune(2, strategy="freeze", cbs=[first])
    assert learn.fine_tune_choice is None and learn.auto_lr["base_lr"] > 0 and same(first.seen, head)
    assert learn.recorder.phases == ["frozen"] * 2 * (FEW // 8)


@pytest.mark.parametrize("task,labels", [
    ("multi_label", lambda n: np.stack([np.arange(n) % 2 == 0, np.arange(n) % 6 != 2], 1).astype(np.int64)),
    ("regression", lambda n: np.linspace(0.05, 1.95, n)),
])
def test_multi_label_and_regression_get_fastais_recipe(task, labels):
    dls = image_dls(FEW, labels=labels)
    assert dls.task == task
    learn = tiny_learner(dls)
    first = FirstHead()
    head = state_of(learn.model.head)
    learn.fine_tune(1, cbs=[first])
    assert learn.fine_tune_choice is None and same(first.seen, head)
    assert learn.recorder.phases == ["frozen"] * (FEW // 8) + ["unfrozen"] * (FEW // 8)


def test_a_projection_head_with_a_contrastive_loss_gets_fastais_recipe():
    learn = tiny_learner(image_dls(FEW), output_dim=8)
    learn.fine_tune(1)
    assert learn.fine_tune_choice is None
    assert learn.recorder.phases == ["frozen"] * (FEW // 8) + ["unfrozen"] * (FEW // 8)


# ---------------------------------------------------------------------------------------------------------
# with main's features: divergence, checkpoints, export, the command line
# ---------------------------------------------------------------------------------------------------------
def test_a_diverging_probe_fit_stops_with_the_divergence_message_and_leaves_the_model_as_it_was():
    learn = tiny_learner(image_dls(FEW))
    before = state_of(learn.model)
    feats = torch.full((6, learn.model.head[2].num_features // 2, 2, 2), float("nan"))
    with pytest.raises(FloatingPointError, match=r"training diverged: the probe fit .* loss nan at step 1 of 25\. "
                                                 r"The model was left as it was\. Lower the learning rate"):
        fit_probe(learn, feats, torch.arange(6) % 3)
    assert same(state_of(learn.model), before)


def test_a_kept_probe_writes_no_checkpoint_and_exports_like_any_model(tmp_path):
    """No epoch runs, so CheckpointCallback writes nothing (there is nothing to resume); the exported model
    predicts as the learner does."""
    learn = tiny_learner(image_dls(FEW), path=tmp_path)
    learn.fine_tune(2, cbs=[CheckpointCallback()])
    assert learn.fine_tune_choice.probe_kept and not list(tmp_path.rglob("*.pth"))
    predictor = load_learner(learn.export(tmp_path / "export"))
    x = np.random.default_rng(5).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    label, index, probs = learn.predict(x)
    assert predictor.predict(x)[:2] == (label, index)
    torch.testing.assert_close(predictor.predict(x)[2], probs)


def test_resuming_a_default_fine_tune_that_fine_tuned_continues_fastais_recipe(tmp_path):
    """A checkpoint exists only when the default fine-tuned (>= 25 per class); resuming from it with 'auto'
    takes the lr it recorded and ends on the uninterrupted run's weights."""
    class StopAfterFrozen(Callback):
        order = 100

        def after_epoch(self):
            if self.learn.recorder.phases[-1] == "frozen":
                raise KeyboardInterrupt

    full = tiny_learner(image_dls(ENOUGH), path=tmp_path / "full")  # each run its own loaders, same order
    full.fine_tune(1)
    killed = tiny_learner(image_dls(ENOUGH), path=tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        killed.fine_tune(1, cbs=[CheckpointCallback(), StopAfterFrozen()])
    resumed = tiny_learner(image_dls(ENOUGH), path=tmp_path / "run")
    resumed.fine_tune(1, resume_from="checkpoint")
    assert resumed.fine_tune_choice is None  # the recorded lr is a number: no new decision
    assert same(state_of(resumed.model), state_of(full.model))


def test_the_command_line_reports_a_kept_probe(tmp_path, capsys):
    data = tmp_path / "data"
    g = np.random.default_rng(0)
    from PIL import Image
    for split, n in (("train", 6), ("valid", 3)):
        for c in ("dark", "light"):
            (data / split / c).mkdir(parents=True)
            for i in range(n):
                grey = 60 if c == "dark" else 190
                pixels = np.clip(grey + g.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(data / split / c / f"{i}.png")
    out = tmp_path / "out"
    assert main(["fine-tune", str(data), "--arch", "test_resnet", "--pretrained", "false", "--epochs", "1",
                 "--size", "32", "--bs", "4", "--workers", "0", "--out", str(out), "--no-bar", "--tta", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["probe_kept"] is True and results["decision"].startswith("6 training images per class")
    printed = capsys.readouterr().out
    assert "fine_tune: 6 training images per class (fewer than 25)" in printed
    assert "(probe kept: the head fitted on cached body features, the body not trained)" in printed
    assert not (out / "checkpoint.pth").exists() and not (out / "loss.png").exists()
    assert load_learner(out / "model").vocab == ["dark", "light"]
