"""Mixup and CutMix: training images blended (Mixup) or patched (CutMix) with another image of their batch,
and their labels mixed in the same proportion, with timm's `Mixup` (docs/regularisation.md).

`MixUp(alpha)` and `CutMix(alpha)` are callbacks. In every training batch they replace the inputs by the
mixed images and the labels by soft targets: `lam * onehot(y) + (1 - lam) * onehot(y flipped)`, smoothed
with `label_smoothing` (timm's `mixup_target`), `lam ~ Beta(alpha, alpha)` drawn per batch (for CutMix,
corrected to the area of the box actually pasted). The loss must accept class probabilities as targets,
which `nn.CrossEntropyLoss` does; validation is untouched, so the validation loss and the metrics see
the hard labels. Only single-label classification is mixed: multi-label data and regression (the data's
task, `tasks.task_of`, else the one the loss implies) or an embedding loss are refused when the fit starts,
since a mixed image's labels are not the mix of the two label sets there (an object CutMix cuts out is
absent, not present at `lam`). Cached features (`FeatureCache`) are not used while these callbacks are in a
fit: a mix of features is not the features of a mix.

The draws come from NumPy's global random state (timm's), which checkpoints keep: a resumed fit mixes as
the uninterrupted one would.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from timm.data import Mixup

from ..core.callback import Callback
from ..core.loop import BaseLearner
from ..core.tasks import MULTI_LABEL, REGRESSION, task_of
from ..utils.checks import is_int, is_real


def output_count(model: nn.Module) -> Optional[int]:
    """The number of outputs of a classifier: the `out_features` of its last `nn.Linear` (a learner's head comes
    last), or None when it has none."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


class MixUp(Callback):
    """Mixup (Zhang et al., 2018) on every training batch, through timm's `Mixup` (module docstring).

    Args:
        alpha: `lam ~ Beta(alpha, alpha)`; fastai's default 0.4 (timm's training script uses 0.8).
        label_smoothing: smooth the mixed targets (timm's); leave 0 when the loss smooths already
            (`nn.CrossEntropyLoss(label_smoothing=...)`), which gives the same targets.
        prob: the probability that a batch is mixed.
        cutmix_alpha: also CutMix with this alpha, each batch one or the other (`switch_prob` CutMix).
        num_classes: default `dls.c`, else (DataLoaders without a vocab) the model's number of outputs, the
            `out_features` of its last `nn.Linear` (`output_count`).
    """
    mixes_inputs = True  # FeatureCache does not cache a fit with such a callback
    learn: BaseLearner

    def __init__(self, alpha: float = 0.4, label_smoothing: float = 0.0, prob: float = 1.0,
                 cutmix_alpha: float = 0.0, switch_prob: float = 0.5, num_classes: Optional[int] = None):
        for name, value in (("alpha", alpha), ("cutmix_alpha", cutmix_alpha)):
            if not is_real(value) or not value >= 0:
                raise ValueError(f"{type(self).__name__} {name} must be a number >= 0 (the Beta distribution's "
                                 f"parameter), got {value!r}")
        if not alpha > 0 and not cutmix_alpha > 0:
            raise ValueError(f"{type(self).__name__} needs an alpha > 0 (the Beta distribution's parameter), got 0")
        for name, value in (("label_smoothing", label_smoothing), ("prob", prob), ("switch_prob", switch_prob)):
            if not is_real(value) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        self.alpha, self.cutmix_alpha, self.label_smoothing = float(alpha), float(cutmix_alpha), float(label_smoothing)
        self.prob, self.switch_prob, self.num_classes = float(prob), float(switch_prob), num_classes
        self.mixer: Optional[Mixup] = None

    def before_fit(self) -> None:
        name, loss = type(self).__name__, self.learn.loss_func
        task = task_of(loss, self.learn.dls)
        if task == MULTI_LABEL:
            raise ValueError(
                f"{name} mixes single-label classes; this learner's task is multi-label (its loss "
                f"{type(loss).__name__}), for which a mixed image's labels are not a mix of the two label sets "
                f"(CutMix may cut an object out, Mixup makes it faint). Train multi-label data without {name}")
        if task == REGRESSION:
            raise ValueError(
                f"{name} mixes single-label classes; this learner's task is regression (its loss "
                f"{type(loss).__name__}), whose targets are not class probabilities. Train it without {name}")
        if not isinstance(loss, nn.CrossEntropyLoss):
            raise ValueError(
                f"{name} trains on mixed soft targets (class probabilities), which nn.CrossEntropyLoss accepts; this "
                f"learner's loss is {type(loss).__name__}: use {name} with single-label classification and "
                "nn.CrossEntropyLoss")
        if self.label_smoothing and loss.label_smoothing:
            raise ValueError(
                f"the loss smooths labels (CrossEntropyLoss(label_smoothing={loss.label_smoothing:g})) and {name} "
                f"too (label_smoothing={self.label_smoothing:g}): they would be smoothed twice. Keep one of them")
        n_classes = self.num_classes if self.num_classes is not None else getattr(self.learn.dls, "c", None)
        if n_classes is None:  # data without a vocab: the classes are the model's outputs
            n_classes = output_count(self.learn.model)
        if not is_int(n_classes) or n_classes < 2:
            raise ValueError(f"{name} needs the number of classes to build one-hot targets: neither the DataLoaders "
                             f"(vocab or c) nor the model (a last nn.Linear) say it; pass {name}(num_classes=...)")
        self.mixer = Mixup(mixup_alpha=self.alpha, cutmix_alpha=self.cutmix_alpha, prob=self.prob,
                           switch_prob=self.switch_prob, mode="batch", label_smoothing=self.label_smoothing,
                           num_classes=n_classes)

    def before_batch(self) -> None:
        if not self.learn.training:
            return
        xb, yb = self.learn.xb, self.learn.yb
        name = type(self).__name__
        if len(xb) != 1 or not isinstance(xb[0], torch.Tensor):
            raise ValueError(f"{name} mixes batches with one input tensor; these batches have {len(xb)} inputs")
        x, y = xb[0], yb[0]
        if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.is_floating_point():
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"{name} needs one integer class label per image (single-label classification); the "
                             f"targets are {shape}" + (" floats" if isinstance(y, torch.Tensor) and
                                                       y.is_floating_point() else "") +
                             " (multi-label or soft targets?). Train such data without it")
        if len(x) % 2:
            raise ValueError(f"{name} pairs each image with another of its batch (timm's Mixup) and needs an even "
                             f"batch size; this batch has {len(x)} images: use an even bs")
        if self.cutmix_alpha > 0 and x.ndim != 4:
            raise ValueError(f"CutMix pastes a box of one image into another and needs image batches (B, C, H, W); "
                             f"these inputs have shape {tuple(x.shape)}")
        mixed, soft = self.mixer(x.clone(), y)
        self.learn.xb, self.learn.yb = (mixed,), (soft,)


class CutMix(MixUp):
    """CutMix (Yun et al., 2019): a box of another image of the batch pasted in, `lam ~ Beta(alpha, alpha)`
    corrected to the box's area, labels mixed by that area (timm's `Mixup` with `cutmix_alpha`; module
    docstring). Args as `MixUp`."""

    def __init__(self, alpha: float = 1.0, label_smoothing: float = 0.0, prob: float = 1.0,
                 num_classes: Optional[int] = None):
        super().__init__(alpha=0.0, label_smoothing=label_smoothing, prob=prob, cutmix_alpha=alpha,
                         num_classes=num_classes)
