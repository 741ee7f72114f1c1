"""Gradient clipping in `before_step`: after the GradScaler unscales (fp16), once per optimizer step."""
import pytest
import torch

from fastfreeze import Callback, Learner
from fastfreeze.core.grad_clip import GradientClip
from helpers import mlp2


def global_norm(learn) -> float:
    """The L2 norm of every gradient together, computed here (not with clip_grad_norm_)."""
    grads = [p.grad.reshape(-1) for p in learn.model.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.cat(grads).double()))


class Norms(Callback):
    """Gradient norms as the loss scale leaves them after backward, and as the step gets them."""
    order = 1  # after GradientClip (0)

    def __init__(self):
        self.backward, self.scales, self.step = [], [], []

    def after_backward(self):
        self.backward.append(global_norm(self.learn))
        self.scales.append(self.learn.scaler.get_scale() if self.learn.scaler is not None else 1.0)

    def before_step(self):
        self.step.append(global_norm(self.learn))


def test_clip_grad_under_a_grad_scaler_clips_the_unscaled_gradients(dls_5_batches):
    norms = Norms()
    learn = Learner(mlp2(), dls_5_batches, precision="fp16", device="cpu", cbs=norms, progress=False)
    learn.fit(1, lr=1e-3, clip_grad=0.5)
    assert learn.scaler is not None and norms.scales[0] == 2.0 ** 16
    true_norms = [n / s for n, s in zip(norms.backward, norms.scales)]
    assert min(true_norms) > 0.5  # every step needed clipping...
    assert norms.step == pytest.approx([0.5] * 5, rel=1e-5)  # ...and got exactly max_norm on the true gradients
    clip = GradientClip(1.0)  # what the callback reports: the unscaled norm before clipping
    learn.fit(1, lr=1e-3, cbs=[clip])
    assert float(clip.total_norm) == pytest.approx(norms.backward[-1] / norms.scales[-1], rel=1e-5)


def test_total_norm_is_the_norm_before_clipping(dls_5_batches):
    norms = Norms()
    clip = GradientClip(0.1)
    learn = Learner(mlp2(), dls_5_batches, cbs=norms, progress=False)
    learn.fit(1, lr=1e-3, cbs=[clip])
    assert float(clip.total_norm) == pytest.approx(norms.backward[-1], rel=1e-5)
    assert norms.step[-1] == pytest.approx(0.1, rel=1e-5)


def test_clipping_happens_once_per_optimizer_step_under_accumulation(dls_5_batches):
    norms = Norms()
    learn = Learner(mlp2(), dls_5_batches, cbs=norms, progress=False)
    learn.fit(1, lr=1e-3, clip_grad=0.1, accum_steps=2)
    assert len(norms.backward) == 5 and len(norms.step) == 3  # steps after batches 2, 4 and 5
    assert norms.step == pytest.approx([0.1] * 3, rel=1e-5)


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), "1"])
def test_clip_grad_must_be_a_positive_number(dls_5_batches, bad):
    learn = Learner(mlp2(), dls_5_batches, progress=False)
    with pytest.raises(ValueError, match="clip_grad \\(max_norm\\) must be a positive finite number"):
        learn.fit(1, clip_grad=bad)
