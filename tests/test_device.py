"""Precision and placement: autocast dtypes of each precision setting, a GradScaler for fp16, batches moved in
the model's memory format."""
import pytest
import torch

from fastfreeze import Callback, DataLoaders, Learner
from fastfreeze.core.device import as_model_input, autocast_dtype, move_batch
from helpers import blobs, mlp2


def test_precision_settings_give_these_autocast_dtypes():
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16 and autocast_dtype("fp16", cpu) is torch.float16
    with pytest.raises(ValueError, match=r"precision must be one of \('auto', 'fp32', 'bf16', 'fp16'\)"):
        autocast_dtype("half", cpu)


def test_batches_move_with_4d_inputs_in_channels_last():
    images, flat, y = torch.randn(2, 3, 4, 5), torch.randn(2, 7), torch.tensor([0, 1])
    (xi, xf), (yy,) = move_batch((images, flat, y), torch.device("cpu"), channels_last=True)
    assert xi.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous(
        memory_format=torch.channels_last)
    assert torch.equal(xi, images) and torch.equal(xf, flat) and torch.equal(yy, y)
    assert as_model_input(images, channels_last=False) is images
    with pytest.raises(TypeError, match=r"each batch must be a tuple \(x, y\)"):
        move_batch(images, torch.device("cpu"))


class RecordDtypes(Callback):
    def before_fit(self):
        self.dtypes = set()

    def after_pred(self):
        if self.learn.training:
            self.dtypes.add(self.learn.pred.dtype)


def test_bf16_autocast_on_cpu():
    ref, _ = first_loss("fp32")
    learn, rec = first_loss("bf16")
    assert rec.dtypes == {torch.bfloat16}  # autocast ran the forward in bf16
    losses = torch.tensor(learn.recorder.losses)
    assert torch.isfinite(losses).all() and len(losses) == 2 * 5
    # same weights and batch at step 0: only bf16 rounding (8 bits of mantissa, ~0.4% per op) differs
    assert learn.recorder.losses[0] == pytest.approx(ref.recorder.losses[0], rel=2e-2)


def test_fp16_on_cpu_trains_with_a_grad_scaler():
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            torch.ones(2, 2) @ torch.ones(2, 2)
        torch.amp.GradScaler("cpu")
    except (RuntimeError, ValueError, TypeError) as e:  # older torch: no fp16 autocast or scaler on CPU
        pytest.skip(f"this torch has no fp16 autocast on CPU: {e}")
    ref, _ = first_loss("fp32")
    learn, rec = first_loss("fp16")
    assert rec.dtypes == {torch.float16}
    assert isinstance(learn.scaler, torch.amp.GradScaler)
    assert torch.isfinite(torch.tensor(learn.recorder.losses)).all()
    assert learn.recorder.losses[0] == pytest.approx(ref.recorder.losses[0], rel=5e-3)  # 11-bit mantissa


def first_loss(precision: str) -> tuple[Learner, RecordDtypes]:
    x, y = blobs(40)
    torch.manual_seed(0)
    rec = RecordDtypes()
    learn = Learner(mlp2(), DataLoaders.from_tensors(x, y, bs=8, seed=0), precision=precision, progress=False,
                    cbs=rec)
    learn.fit(2, 1e-2)
    return learn, rec
