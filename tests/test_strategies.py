"""fine_tune strategies: the phases (epochs, frozen groups, per-group peak lrs) each strategy's definition
gives a 3-group model, worked out by hand; layer-wise lr decay; optimizer state across phases."""
import math

import numpy as np
import pytest

from fastfreeze import Callback, Learner
from fastfreeze.core.lrs import lrs_decay
from fastfreeze.finetune.strategies import (FastaiFineTune, Freeze, GradualUnfreezing, KeepProbe, Phase, Strategy,
                                            UnfreezeMilestones, discriminative, resolve_strategy)
from helpers import mlp3

BATCHES = 5  # per epoch, dls_5_batches
BASE = 1e-2
DISC = [1e-4, 1e-3, 1e-2]  # slice(BASE/100, BASE) over 3 groups: geometric, docs/learning-rates.md


class RecordPhases(Callback):
    """Per training step: phase label, frozen group count, every group's lr, and which groups' Linear
    weights train (BatchNorm parameters of frozen groups train anyway with train_bn)."""

    def __init__(self):
        self.steps = []

    def after_batch(self):
        if self.learn.training:
            model = self.learn.model
            linears = [model[0][0].weight, model[1][0].weight, model[2].weight]
            self.steps.append((self.learn.phase, self.learn.frozen_groups,
                               [g["lr"] for g in self.learn.opt.param_groups], [w.requires_grad for w in linears]))

    def phases(self):
        """[(label, epochs, frozen groups, peak lr per group, lrs of each step)], one entry per run of steps."""
        out = []
        for label, frozen, lrs, trains in self.steps:
            if not out or out[-1][0] != label:
                out.append([label, 0, frozen, None, []])
            entry = out[-1]
            assert entry[2] == frozen  # no change of freezing inside a phase
            assert trains == [i >= frozen for i in range(3)]
            entry[1] += 1
            entry[4].append(lrs)
        return [(label, n / BATCHES, frozen, list(np.max(lrs, axis=0)), np.array(lrs))
                for label, n, frozen, _, lrs in out]


def one_cycle(n_steps, peak, div=5.0, pct_start=0.2, div_final=1e5):
    """docs/schedules.md (one-cycle), written out here."""
    out = []
    for t in range(n_steps):
        pos = t / n_steps
        if pos < pct_start:
            s, e, q = peak / div, peak, pos / pct_start
        else:
            s, e, q = peak, peak / div_final, (pos - pct_start) / (1 - pct_start)
        out.append(s + (1 + math.cos(math.pi * (1 - q))) * (e - s) / 2)
    return np.array(out)


def run(dls, strategy, epochs=4, **kwargs):
    rec = RecordPhases()
    learn = Learner(mlp3(), dls, progress=False)
    # pct_start 0.2: step n_steps/5 sits exactly on the peak of each cycle, so the max lr is the peak
    learn.fine_tune(epochs, base_lr=BASE, pct_start=0.2, strategy=strategy, cbs=rec, **kwargs)
    return learn, rec.phases()


# (strategy, [(label, epochs, frozen groups)]) for epochs=4 and 3 groups (0, 1 body; 2 head), by definition
CASES = [
    ("freeze", [("frozen", 4, 2)]),
    ("no_freeze", [("unfrozen", 4, 0)]),
    (("freeze_unfreeze", 1), [("frozen", 1, 2), ("unfrozen", 3, 0)]),
    (("freeze_unfreeze", 0), [("unfrozen", 4, 0)]),
    # head only for epochs [0, 1); head + last 1 body group (group 1) for [1, 3); all for [3, 4)
    (("unfreeze_milestones", ((1, 3), 1)), [("frozen", 1, 2), ("unfrozen from group 1", 2, 1), ("unfrozen", 1, 0)]),
    # k = 2 = the whole body at e1: nothing changes at e2, so one unfrozen phase (one cycle) from e1 to the end
    (("unfreeze_milestones", ((2, 3), 2)), [("frozen", 2, 2), ("unfrozen", 2, 0)]),
    # ULMFiT: head 1 epoch, + group 1 for 1 epoch, then all for the remaining 2
    (("gradual", 1), [("frozen", 1, 2), ("unfrozen from group 1", 1, 1), ("unfrozen", 2, 0)]),
    # every 2 epochs: the 4 epochs end before group 0 unfreezes
    (("gradual", 2), [("frozen", 2, 2), ("unfrozen from group 1", 2, 1)]),
]


@pytest.mark.parametrize("strategy,expected", CASES, ids=[str(c[0]) for c in CASES])
def test_strategy_phases(dls_5_batches, strategy, expected):
    learn, phases = run(dls_5_batches, strategy)
    assert [(label, epochs, frozen) for label, epochs, frozen, _, _ in phases] == expected
    for label, epochs, frozen, peaks, lrs in phases:
        # each phase is its own one-cycle (div 5, pct_start 0.2) peaking at each group's discriminative lr
        np.testing.assert_allclose(peaks, DISC, rtol=1e-12)
        for g in range(3):
            np.testing.assert_allclose(lrs[:, g], one_cycle(len(lrs), DISC[g]), rtol=1e-10)
    assert learn.recorder.phases == [label for label, epochs, *_ in expected for _ in range(int(epochs * BATCHES))]
    assert learn.frozen_groups == expected[-1][2]


def test_default_strategy_is_fastai_recipe(dls_5_batches):
    learn, phases = run(dls_5_batches, None, epochs=2)
    assert [(label, epochs, frozen) for label, epochs, frozen, _, _ in phases] == [("frozen", 1, 2), ("unfrozen", 2, 0)]
    frozen_lrs, unfrozen_lrs = phases[0][4], phases[1][4]
    # frozen: slice(BASE) -> 1e-3, 1e-3, 1e-2, pct_start 0.99, div 25
    for g, peak in enumerate([1e-3, 1e-3, 1e-2]):
        np.testing.assert_allclose(frozen_lrs[:, g], one_cycle(5, peak, div=25.0, pct_start=0.99), rtol=1e-10)
    # unfrozen: base_lr halved, slice(BASE/2/100, BASE/2) -> 5e-5, 5e-4, 5e-3 (pct_start 0.2 as passed, div 5)
    np.testing.assert_allclose(phases[1][3], [5e-5, 5e-4, 5e-3], rtol=1e-12)
    for g, peak in enumerate([5e-5, 5e-4, 5e-3]):
        np.testing.assert_allclose(unfrozen_lrs[:, g], one_cycle(10, peak), rtol=1e-10)


def test_gentle_is_fastais_recipe_with_the_body_as_one_group(dls_5_batches):
    """'gentle': the same frozen phase as the default, then the body (groups 0 and 1) at the first group's lr
    of slice(BASE/2/100, BASE/2) = 5e-5 and the head at BASE/2 = 5e-3 (fastai's two groups on a timm model)."""
    learn, phases = run(dls_5_batches, "gentle", epochs=2)
    assert [(label, epochs, frozen) for label, epochs, frozen, _, _ in phases] == [("frozen", 1, 2), ("unfrozen", 2, 0)]
    for g, peak in enumerate([1e-3, 1e-3, 1e-2]):
        np.testing.assert_allclose(phases[0][4][:, g], one_cycle(5, peak, div=25.0, pct_start=0.99), rtol=1e-10)
    np.testing.assert_allclose(phases[1][3], [5e-5, 5e-5, 5e-3], rtol=1e-12)
    for g, peak in enumerate([5e-5, 5e-5, 5e-3]):
        np.testing.assert_allclose(phases[1][4][:, g], one_cycle(10, peak), rtol=1e-10)
    # lr_mult sets the body's share: 10 -> 5e-4 for both body groups
    learn, phases = run(dls_5_batches, "gentle", epochs=1, lr_mult=10)
    np.testing.assert_allclose(phases[1][3], [5e-4, 5e-4, 5e-3], rtol=1e-12)
    # without a frozen epoch: the unfrozen phase alone
    learn, phases = run(dls_5_batches, "gentle", epochs=1, freeze_epochs=0)
    assert [(label, epochs, frozen) for label, epochs, frozen, _, _ in phases] == [("unfrozen", 1, 0)]


def test_keep_probe_runs_no_phase(dls_5_batches):
    """KeepProbe: the probe already fitted into the model is the result; fine_tune runs no phase."""
    learn = Learner(mlp3(), dls_5_batches, progress=False)
    assert list(KeepProbe().phases(learn, 3, 1e-3, discriminative())) == []
    assert repr(KeepProbe()) == "KeepProbe()"


def test_layer_decay_peaks(dls_5_batches):
    # default recipe: the unfrozen phase's head lr is BASE/2; group i peaks at head_lr * 0.75**(2-i)
    learn, phases = run(dls_5_batches, None, epochs=2, freeze_epochs=0, layer_decay=0.75)
    head = BASE / 2
    expected = [head * 0.5625, head * 0.75, head]
    assert [(p[0], p[1], p[2]) for p in phases] == [("unfrozen", 2, 0)]
    np.testing.assert_allclose(phases[0][3], expected, rtol=1e-12)
    for g in range(3):
        np.testing.assert_allclose(phases[0][4][:, g], one_cycle(10, expected[g]), rtol=1e-10)
    # a strategy: the head peaks at BASE in every phase, the body groups decayed below it
    learn, phases = run(dls_5_batches, ("freeze_unfreeze", 1), epochs=2, layer_decay=0.75)
    assert [(p[0], p[1], p[2]) for p in phases] == [("frozen", 1, 2), ("unfrozen", 1, 0)]
    for p in phases:
        np.testing.assert_allclose(p[3], [BASE * 0.5625, BASE * 0.75, BASE], rtol=1e-12)


def test_layer_decay_leaves_the_default_frozen_phase_as_fastai(dls_5_batches):
    learn, phases = run(dls_5_batches, None, epochs=1, layer_decay=0.5)
    np.testing.assert_allclose(phases[0][4][0], [1e-3 / 25, 1e-3 / 25, 1e-2 / 25], rtol=1e-12)  # slice(BASE)/25
    np.testing.assert_allclose(phases[1][3], [5e-3 * 0.25, 5e-3 * 0.5, 5e-3], rtol=1e-12)


@pytest.mark.parametrize("reset_opt", [True, False])
def test_reset_opt_is_honoured_across_phases(dls_5_batches, reset_opt):
    learn = Learner(mlp3(), dls_5_batches, progress=False, reset_opt=reset_opt)
    learn.fine_tune(3, base_lr=BASE, strategy=("freeze_unfreeze", 1))  # 5 frozen steps, then 10 unfrozen
    model = learn.model

    def steps(p):
        return int(learn.opt.state[p]["step"]) if p in learn.opt.state else 0

    # the head and the BatchNorm of group 0 (train_bn) step in both phases, group 0's Linear in the second only
    assert steps(model[2].weight) == (10 if reset_opt else 15)
    assert steps(model[0][1].weight) == (10 if reset_opt else 15)
    assert steps(model[0][0].weight) == 10


class HeadThenBody(Strategy):
    """A user strategy: two head-only epochs at one float lr, then everything at hand-picked lrs."""

    def phases(self, learn, epochs, base_lr, disc):
        yield Phase(2, learn.n_groups - 1, base_lr, "warm head")
        yield Phase(epochs - 2, 0, [1e-5, 2e-5, 3e-5], "all", pct_start=0.2, div=10.0)


def test_user_defined_strategy(dls_5_batches):
    learn, phases = run(dls_5_batches, HeadThenBody(), epochs=3)
    assert [(p[0], p[1], p[2]) for p in phases] == [("warm head", 2, 2), ("all", 1, 0)]
    np.testing.assert_allclose(phases[0][3], [BASE] * 3, rtol=1e-12)
    for g, peak in enumerate([1e-5, 2e-5, 3e-5]):
        np.testing.assert_allclose(phases[1][4][:, g], one_cycle(5, peak, div=10.0), rtol=1e-10)


def test_user_strategy_using_the_discriminative_rule(dls_5_batches):
    class DecayOnly(Strategy):
        def phases(self, learn, epochs, base_lr, disc):
            assert isinstance(disc(base_lr), type(lrs_decay(1.0)))
            yield Phase(epochs, 0, disc(base_lr), "decayed")

    learn, phases = run(dls_5_batches, DecayOnly(), epochs=1, layer_decay=0.5)
    np.testing.assert_allclose(phases[0][3], [BASE / 4, BASE / 2, BASE], rtol=1e-12)


class Broken(Strategy):
    def __init__(self, phase):
        self.phase = phase

    def phases(self, learn, epochs, base_lr, disc):
        yield Phase(1, learn.n_groups - 1, base_lr, "fine")
        yield self.phase


@pytest.mark.parametrize("spec,error,match", [
    ("gradual", ValueError, "unknown fine_tune strategy"),
    (("freeze_unfreeze", 5), ValueError, "unfreezes after the last of 4 epochs"),
    (("freeze_unfreeze", -1), ValueError, "int >= 0"),
    (("unfreeze_milestones", ((1, 3), 3)), ValueError, "has 2 body groups"),
    (("unfreeze_milestones", ((3, 1), 1)), ValueError, "in order"),
    (("unfreeze_milestones", ((1, 5), 1)), ValueError, "go past the last"),
    (("gradual", 0), ValueError, "int >= 1"),
    (Broken("not a phase"), TypeError, "must yield Phase objects"),
    (Broken(Phase(1, 3, 1e-3, "bad")), ValueError, r"must be an int in \[-3, 2\]"),
    (Broken(Phase(1, 0, [1e-3, 1e-3], "bad")), ValueError, "2 learning rates for 3 layer groups"),
])
def test_bad_strategies_are_clear_errors_before_training(dls_5_batches, spec, error, match):
    learn = Learner(mlp3(), dls_5_batches, progress=False)
    with pytest.raises(error, match=match):
        learn.fine_tune(4, strategy=spec)
    assert learn.recorder.phases == []  # nothing trained


def test_bad_layer_decay_and_phase_kwarg(dls_5_batches):
    learn = Learner(mlp3(), dls_5_batches, progress=False)
    with pytest.raises(ValueError, match="layer_decay must be in"):
        learn.fine_tune(1, layer_decay=1.5)
    with pytest.raises(ValueError, match="labels its phases"):
        learn.fine_tune(1, phase="x")


# -- each strategy's arguments: the valid edges and the exact messages of the invalid ones -------------------
@pytest.mark.parametrize("spec,message", [
    (("freeze_unfreeze", -1), "the unfreeze epoch of 'freeze_unfreeze' must be an int >= 0, got -1"),
    (("freeze_unfreeze", 1.5), "the unfreeze epoch of 'freeze_unfreeze' must be an int >= 0, got 1.5"),
    (("freeze_unfreeze", True), "the unfreeze epoch of 'freeze_unfreeze' must be an int >= 0, got True"),
    (("gradual", 0), "the epochs per step of 'gradual' must be an int >= 1, got 0"),
    (("unfreeze_milestones", ((1, -2), 1)), "an unfreeze milestone must be an int >= 0, got -2"),
    (("unfreeze_milestones", ((1, 2), 0)),
     "the number of body groups of 'unfreeze_milestones' must be an int >= 1, got 0"),
    (("unfreeze_milestones", (1, 2, 3)), "'unfreeze_milestones' takes ((e1, e2), k), got (1, 2, 3)"),
    (("unfreeze_milestones", 3), "'unfreeze_milestones' takes ((e1, e2), k), got 3"),
    (["gradual", 1], "unknown fine_tune strategy ['gradual', 1]: use None (fastai's recipe), 'gentle', 'freeze', 'no_freeze', "
                     "('freeze_unfreeze', e), ('unfreeze_milestones', ((e1, e2), k)), ('gradual', k), 'lora' or a "
                     "Strategy object"),
])
def test_strategy_argument_errors_say_which_argument_and_what_it_got(spec, message):
    with pytest.raises(ValueError) as error:
        resolve_strategy(spec)
    assert str(error.value) == message


def test_strategy_constructor_and_fine_tune_argument_errors(dls_5_batches):
    with pytest.raises(ValueError) as error:
        UnfreezeMilestones((1, 2, 3), 1)
    assert str(error.value) == "unfreeze_milestones takes ((e1, e2), k), got milestones (1, 2, 3)"
    for bad in (-1, 0.5, True):
        with pytest.raises(ValueError) as error:
            FastaiFineTune(bad)
        assert str(error.value) == f"freeze_epochs must be an int >= 0, got {bad!r}"
    learn = Learner(mlp3(), dls_5_batches, progress=False)
    with pytest.raises(ValueError) as error:
        learn.fine_tune(-1, base_lr=BASE, strategy="freeze")
    assert str(error.value) == "epochs must be >= 0, got -1"  # fine_tune checks its epochs first
    with pytest.raises(ValueError) as error:  # a strategy's phases check them too, for callers of their own
        list(resolve_strategy("freeze").phases(learn, -1, BASE, discriminative()))
    assert str(error.value) == "epochs must be an int >= 0, got -1"
    for kwargs, message in [(dict(lr_mult=0.5), "lr_mult must be >= 1 (the head lr over the first group's; 1 gives every "
                             "group the head's lr), got 0.5"),
                            (dict(layer_decay=0), "layer_decay must be in (0, 1] (e.g. 0.75), got 0")]:
        with pytest.raises(ValueError) as error:
            learn.fine_tune(1, base_lr=BASE, **kwargs)
        assert str(error.value) == message
    assert learn.recorder.phases == []


def phases_of(strategy, epochs=4):
    learn = Learner(mlp3(), None, progress=False)  # 3 layer groups
    return [(p.epochs, p.freeze_to, p.label) for p in strategy.phases(learn, epochs, BASE, discriminative())]


def test_strategy_edges_are_allowed(dls_5_batches):
    """The edges that the definitions allow: unfreezing at the last epoch (all frozen), equal milestones, the last
    milestone at the end, no frozen epoch, lr_mult and layer decay of 1 (every group at the head's lr)."""
    assert phases_of(resolve_strategy(("freeze_unfreeze", 4))) == [(4, 2, "frozen")]
    assert phases_of(resolve_strategy(("unfreeze_milestones", ((2, 2), 1)))) == [(2, 2, "frozen"), (2, 0, "unfrozen")]
    assert phases_of(resolve_strategy(("unfreeze_milestones", ((1, 4), 1)))) == [
        (1, 2, "frozen"), (3, 1, "unfrozen from group 1")]
    assert phases_of(FastaiFineTune(0)) == [(4, 0, "unfrozen")]
    for kwargs in (dict(lr_mult=1), dict(layer_decay=1)):
        learn = Learner(mlp3(), dls_5_batches, progress=False)
        rec = RecordPhases()
        learn.fine_tune(1, base_lr=BASE, freeze_epochs=0, cbs=rec, **kwargs)
        assert all(lrs == [lrs[-1]] * 3 for _, _, lrs, _ in rec.steps)


def test_strategy_defaults_are_the_documented_ones():
    """fastai's recipe: 1 frozen epoch; gradual unfreezing: one more group every epoch; discriminative lrs: the
    first group at the head's lr / 100."""
    assert phases_of(resolve_strategy(None)) == [(1, 2, "frozen"), (4, 0, "unfrozen")]
    assert phases_of(FastaiFineTune()) == [(1, 2, "frozen"), (4, 0, "unfrozen")]
    assert phases_of(GradualUnfreezing()) == [(1, 2, "frozen"), (1, 1, "unfrozen from group 1"), (2, 0, "unfrozen")]
    assert discriminative()(2.0) == slice(0.02, 2.0)


def test_strategies_print_as_their_constructor_calls():
    assert repr(GradualUnfreezing(2)) == "GradualUnfreezing(every=2)"
    assert repr(UnfreezeMilestones((1, 2), 1)) == "UnfreezeMilestones(milestones=(1, 2), n_body_groups=1)"
    assert repr(Freeze()) == "Freeze()"
