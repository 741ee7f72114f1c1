"""fastfreeze: transfer learning for timm image models with layer groups and discriminative learning rates."""
import importlib
import warnings

with warnings.catch_warnings():
    # timm imports huggingface_hub, which imports tqdm.auto: in Jupyter without ipywidgets that prints "IProgress
    # not found" at the first import. fastfreeze's bars are fastprogress's, so the warning says nothing of use.
    warnings.filterwarnings("ignore", message="IProgress not found")
    importlib.import_module("timm")

from .auto_lr import choose_base_lr
from .body import BodyInfo, TransferModel, create_timm_body, cut_classifier
from .callback import (Callback, CancelBatchException, CancelEpochException, CancelFitException,
                       CancelTrainException, CancelValidException)
from .checkpoint import CheckpointCallback, EarlyStopping, SaveModelCallback, TerminateOnNaN
from .compile import CompileCallback
from .data import DataLoaders
from .distributed import DistributedCallback, distributed, init_distributed, sync_batchnorm
from .divergence import DivergenceGuard
from .ema import EMA
from .export import export_learner, push_to_hub
from .export_format import InvalidExportError
from .feature_cache import FeatureCache
from .finetune import fine_tune
from .grad_clip import GradientClip
from .groups import body_groups, group_names, layer_groups
from .head import AdaptiveConcatPool2d, create_head, head_from_layers, projection_head
from .image_data import ImageDataLoaders
from .interpret import ClassificationInterpretation, show_results
from .learner import Learner
from .loggers import CSVLogger, TensorBoardCallback
from .loop import BaseLearner
from .losses import MultiLabelLoss, SupervisedContrastiveLoss
from .lr_finder import minimum, slide, steep, valley
from .lrs import expand_lrs, lrs_decay
from .metrics import (APScoreMulti, BalancedAccuracy, F1Score, F1ScoreMulti, Metric, RocAuc, WholeSetMetric, accuracy,
                      accuracy_multi, error_rate, top_k, top_k_accuracy)
from .mixup import CutMix, MixUp
from .onnx_export import to_onnx
from .optim import adamw
from .predictor import Predictor, load_learner
from .ranks import barrier, broadcast_object, is_rank_zero, on_rank_zero
from .recorder import ProgressCallback, Recorder
from .schedule import ParamScheduler, cos_anneal, fit_one_cycle, one_cycle_scheduler
from .seeds import set_seed
from .strategies import (FastaiFineTune, Freeze, FreezeUnfreeze, GradualUnfreezing, NoFreeze, Phase, Strategy,
                         UnfreezeMilestones)
from .tasks import MULTI_LABEL, REGRESSION, SINGLE_LABEL
from .tta import tta, tta_views
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
    "export_learner", "load_learner", "CompileCallback", "FeatureCache", "__version__", "DivergenceGuard", "set_seed",
    "APScoreMulti", "BalancedAccuracy", "F1Score", "F1ScoreMulti", "RocAuc", "WholeSetMetric", "accuracy_multi",
    "MultiLabelLoss", "ClassificationInterpretation", "show_results", "tta", "tta_views", "SINGLE_LABEL",
    "MULTI_LABEL", "REGRESSION",
    "EMA", "MixUp", "CutMix", "GradientClip", "CSVLogger", "TensorBoardCallback", "push_to_hub", "to_onnx",
]
