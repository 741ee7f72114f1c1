"""fastfreeze: transfer learning for timm image models with layer groups and discriminative learning rates."""
import importlib
import warnings

with warnings.catch_warnings():
    # timm imports huggingface_hub, which imports tqdm.auto: in Jupyter without ipywidgets that prints "IProgress
    # not found" at the first import. fastfreeze's bars are fastprogress's, so the warning says nothing of use.
    warnings.filterwarnings("ignore", message="IProgress not found")
    importlib.import_module("timm")

from .callbacks.compile import CompileCallback
from .callbacks.distributed import DistributedCallback, distributed, init_distributed, sync_batchnorm
from .callbacks.ema import EMA
from .callbacks.loggers import CSVLogger, TensorBoardCallback
from .callbacks.mixup import CutMix, MixUp
from .callbacks.progressive_resize import ProgressiveResize
from .callbacks.tracker import EarlyStopping, SaveModelCallback
from .core.callback import (Callback, CancelBatchException, CancelEpochException, CancelFitException,
                            CancelTrainException, CancelValidException)
from .core.checkpoint import CheckpointCallback
from .core.dataloaders import DataLoaders
from .core.divergence import DivergenceGuard, TerminateOnNaN
from .core.grad_clip import GradientClip
from .core.layer_groups import group_names
from .core.loop import BaseLearner
from .core.losses import MultiLabelLoss, SupervisedContrastiveLoss
from .core.lrs import expand_lrs, lrs_decay
from .core.metrics import (APScoreMulti, BalancedAccuracy, F1Score, F1ScoreMulti, Metric, RocAuc, WholeSetMetric,
                           accuracy, accuracy_multi, error_rate, top_k, top_k_accuracy)
from .core.optim import adamw
from .core.progress import ProgressCallback
from .core.recorder import Recorder
from .core.tasks import MULTI_LABEL, REGRESSION, SINGLE_LABEL
from .data.image_data import ImageDataLoaders
from .finetune.auto_lr import choose_base_lr
from .finetune.feature_cache import FeatureCache
from .finetune.finetune import fine_tune
from .finetune.lora import LoRA, add_lora
from .finetune.lr_finder import minimum, slide, steep, valley
from .finetune.schedule import ParamScheduler, cos_anneal, fit_one_cycle, one_cycle_scheduler
from .finetune.strategies import (FastaiFineTune, Freeze, FreezeUnfreeze, GradualUnfreezing, NoFreeze, Phase, Strategy,
                                  UnfreezeMilestones)
from .inference.export import export_learner, push_to_hub
from .inference.export_format import InvalidExportError
from .inference.interpret import ClassificationInterpretation, show_results
from .inference.onnx_export import to_onnx
from .inference.predictor import Predictor, load_learner
from .inference.tta import tta, tta_views
from .learner import Learner
from .models.body import BodyInfo, TransferModel, create_timm_body, cut_classifier
from .models.groups import body_groups, layer_groups
from .models.head import AdaptiveConcatPool2d, create_head, head_from_layers, projection_head
from .models.weights import load_pretrained
from .utils.ranks import barrier, broadcast_object, is_rank_zero, on_rank_zero
from .utils.seeds import set_seed
from .version import __version__
from .vision import VisionLearner, vision_learner

__all__ = [
    "Callback", "CancelBatchException", "CancelEpochException", "CancelFitException", "CancelTrainException",
    "CancelValidException", "DataLoaders", "Learner", "BaseLearner", "Metric", "ParamScheduler", "ProgressCallback",
    "Recorder", "accuracy", "adamw", "cos_anneal", "error_rate", "expand_lrs", "fine_tune", "fit_one_cycle",
    "lrs_decay", "one_cycle_scheduler", "top_k", "top_k_accuracy",
    "valley", "minimum", "steep", "slide",
    "Strategy", "Phase", "FastaiFineTune", "Freeze", "NoFreeze", "FreezeUnfreeze", "UnfreezeMilestones",
    "GradualUnfreezing", "LoRA", "add_lora",
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
    "ProgressiveResize",
]
