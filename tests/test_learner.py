"""Learner: the core plus every feature bound as a method, each signature written once, in its feature module."""
import inspect

from fastfreeze import BaseLearner, Learner
from fastfreeze.callbacks.compile import CompileCallback
from fastfreeze.callbacks.distributed import distributed
from fastfreeze.inference.export import export_learner
from fastfreeze.finetune.finetune import fine_tune
from fastfreeze.finetune.lr_finder import lr_find
from fastfreeze.finetune.schedule import fit_one_cycle
from helpers import mlp2, transfer_learner

FEATURES = {"fit_one_cycle": fit_one_cycle, "fine_tune": fine_tune, "lr_find": lr_find, "export": export_learner,
            "distributed": distributed}


def test_feature_methods_are_the_feature_functions_themselves():
    for name, function in FEATURES.items():
        assert getattr(Learner, name) is function, name
        assert not hasattr(BaseLearner, name), name  # the core knows no feature
        params = list(inspect.signature(getattr(Learner, name)).parameters)
        assert params[0] == "learn" and params[1:] == list(inspect.signature(function).parameters)[1:]


def test_bound_methods_act_on_the_learner(dls_5_batches):
    learn = Learner(mlp2(), dls_5_batches, progress=False)
    learn.fit_one_cycle(1, 1e-2)
    assert learn.recorder.phases == ["fit 1"] * 5
    learn.fine_tune(1, base_lr=1e-3, freeze_epochs=0)
    assert learn.recorder.phases[5:] == ["unfrozen"] * 5


def test_compile_argument_adds_a_compile_callback(dls_5_batches):
    assert not any(isinstance(cb, CompileCallback) for cb in Learner(mlp2(), dls_5_batches, progress=False).cbs)
    learn = Learner(mlp2(), dls_5_batches, None, progress=False, compile={"backend": "eager", "verbose": False})
    assert [cb.backend for cb in learn.cbs if isinstance(cb, CompileCallback)] == ["eager"]


def test_the_signature_shows_every_parameter_with_its_default():
    base = inspect.signature(BaseLearner.__init__).parameters
    mine = inspect.signature(Learner.__init__).parameters
    assert list(mine) == list(base) + ["compile"]
    assert all(mine[name].default == base[name].default for name in base)
    assert mine["compile"].default is False
    assert not [p for p in mine.values() if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def test_the_results_features_set_are_declared_and_none_before_they_are_set(dls_5_batches):
    learn = Learner(mlp2(), dls_5_batches, progress=False)
    for name in ("auto_lr", "fine_tune_choice", "fine_tune_state", "build_spec"):
        assert name in Learner.__annotations__ and name in Learner.__doc__, name
        assert getattr(learn, name) is None, name
    learn = transfer_learner()
    learn.fine_tune(1)  # base_lr='auto': the lr sweep, then the few-images decision (40 items, 3 classes: a probe)
    assert learn.auto_lr["base_lr"] > 0 and learn.fine_tune_choice.probe_kept and learn.fine_tune_state is None
    assert "fine_tune_state" in learn.state_dict()["loop"] and Learner.extra_state == ("fine_tune_state",)
