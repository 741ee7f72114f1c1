"""torch.compile per fit: compiled and undone around each fit, re-traced after freezing, skipped with a message
where it cannot work."""
import shutil

import pytest
import torch

from fastfreeze import Callback, DataLoaders, Learner
from fastfreeze.callbacks.compile import CompileCallback, compile_callback, compile_unavailable, is_compiled
from helpers import blobs, mlp2, transfer_learner


class CheckCompiled(Callback):
    def before_fit(self):
        self.seen = []

    def before_train(self):
        self.seen.append(is_compiled(self.learn.model))


def test_compile_per_fit_is_undone_and_traced_again_after_freezing():
    """What is traced when, with a backend that counts its graphs (and runs them as they are: the numbers are
    checked against eager with the real backend, below)."""
    torch.manual_seed(5)
    eager = transfer_learner()
    eager.fit(2, 1e-2)
    eager.unfreeze()
    eager.fit(1, 1e-3)

    calls = []
    check = CheckCompiled()
    torch.manual_seed(5)
    learn = transfer_learner(cbs=[CompileCallback(backend=counting_backend(calls)), check])
    keys = list(learn.model.state_dict())
    learn.fit(2, 1e-2)
    n_frozen_phase = len(calls)
    assert n_frozen_phase >= 1 and check.seen == [True, True] and not is_compiled(learn.model)
    learn.unfreeze()
    learn.fit(1, 1e-3)
    assert len(calls) > n_frozen_phase  # traced again for the new requires_grad flags
    assert list(learn.model.state_dict()) == keys and not is_compiled(learn.model)
    for p, q in zip(eager.model.parameters(), learn.model.parameters()):
        assert torch.allclose(p, q, atol=1e-5)


def frozen_then_unfrozen(cbs=None):
    """mlp2 (BatchNorm, no dropout: inductor draws other random numbers than eager) fitted 1 epoch frozen,
    then 1 epoch unfrozen; the compiled-kernel files in the inductor cache after each fit."""
    x, y = blobs(32)
    learn = Learner(mlp2(), DataLoaders.from_tensors(x, y, bs=8, shuffle=False), progress=False, cbs=cbs)
    learn.freeze()
    learn.fit(1, 1e-2)
    yield learn
    learn.unfreeze()
    learn.fit(1, 1e-3)
    yield learn


@pytest.mark.slow
def test_compile_with_the_default_backend_matches_eager(tmp_path, monkeypatch, capsys):
    """The real default backend (inductor, C++ kernels built with the machine's compiler): the trained weights
    match eager training, and each phase builds its own kernels (the unfrozen phase traces a backward through
    the body that the frozen phase had no need of). About a minute on a busy 2-core CPU, most of it the first
    compile."""
    reason = compile_unavailable("inductor", "cpu")
    if reason is not None:
        pytest.skip(f"needs a C++ compiler for torch.compile's inductor backend: {reason}")
    cache = tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(cache))  # a fresh cache: every kernel is built here

    def kernels():
        return len(list(cache.rglob("*.so")))
    eager = list(frozen_then_unfrozen())[-1]
    check = CheckCompiled()
    runs = frozen_then_unfrozen([CompileCallback(options={"compile_threads": 1}), check])
    next(runs)
    after_frozen = kernels()
    learn = next(runs)
    out = capsys.readouterr().out
    assert "torch.compile" not in out  # neither skipped nor failed
    assert check.seen == [True] and not is_compiled(learn.model)
    assert 0 < after_frozen < kernels()
    for p, q in zip(eager.model.parameters(), learn.model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
    assert (eager.model[0][0].weight - mlp2()[0][0].weight).abs().max() > 1e-3  # the body did train


def test_compile_with_eager_backend_and_a_failing_backend(capsys):
    learn = transfer_learner(cbs=CompileCallback(backend="eager"))
    learn.fit(1, 1e-2)
    assert torch.isfinite(torch.tensor(learn.recorder.losses)).all()

    def broken(graph_module, example_inputs):
        raise RuntimeError("no code generator here")

    torch.manual_seed(7)
    reference = transfer_learner()
    reference.fit(1, 1e-2)
    torch.manual_seed(7)
    learn = transfer_learner(cbs=CompileCallback(backend=broken))
    learn.fit(1, 1e-2)
    out = capsys.readouterr().out
    assert out.count("torch.compile failed") == 1 and "running uncompiled" in out
    for p, q in zip(reference.model.parameters(), learn.model.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_compile_skipped_where_unavailable(monkeypatch, capsys):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "C++ compiler" in compile_unavailable("inductor", "cpu")
    assert compile_unavailable("eager", "cpu") is None
    check = CheckCompiled()
    learn = transfer_learner(cbs=[CompileCallback(), check])  # inductor, the default
    learn.fit(1, 1e-2)
    assert "torch.compile skipped" in capsys.readouterr().out and check.seen == [False]

    def unsupported(*args, **kwargs):
        raise RuntimeError("unsupported")
    monkeypatch.setattr(torch, "compile", unsupported)
    learn = transfer_learner(cbs=[CompileCallback(backend="eager"), check])
    learn.fit(1, 1e-2)
    assert "skipped: RuntimeError: unsupported" in capsys.readouterr().out and check.seen == [False]


def test_compile_callback_from_spec():
    assert compile_callback(False) is None and compile_callback(None) is None
    assert compile_callback(True).backend == "inductor"
    assert compile_callback("max-autotune").mode == "max-autotune"
    spec = compile_callback({"backend": "eager", "reset": False})
    assert spec.backend == "eager" and spec.reset is False
    with pytest.raises(TypeError, match="the keys are"):
        compile_callback({"backnd": "eager"})
    with pytest.raises(TypeError, match="compile must be"):
        compile_callback(3)


def counting_backend(calls: list):
    def backend(graph_module, example_inputs):
        calls.append(len(example_inputs))
        return graph_module.forward
    return backend
