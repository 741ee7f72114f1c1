"""fastfreeze: transfer learning for timm image models with layer groups and discriminative learning rates."""
from .auto_lr import choose_base_lr
from .body import BodyInfo, TransferModel, create_timm_body, cut_classifier
from .callback import (Callback, CancelBatchException, CancelEpochException, CancelFitException,
                       CancelTrainException, CancelValidException)
from .checkpoint import CheckpointCallback, EarlyStopping, SaveModelCallback, TerminateOnNaN
from .compile import CompileCallback
from .data import DataLoaders
from .distributed import DistributedCallback, distributed, init_distributed, sync_batchnorm
from .ema import EMA
from .export import export_learner, push_to_hub
from .export_format import InvalidExportError
from .feature_cache import FeatureCache
from .finetune import fine_tune
from .grad_clip import GradientClip
from .groups import body_groups, group_names, layer_groups
from .head import AdaptiveConcatPool2d, create_head, head_from_layers, projection_head
from .image_data import ImageDataLoaders
from .learner import Learner
from .loggers import CSVLogger, TensorBoardCallback
from .loop import BaseLearner
from .losses import SupervisedContrastiveLoss
from .lr_finder import minimum, slide, steep, valley
from .lrs import expand_lrs, lrs_decay
from .metrics import Metric, accuracy, error_rate, top_k, top_k_accuracy
from .mixup import CutMix, MixUp
from .onnx_export import to_onnx
from .optim import adamw
from .predictor import Predictor, load_learner
from .ranks import barrier, broadcast_object, is_rank_zero, on_rank_zero
from .recorder import ProgressCallback, Recorder
from .schedule import ParamScheduler, cos_anneal, fit_one_cycle, one_cycle_scheduler
from .strategies import (FastaiFineTune, Freeze, FreezeUnfreeze, GradualUnfreezing, NoFreeze, Phase, Strategy,
                         UnfreezeMilestones)
from .version import __version__
from .vision import VisionLearner, vision_learner
from .weights import load_pretrained

__all__ = [
    "Callback", "CancelBatchException", "CancelEpochException", "CancelFitException", "CancelTrainException",
    "CancelValidException", "DataLoaders", "Learner", "BaseLearner", "Metric", "ParamScheduler", "ProgressCallback",
    "Recorder", "accuracy", "adamw", "cos_anneal", "error_rate", "expand_lrs", "fine_tune", "fit_one_cycle",
    "lrs_decay", "one_cycle_scheduler", "top_k", "top_k_accuracy",
    "valley", "minimum", "steep", "slide",
    "Strategy", "Phase", "FastaiFineTune", "Freeze", "NoFreeze", "FreezeUnfreeze", "UnfreezeMilestones",
    "GradualUnfreezing",
    "choose_base_lr", "BodyInfo", "TransferModel", "create_timm_body", "cut_classifier", "body_groups",
    "group_names", "layer_groups", "AdaptiveConcatPool2d", "create_head", "head_from_layers", "projection_head",
    "ImageDataLoaders", "SupervisedContrastiveLoss", "VisionLearner", "vision_learner", "load_pretrained",
    "DistributedCallback", "barrier", "broadcast_object", "distributed", "init_distributed", "is_rank_zero",
    "on_rank_zero", "sync_batchnorm",
    "CheckpointCallback", "EarlyStopping", "SaveModelCallback", "TerminateOnNaN", "InvalidExportError", "Predictor",
    "export_learner", "load_learner", "CompileCallback", "FeatureCache", "__version__",
    "EMA", "MixUp", "CutMix", "GradientClip", "CSVLogger", "TensorBoardCallback", "push_to_hub", "to_onnx",
]
