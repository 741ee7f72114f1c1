"""lr_find: the exponential sweep, the suggestions against hand-worked curves and an independent valley,
and the exact in-memory restore (weights, buffers, optimizer, freezing, history, random state, files)."""
import copy
import math
import os
import random
import warnings
from functools import lru_cache

import numpy as np
import pytest
import torch

from fastfreeze import Callback, DataLoaders, Learner
from fastfreeze.finetune.lr_finder import lr_find, minimum, slide, steep, sweep_window, valley
from helpers import blobs, mlp2, mlp3


class RecordSweep(Callback):
    """A user callback: every group's lr and the raw loss at each lr_find step."""

    def __init__(self):
        self.group_lrs, self.raw_losses, self.after_fit_weight = [], [], None

    def after_batch(self):
        if self.learn.training and self.learn.phase == "lr_find":
            self.group_lrs.append([g["lr"] for g in self.learn.opt.param_groups])
            self.raw_losses.append(float(self.learn.loss.detach()))

    def after_fit(self):
        if self.learn.phase == "lr_find":  # the weights as the sweep left them, before the restore
            self.after_fit_weight = self.learn.model[-1].weight.detach().clone()


def make_dls(seed=0):
    x, y = blobs(40)
    xv, yv = blobs(24, seed=1)
    return DataLoaders.from_tensors(x, y, xv, yv, bs=8, seed=seed)


def independent_valley(lrs, losses, num_it):
    """docs/lr-find.md written out here: window [num_it//10:-5], longest strictly decreasing subsequence by
    memoised recursion, first end with the longest one, start = end - length, idx = start + L//3 + L//6."""
    lrs, losses = list(lrs)[num_it // 10:-5], list(losses)[num_it // 10:-5]

    @lru_cache(maxsize=None)
    def longest_ending_at(i):
        return 1 + max([longest_ending_at(j) for j in range(i) if losses[j] > losses[i]], default=0)

    lengths = [longest_ending_at(i) for i in range(len(losses))]
    end = lengths.index(max(lengths))
    length = lengths[end]
    start = end - length if length > 1 else end
    return lrs[start + length // 3 + length // 6]


def test_sweep_is_exponential_on_the_head_and_keeps_group_ratios(dls_5_batches):
    rec = RecordSweep()
    learn = Learner(mlp3(), dls_5_batches, progress=False, cbs=rec)
    learn.set_lrs(slice(1e-5, 1e-3))  # ratios to the head: 0.01, 0.1, 1
    lr_find(learn, start_lr=1e-6, end_lr=1e-1, num_it=30, stop_div=False)
    res = learn.recorder.lr_find_results
    expected = [1e-6 * (1e-1 / 1e-6) ** (i / 30) for i in range(30)]
    assert res["lrs"] == expected  # exactly the formula, one step per batch
    assert len(rec.group_lrs) == 30  # 6 passes over the 5 training batches
    for row, head in zip(rec.group_lrs, expected):
        assert row[2] == head
        assert row[0] == pytest.approx(0.01 * head, rel=1e-12)
        assert row[1] == pytest.approx(0.1 * head, rel=1e-12)
    # the recorded losses are the debiased EMA (beta 0.98) of the raw step losses
    avg = 0.0
    for count, (raw, smooth) in enumerate(zip(rec.raw_losses, res["losses"]), 1):
        avg = 0.98 * avg + 0.02 * raw
        assert smooth == pytest.approx(avg / (1 - 0.98 ** count), rel=1e-6)
    # the lrs written in the optimizer are back to what they were
    assert [g["lr"] for g in learn.opt.param_groups] == pytest.approx([1e-5, 1e-4, 1e-3], rel=1e-12)


def test_default_suggestion_is_the_valley_of_the_recorded_sweep(dls_5_batches):
    learn = Learner(mlp3(), dls_5_batches, progress=False)
    result = lr_find(learn)
    res = learn.recorder.lr_find_results
    assert result._fields == ("valley",)
    assert result.valley == independent_valley(res["lrs"], res["losses"], 100)
    assert res["suggestions"] == {"valley": result.valley}
    assert 1e-7 < result.valley < 10


def hand_curve(n_points, window_losses, num_it):
    """A sweep of `n_points` points whose window [num_it//10:-5] holds `window_losses`."""
    lrs = [1e-6 * 10 ** (i / 10) for i in range(n_points)]
    start = num_it // 10
    losses = [9.0] * start + list(window_losses) + [9.0] * 5
    assert len(losses) == n_points
    return lrs, losses


def test_suggestions_on_a_hand_made_curve():
    # window (22 points): flat 5.0 for w0..w4, then strictly down w5..w14 with one big drop w9 -> w10,
    # then up again; lrs are 10 per decade, uniformly spaced in log
    window = [5.0] * 5 + [4.9, 4.8, 4.7, 4.6, 4.5, 4.0, 3.9, 3.8, 3.7, 3.6] + [3.7, 3.9, 4.2, 4.6, 5.0, 5.5, 6.0]
    lrs, losses = hand_curve(30, window, num_it=30)
    offset = 3  # 30 // 10 points dropped at the start
    # longest strictly decreasing: one 5.0 then w5..w14 (length 11, first ending at w14): start 14-11 = 3,
    # idx = 3 + 11//3 + 11//6 = 7
    assert valley(lrs, losses, 30) == lrs[offset + 7]
    assert minimum(lrs, losses, 30) == lrs[offset + 14] / 10  # lowest loss at w14
    assert steep(lrs, losses, 30) == lrs[offset + 9]  # the big drop starts at w9
    lrs_w, losses_w = sweep_window(lrs, losses, 30)
    assert list(losses_w) == window and list(lrs_w) == lrs[3:25]


def test_slide_rule_on_hand_made_curves():
    num_it = 40  # window: points 4 .. 34, 31 points
    # flat until w20, then slope 1: np.gradient is 0 up to w19, 0.5 at w20, 1 after. The window of 15 steps
    # slides left from [15, 30] while its ends' gradients differ; [5, 20] still differs (0.5), [4, 19] not
    window = [0.0] * 21 + [float(w - 20) for w in range(21, 31)]
    lrs, losses = hand_curve(40, window, num_it)
    assert slide(lrs, losses, num_it) == lrs[4 + 5]
    # a straight line: the first window [15, 30] is already flat, its left end is the suggestion
    lrs, losses = hand_curve(40, [10.0 - 0.1 * w for w in range(31)], num_it)
    assert slide(lrs, losses, num_it) == lrs[4 + 15]
    assert slide(lrs, losses, num_it, adjust_value=0.5) == lrs[4 + 15] * 0.5


def test_window_is_cut_at_the_first_nan_and_too_short_gives_nan_with_a_warning():
    window = [3.0, 2.0, 1.0, float("nan"), 0.5, 0.1] + [1.0] * 10
    lrs, losses = hand_curve(30, window + [1.0] * 6, num_it=30)
    lrs_w, losses_w = sweep_window(lrs, losses, 30)
    assert list(losses_w) == [3.0, 2.0, 1.0]
    assert minimum(lrs, losses, 30) == lrs[3 + 2] / 10
    with pytest.warns(UserWarning, match="needs at least 16"):
        assert math.isnan(slide(lrs, losses, 30))


def test_all_four_suggestions_returned_by_name(dls_5_batches):
    learn = Learner(mlp3(), dls_5_batches, progress=False)
    result = lr_find(learn, suggest_funcs=(valley, minimum, steep, slide))
    res = learn.recorder.lr_find_results
    assert result._fields == ("valley", "minimum", "steep", "slide")
    for name, func in zip(result._fields, (valley, minimum, steep, slide)):
        assert getattr(result, name) == func(res["lrs"], res["losses"], 100) == res["suggestions"][name]


def learner_state(learn):
    return {
        "model": {k: v.clone() for k, v in learn.model.state_dict().items()},
        "opt": copy.deepcopy(learn.opt.state_dict()),
        "hypers": [{k: v for k, v in g.items() if k != "params"} for g in learn.opt.param_groups],
        "requires_grad": [p.requires_grad for p in learn.model.parameters()],
        "frozen_groups": learn.frozen_groups,
        "modes": [m.training for m in learn.model.modules()],
        "history": copy.deepcopy((learn.recorder.losses, learn.recorder.smooth_losses, learn.recorder.lrs,
                                  learn.recorder.moms, learn.recorder.phases, learn.recorder.values)),
        "phase": learn.phase,
        "rng": torch.get_rng_state(),
        "np_rng": np.random.get_state()[1].copy(),
        "py_rng": random.getstate(),
    }


def assert_same(before, after):
    assert before["model"].keys() == after["model"].keys()
    for k in before["model"]:  # weights and BatchNorm buffers, bit for bit
        assert torch.equal(before["model"][k], after["model"][k]), k
    assert before["opt"]["state"].keys() == after["opt"]["state"].keys()
    for i, state in before["opt"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, after["opt"]["state"][i][key]), (i, key)
    assert before["opt"]["param_groups"] == after["opt"]["param_groups"]
    assert before["hypers"] == after["hypers"]
    for key in ("requires_grad", "frozen_groups", "modes", "history", "phase"):
        assert before[key] == after[key], key
    assert torch.equal(before["rng"], after["rng"])
    assert np.array_equal(before["np_rng"], after["np_rng"])
    assert before["py_rng"] == after["py_rng"]


def listing(root):
    return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files)


@pytest.mark.parametrize("frozen", [False, True])
def test_everything_is_restored_exactly_and_no_file_is_written(dls_5_batches, tmp_path, monkeypatch, frozen):
    monkeypatch.chdir(tmp_path)
    rec = RecordSweep()
    learn = Learner(mlp3(), dls_5_batches, progress=False, path=tmp_path, cbs=rec)
    learn.fit_one_cycle(1, slice(1e-4, 1e-2))  # optimizer state, BatchNorm statistics and history to keep
    if frozen:
        learn.freeze()
        learn.fit_one_cycle(1, 1e-3)
    learn.model.train()  # a mode fit would not leave behind
    before, files_before = learner_state(learn), listing(tmp_path)
    lr_find(learn, num_it=50)
    assert_same(before, learner_state(learn))
    assert listing(tmp_path) == files_before
    # the sweep did move the weights (so the restore is what put them back)
    assert not torch.equal(rec.after_fit_weight, learn.model[-1].weight)
    assert len(learn.recorder.lr_find_results["lrs"]) > 10
    if frozen:  # frozen groups are not stepped during the sweep either
        assert learn.frozen_groups == 2


class Meddler(Callback):
    """A callback that, during the sweep, unfreezes everything, puts the model in eval mode and draws
    from every random generator: lr_find must undo all of it."""

    def before_fit(self):
        if self.learn.phase == "lr_find":
            self.learn.unfreeze()

    def before_batch(self):
        if self.learn.phase == "lr_find":
            torch.rand(3), random.random(), np.random.rand()


def test_restore_undoes_what_callbacks_did_during_the_sweep(dls_5_batches):
    learn = Learner(mlp3(), dls_5_batches, progress=False, cbs=Meddler())
    learn.fit_one_cycle(1, 1e-2)
    learn.freeze()
    learn.fit_one_cycle(1, 1e-2)
    before = learner_state(learn)
    lr_find(learn, num_it=12)
    assert_same(before, learner_state(learn))
    assert learn.frozen_groups == 2 and not learn.model[0][0].weight.requires_grad


def test_a_fit_after_lr_find_is_the_same_as_without_it():
    """The restore is complete: the data order, the random state, the optimizer, the weights."""
    results = []
    for run_lr_find in (False, True):
        torch.manual_seed(3)
        learn = Learner(mlp3(), make_dls(seed=5), progress=False)
        learn.fit_one_cycle(1, 1e-2)
        if run_lr_find:
            lr_find(learn, num_it=23)  # not a whole number of epochs
        learn.fit_one_cycle(2, 1e-2)
        results.append(([p.detach().clone() for p in learn.model.parameters()], list(learn.recorder.losses),
                        list(learn.recorder.phases)))
    (params_a, losses_a, phases_a), (params_b, losses_b, phases_b) = results
    assert losses_a == losses_b and phases_a == phases_b == ["fit 1"] * 5 + ["fit 2"] * 10
    for a, b in zip(params_a, params_b):
        assert torch.equal(a, b)


def test_stop_div_stops_a_diverging_sweep():
    learn = Learner(mlp2(), make_dls(), progress=False)
    lr_find(learn, end_lr=1e3)
    losses = learn.recorder.lr_find_results["losses"]
    assert len(losses) < 100
    # it stopped at the first point above 4x the best so far, and not before
    assert losses[-1] > 4 * min(losses[:-1])
    assert all(losses[i] <= 4 * min(losses[:i + 1]) for i in range(len(losses) - 1))
    lr_find(learn, end_lr=1e3, stop_div=False)
    assert len(learn.recorder.lr_find_results["losses"]) == 100


def test_same_seed_same_sweep_and_suggestion():
    runs = []
    for _ in range(2):
        learn = Learner(mlp3(), make_dls(seed=0), progress=False)
        runs.append((lr_find(learn), learn.recorder.lr_find_results["losses"]))
        runs.append((lr_find(learn), learn.recorder.lr_find_results["losses"]))  # twice on the same learner
    assert all(r == runs[0] for r in runs[1:])


def test_plot_lr_find_saves_a_png(dls_5_batches, tmp_path):
    learn = Learner(mlp2(), dls_5_batches, progress=False)
    with pytest.raises(RuntimeError, match="lr_find"):
        learn.recorder.plot_lr_find()
    lr_find(learn, num_it=40, suggest_funcs=(valley, minimum))
    out = tmp_path / "lr_find.png"
    learn.recorder.plot_lr_find(path=str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.pyplot as plt
    plt.close("all")


def test_bad_arguments_are_clear_errors(dls_5_batches):
    learn = Learner(mlp2(), dls_5_batches, progress=False)
    with pytest.raises(ValueError, match="start_lr"):
        lr_find(learn, start_lr=0)
    with pytest.raises(ValueError, match="end_lr"):
        lr_find(learn, start_lr=1e-3, end_lr=1e-4)
    with pytest.raises(ValueError, match="num_it"):
        lr_find(learn, num_it=0)
    with pytest.raises(ValueError, match="share a name"):
        lr_find(learn, suggest_funcs=(valley, valley))
    with pytest.raises(ValueError, match="cannot name"):
        lr_find(learn, suggest_funcs=(lambda lrs, losses, n: 1.0,))
    with pytest.raises(ValueError, match="learning rates must be finite and > 0, got 0.0"):
        learn.set_lrs(0.0)
    learn.opt.param_groups[-1]["lr"] = 0.0  # written by hand, past set_lrs's check
    with pytest.raises(ValueError, match="head group's lr"):
        lr_find(learn)
    assert learn.recorder.lr_find_results is None


def test_the_progress_bar_is_back_after_the_sweep(dls_5_batches):
    learn = Learner(mlp2(), dls_5_batches, progress=True)
    n_cbs = len(learn.cbs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lr_find(learn, num_it=20)
    assert len(learn.cbs) == n_cbs and learn.dls.train is dls_5_batches.train


def window_of(lrs_w, losses_w):
    """A sweep whose window (num_it 9: no point dropped at the start; the last 5 always are) is exactly the given
    points."""
    return list(lrs_w) + [1.0] * 5, list(losses_w) + [9.0] * 5


def too_short_message(n, name, needed):
    return (f"lr_find: the sweep window holds {n} points, '{name}' needs at least {needed}: no suggestion (nan). "
            "Raise num_it, or lower end_lr if the sweep diverged early.")


def test_steep_divides_by_the_log_lr_step_on_an_uneven_sweep():
    """Slopes against ln(lr): -1 / ln 10 = -0.43, -0.2 / ln 1.1 = -2.10, -0.8 / ln(100 / 11) = -0.36: the
    steepest is the small drop over the short step (the lr 1e-3), not the largest drop."""
    lrs, losses = window_of([1e-4, 1e-3, 1.1e-3, 1e-2], [5.0, 4.0, 3.8, 3.0])
    assert steep(lrs, losses, 9) == 1e-3


def test_the_shortest_windows_each_suggestion_takes_and_the_warning_below():
    lrs, losses = window_of([1e-3, 1e-2], [2.0, 1.0])
    assert steep(lrs, losses, 9) == 1e-3  # two points: one slope
    assert slide(lrs, losses, 9, lr_diff=1) == 1e-3  # a window of one step, already flat
    lrs4, losses4 = window_of([1e-4, 1e-3, 1e-2, 1e-1], [4.0, 3.0, 2.0, 1.0])
    assert slide(lrs4, losses4, 9, lr_diff=3) == 1e-4  # n = lr_diff + 1: the window is the whole sweep
    one_lr, one_loss = window_of([1e-3], [2.0])
    for func, kwargs, needed in ((steep, {}, 2), (slide, {"lr_diff": 0}, 2), (slide, {"lr_diff": 3}, 4)):
        with pytest.warns(UserWarning) as record:
            assert math.isnan(func(one_lr, one_loss, 9, **kwargs))
        assert [str(w.message) for w in record] == [too_short_message(1, func.__name__, needed)]
    with pytest.warns(UserWarning) as record:
        assert math.isnan(slide(lrs4, losses4, 9, lr_diff=4))
    assert [str(w.message) for w in record] == [too_short_message(4, "slide", 5)]


def test_minimum_on_one_point_and_on_none():
    lrs, losses = window_of([1e-3], [2.0])
    assert minimum(lrs, losses, 9) == 1e-4
    with pytest.warns(UserWarning) as record:
        assert math.isnan(minimum([1.0] * 5, [9.0] * 5, 9))  # the last 5 points dropped: nothing left
    assert [str(w.message) for w in record] == [too_short_message(0, "minimum", 1)]


def test_slide_reaches_the_first_point_and_stops_at_a_difference_equal_to_thresh():
    """Losses 0, 1, 4, 9: np.gradient gives 1, 2, 4, 5 (one-sided at the ends). With lr_diff 1 the window
    pairs (2, 3), (1, 2), (0, 1) differ by 1, 2, 1: with thresh 0.5 every window differs and the first point
    is the suggestion; with thresh 1 the first window's difference is not more than thresh: its left end."""
    lrs, losses = window_of([1e-4, 1e-3, 1e-2, 1e-1], [0.0, 1.0, 4.0, 9.0])
    assert slide(lrs, losses, 9, lr_diff=1, thresh=0.5) == 1e-4
    assert slide(lrs, losses, 9, lr_diff=1, thresh=1.0) == 1e-2


def test_valley_by_hand_on_short_curves():
    """length[i]: the longest strictly decreasing run ending at i; end: the first point of the largest length;
    start = end - length[end] (or end when nothing decreases); idx = start + (end-start)//3 + (end-start)//6,
    clipped at 0."""
    lrs = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    # 6 points going down: lengths 1..6, end 5, start -1, idx -1 + 6//3 + 6//6 = 2
    assert valley(*window_of(lrs, [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]), 9) == 1e-4
    # lengths 1, 2, 3, 4, 4: end is the first 4 (point 3), start -1, idx -1 + 1 + 0 = 0
    assert valley(*window_of(lrs[:5], [6.0, 5.0, 4.0, 3.0, 3.5]), 9) == 1e-6
    # lengths 1, 2, 2, 2: end 1, start -1, idx max(-1 + 0 + 0, 0) = 0
    assert valley(*window_of(lrs[:4], [3.0, 2.0, 2.5, 2.6]), 9) == 1e-6
    assert valley(*window_of(lrs[:3], [2.0, 2.0, 2.0]), 9) == 1e-6  # flat: end 0, idx 0
    assert valley(*window_of([1e-3], [2.0]), 9) == 1e-3  # one point
    with pytest.warns(UserWarning) as record:
        assert math.isnan(valley([1.0] * 5, [9.0] * 5, 9))
    assert [str(w.message) for w in record] == [too_short_message(0, "valley", 1)]
