"""Hyper-parameters checked where they enter (Learner, fit, fit_one_cycle, fine_tune, vision_learner, create_head):
each bad value is refused before anything trains, with the same message whichever entry it came through, and
the message says what to pass instead (docs/errors.md, "Hyper-parameters")."""
import re

import pytest
import torch

from fastfreeze import EMA, Learner, create_head, vision_learner
from fastfreeze.finetune.strategies import Phase, Strategy
from helpers import array_dls, mlp2, snapshot


def _learner(dls, **kwargs):
    return Learner(mlp2(), dls, progress=False, **kwargs)


def _messages(entries, error):
    """The message each entry point raises (all of type `error`)."""
    messages = []
    for entry in entries:
        with pytest.raises(error) as info:
            entry()
        messages.append(str(info.value))
    return messages


def _assert_untrained(learn, before):
    assert all(torch.equal(a, b) for a, b in zip(before, snapshot(learn.model.parameters())))


@pytest.mark.parametrize("wd", [-10, float("nan"), float("inf")])
def test_weight_decay_must_be_finite_and_not_negative_at_every_entry(dls_5_batches, wd):
    learn = _learner(dls_5_batches)
    before = snapshot(learn.model.parameters())
    messages = _messages([lambda: _learner(dls_5_batches, wd=wd), lambda: learn.fit(1, 1e-2, wd=wd),
                          lambda: learn.fit_one_cycle(1, 1e-2, wd=wd), lambda: learn.fine_tune(1, 1e-2, wd=wd)],
                         ValueError)
    assert len(set(messages)) == 1  # the same words from every entry point
    assert f"wd (weight decay) must be a finite number >= 0, got {wd!r}" in messages[0]
    assert "typical values are 1e-2 (the default) to 1e-4; 0 turns weight decay off" in messages[0]
    _assert_untrained(learn, before)
    with pytest.raises(TypeError, match=r"wd \(weight decay\) must be a number, got '0.01'"):
        learn.fit(1, wd="0.01")


def test_a_weight_decay_that_would_flip_the_weights_is_refused_before_training(dls_5_batches):
    """The decay multiplies the weights by 1 - lr*wd at each step: at fit_one_cycle's peak lr 1e-2 with wd=1e6
    that is 1 - 1e4 = -9999; fit at lr 0.5 with wd=2 would zero them (1 - 1 = 0)."""
    learn = _learner(dls_5_batches)
    before = snapshot(learn.model.parameters())
    with pytest.raises(ValueError, match=r"1 - lr\*wd = -9999 at each step \(lr=0.01, wd=1e\+06\): lr\*wd must stay "
                                         r"below 1.*Lower wd \(typical values are 1e-2 to 1e-4\)"):
        learn.fit_one_cycle(1, 1e-2, wd=1e6)
    with pytest.raises(ValueError, match=r"1 - lr\*wd = 0 at each step \(lr=0.5, wd=2\)"):
        learn.fit(1, 0.5, wd=2.0)
    _assert_untrained(learn, before)
    learn.fit(1, 0.5, wd=1.5)  # 1 - 0.75 = 0.25: a strong decay, not a wrong one
    assert all(torch.isfinite(p.detach()).all() for p in learn.model.parameters())


def test_fit_one_cycle_refuses_a_decay_rate_of_one_at_each_groups_peak_lr(dls_5_batches):
    """The peak lr meets the decay at pct_start: peak 0.5 with wd 2 multiplies the weights by 1 - 1 = 0, refused
    whether wd is passed or is the Learner's; with slice(0.1, 0.5) the head's own peak is 0.5. Peak 0.4
    (1 - 0.8 = 0.2) is a strong decay, not a wrong one."""
    learn = _learner(dls_5_batches)  # wd 0.01
    strong = _learner(dls_5_batches, wd=2.0)
    before = snapshot(learn.model.parameters())
    for entry in (lambda: learn.fit_one_cycle(1, 0.5, wd=2.0), lambda: learn.fit_one_cycle(1, slice(0.1, 0.5), wd=2.0),
                  lambda: strong.fit_one_cycle(1, 0.5), lambda: strong.fit_one_cycle(1, slice(0.1, 0.5))):
        with pytest.raises(ValueError, match=r"1 - lr\*wd = 0 at each step \(lr=0.5, wd=2\)"):
            entry()
    _assert_untrained(learn, before)
    learn.fit_one_cycle(1, 0.4, wd=2.0)
    strong.fit_one_cycle(1, slice(0.1, 0.4))
    assert learn.n_fits == strong.n_fits == 1


def test_an_optimizer_whose_groups_carry_no_wd_decays_nothing_at_any_lr(dls_5_batches):
    """opt_func builds the optimizer from the param groups; one that keeps only their params and lrs leaves no 'wd'
    in them: no decay (the step hook reads 0), so peak lr 1 is no decay rate to refuse."""
    def sgd_without_wd(groups, lr):
        return torch.optim.SGD([{"params": g["params"], "lr": g["lr"]} for g in groups], lr=lr)
    learn = Learner(mlp2(), dls_5_batches, opt_func=sgd_without_wd, progress=False)
    assert all("wd" not in g for g in learn.opt.param_groups)
    learn.fit_one_cycle(1, 1.0, moms=None)
    assert learn.n_fits == 1


def test_fit_one_cycle_checks_the_momentums_before_it_chooses_an_auto_lr(dls_5_batches):
    learn = _learner(dls_5_batches)
    with pytest.raises(ValueError, match=r"moms must be 3 momentums each in \[0, 1\), got \(0.95, 0.85, 1.0\)"):
        learn.fit_one_cycle(1, "auto", moms=(0.95, 0.85, 1.0))
    assert learn.auto_lr is None  # no lr sweep ran


@pytest.mark.parametrize("moms,error,words", [
    ((2, -1, 2), ValueError, r"moms must be 3 momentums each in \[0, 1\), got \(2, -1, 2\)"),
    ((0.95, 0.85, 1.0), ValueError, r"each in \[0, 1\), got \(0.95, 0.85, 1.0\)"),
    ((0.9, 0.8), TypeError, r"moms must be 3 momentums \(start, middle, end\), got \(0.9, 0.8\)"),
    (0.9, TypeError, r"moms must be 3 momentums \(start, middle, end\), got 0.9"),
])
def test_momentums_are_three_values_below_one(dls_5_batches, moms, error, words):
    learn = _learner(dls_5_batches)
    messages = _messages([lambda: learn.fit_one_cycle(1, 1e-2, moms=moms),
                          lambda: learn.fine_tune(1, 1e-2, moms=moms)], error)
    assert messages[0] == messages[1]
    assert re.search(words, messages[0])
    assert "fastai's are (0.95, 0.85, 0.95)" in messages[0] and "moms=None leaves" in messages[0]


@pytest.mark.parametrize("name,value", [("div", 0), ("div", float("nan")), ("div", 0.5), ("div_final", 0),
                                        ("div_final", -1e5)])
def test_one_cycle_divisors_are_finite_and_at_least_one(dls_5_batches, name, value):
    learn = _learner(dls_5_batches)
    messages = _messages([lambda: learn.fit_one_cycle(1, 1e-2, **{name: value}),
                          lambda: learn.fine_tune(1, 1e-2, **{name: value})], ValueError)
    assert messages[0] == messages[1]
    assert messages[0].startswith(f"{name} must be a finite number >= 1, got {value!r}")
    assert ("fastai's default is 25" if name == "div" else "fastai's default is 1e5") in messages[0]


def test_pct_start_says_what_it_is_from_fit_one_cycle_and_fine_tune(dls_5_batches):
    learn = _learner(dls_5_batches)
    messages = _messages([lambda: learn.fit_one_cycle(1, 1e-2, pct_start=0), lambda: learn.fine_tune(1, 1e-2, pct_start=0),
                          lambda: learn.fine_tune(1, 1e-2, pct_start=float("nan"))], ValueError)
    assert messages[0] == messages[1]
    assert messages[0].startswith("pct_start must be in (0, 1], got 0:")
    assert "fraction of the steps spent warming up" in messages[0] and "fine_tune's 0.3" in messages[2]


def test_a_strategy_phase_with_an_unusable_div_is_refused_before_the_first_phase_trains(dls_5_batches):
    class TwoPhases(Strategy):
        def phases(self, learn, epochs, base_lr, disc):
            yield Phase(1, -1, base_lr, "head")
            yield Phase(1, 0, base_lr, "all", div=0.0)
    learn = _learner(dls_5_batches)
    before = snapshot(learn.model.parameters())
    with pytest.raises(ValueError, match=r"gave phase 'all' a one-cycle argument that cannot be used: div must be a "
                                         r"finite number >= 1, got 0.0"):
        learn.fine_tune(2, 1e-2, strategy=TwoPhases())
    _assert_untrained(learn, before)


def test_fine_tune_checks_before_it_chooses_an_auto_lr(dls_5_batches):
    learn = _learner(dls_5_batches)
    with pytest.raises(ValueError, match="moms must be 3 momentums"):
        learn.fine_tune(1, moms=(0.95, 0.85, 1.5))  # base_lr='auto': no lr sweep ran
    assert learn.auto_lr is None and learn.fine_tune_choice is None


@pytest.mark.parametrize("ps,error,words", [
    (1.5, ValueError, "must each be in [0, 1), got 1.5"),
    (1.0, ValueError, "must each be in [0, 1), got 1.0"),
    (-0.1, ValueError, "must each be in [0, 1), got -0.1"),
    ([0.25, 1.0], ValueError, "must each be in [0, 1), got [0.25, 1.0]"),
    ("0.5", TypeError, "must be a number or a list of numbers, got '0.5'"),
])
def test_head_dropout_probabilities_lie_in_zero_one(ps, error, words):
    messages = _messages([lambda: create_head(8, 3, ps=ps),
                          lambda: vision_learner(array_dls(), "test_resnet", pretrained=False, ps=ps)], error)
    assert messages[0] == messages[1]
    assert f"ps (the head's dropout probabilities) {words}" in messages[0]
    assert "fastai's default head has ps=0.5" in messages[0] and "0 turns dropout off" in messages[0]


@pytest.mark.parametrize("lin_ftrs,error,words", [
    ([0], ValueError, "must be positive ints, got [0]"),
    ([512, -1], ValueError, "must be positive ints, got [512, -1]"),
    (512, TypeError, "must be a list of ints, got 512"),
    ([2.5], TypeError, "must be a list of ints, got [2.5]"),
])
def test_head_hidden_sizes_are_positive_ints(lin_ftrs, error, words):
    messages = _messages([lambda: create_head(8, 3, lin_ftrs=lin_ftrs),
                          lambda: vision_learner(array_dls(), "test_resnet", pretrained=False, lin_ftrs=lin_ftrs)],
                         error)
    assert messages[0] == messages[1]
    assert f"lin_ftrs (the head's hidden layer sizes) {words}" in messages[0]
    assert "[512] (the default)" in messages[0] and "[] for none" in messages[0]
    head = create_head(8, 3, lin_ftrs=[])  # no hidden layer: one block, pooled 16 features -> 3
    assert [m.out_features for m in head.modules() if isinstance(m, torch.nn.Linear)] == [3]


def test_a_callback_class_given_for_an_object_says_to_call_it(dls_5_batches):
    learn = _learner(dls_5_batches)
    entries = [lambda: _learner(dls_5_batches, cbs=EMA), lambda: _learner(dls_5_batches, cbs=[EMA]),
               lambda: learn.fit(1, 1e-2, cbs=EMA), lambda: learn.fit_one_cycle(1, 1e-2, cbs=EMA),
               lambda: learn.fine_tune(1, 1e-2, cbs=[EMA]), lambda: learn.add_cb(EMA),
               lambda: vision_learner(array_dls(), "test_resnet", pretrained=False, cbs=EMA)]
    messages = _messages(entries, TypeError)
    assert set(messages) == {"callbacks are objects: pass EMA(), not the class EMA (an instance of it, built with its "
                             "arguments if it takes any)"}
    assert learn.n_fits == 0  # nothing ran
    with pytest.raises(TypeError, match=r"cbs holds 'ema' \(str\), which is not a callback: .*e.g. EMA\(\)"):
        learn.fit(1, 1e-2, cbs=["ema"])
    with pytest.raises(TypeError, match=r"cbs must be a callback object or a list of them \(e.g. cbs=\[EMA\(\)\]\), "
                                        r"got 'ema'"):
        learn.fit(1, 1e-2, cbs="ema")


def test_callbacks_and_sizes_given_as_other_sequences_are_taken_as_lists(dls_5_batches):
    import numpy as np
    ema = EMA()
    learn = _learner(dls_5_batches, cbs=(cb for cb in [ema]))  # a generator, read once
    assert ema in learn.cbs and ema.learn is learn
    head = create_head(8, 3, lin_ftrs=np.array([4]), ps=np.array([0.1, 0.2]))
    assert [m.p for m in head.modules() if isinstance(m, torch.nn.Dropout)] == pytest.approx([0.1, 0.2])
    assert [m.out_features for m in head.modules() if isinstance(m, torch.nn.Linear)] == [4, 3]
    learn.fit_one_cycle(1, 1e-2, moms=np.array([0.95, 0.85, 0.95]))
