"""fastfreeze: transfer learning for timm image models with layer groups and discriminative learning rates."""
from .callback import (Callback, CancelBatchException, CancelEpochException, CancelFitException,
                       CancelTrainException, CancelValidException, ProgressCallback, Recorder)
from .data import DataLoaders
from .learner import Learner, adamw
from .lr_finder import minimum, slide, steep, valley
from .lrs import expand_lrs, lrs_decay
from .metrics import Metric, accuracy, error_rate, top_k, top_k_accuracy
from .schedule import ParamScheduler, cos_anneal, fine_tune, fit_one_cycle, one_cycle_scheduler
from .strategies import (FastaiFineTune, Freeze, FreezeUnfreeze, GradualUnfreezing, NoFreeze, Phase, Strategy,
                         UnfreezeMilestones)

try:  # the version lives in settings.ini only; installed metadata carries it here
    from importlib.metadata import PackageNotFoundError, version as _version
    __version__ = _version("fastfreeze")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
    __version__ = "0+unknown"

__all__ = [
    "Callback", "CancelBatchException", "CancelEpochException", "CancelFitException", "CancelTrainException",
    "CancelValidException", "DataLoaders", "Learner", "Metric", "ParamScheduler", "ProgressCallback", "Recorder",
    "accuracy", "adamw", "cos_anneal", "error_rate", "expand_lrs", "fine_tune", "fit_one_cycle", "lrs_decay",
    "one_cycle_scheduler", "top_k", "top_k_accuracy",
    "valley", "minimum", "steep", "slide",
    "Strategy", "Phase", "FastaiFineTune", "Freeze", "NoFreeze", "FreezeUnfreeze", "UnfreezeMilestones",
    "GradualUnfreezing",
]
