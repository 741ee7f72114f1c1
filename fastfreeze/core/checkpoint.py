"""Checkpoints: what one holds, its file format, writing it and resuming a fit from it exactly.

A checkpoint is `learn.state_dict()` (written by `save_checkpoint`, bound as `learn.save_checkpoint`): the
model, the optimizer (moments and hyper-parameters), the GradScaler, the loop state (phase label, epochs done of
how many, training batch and optimizer step, `accum_steps`, the freeze state) with the state features register
(`BaseLearner.extra_state`: the `fine_tune` phase and its base_lr), the Recorder's history and smoothing state,
the state of callbacks that keep one (an `EMA`'s average), the torch/CUDA/NumPy/Python random states
(`rng_states`) and the state of the training DataLoader's shuffling generator. `CheckpointCallback` writes one
after every epoch; `fit`, `fit_one_cycle` and `fine_tune` take `resume_from=` and go on where it stopped
(`resume`), with the same weights as a run that was never interrupted. Exact resume also needs the same data in
the same order: a DataLoader with `persistent_workers=True` keeps its workers' random state out of reach, so
random augmentation in workers is reproduced only for data that seeds each item from its epoch and index
(`ImageDataLoaders`, utils/seeds.py), or with `num_workers=0` or non-persistent workers; a resume that cannot be
exact warns once (docs/reproducibility.md).

Files are written through `utils.files.write_file` (a temporary name, then renamed; rank 0 only), so an
interrupt never leaves a half-written file, and read with `utils.files.load_torch`
(`torch.load(weights_only=True)`): no code is unpickled, and a damaged file is an error naming it.
"""
from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch

from ..utils.checks import check_int
from ..utils.files import PathLike, WriteError, load_torch, save_torch
from ..utils.ranks import batches_per_epoch
from ..utils.seeds import resume_warning
from ..utils.warn import warn_once
from .callback import Callback
from .dataloaders import loader_generators

if TYPE_CHECKING:  # pragma: no cover
    from .loop import BaseLearner

CHECKPOINT_FORMAT = "fastfreeze-checkpoint"
CHECKPOINT_VERSION = 3  # 2: the loop state in one dict, the Recorder's smoothing state; 3: optimizer steps, accumulation, callback states


def rng_states(train_dl: Any) -> dict[str, Any]:
    """torch (CPU and CUDA), NumPy and Python random states and the generators `train_dl` shuffles with, as
    tensors and plain types (loadable with `weights_only=True`)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": version, "state": list(py_state), "gauss_next": gauss_next},
            "loaders": [g.get_state() for g in loader_generators(train_dl)]}


def set_rng_states(train_dl: Any, states: dict[str, Any]) -> None:
    """Put back what `rng_states` recorded."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    np_state = states["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    py = states["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    generators = loader_generators(train_dl)
    if len(generators) != len(states["loaders"]):
        raise ValueError(f"the training DataLoader draws its order from {len(generators)} generator(s), but the "
                         f"saved state recorded {len(states['loaders'])}: resume with the same kind of DataLoaders")
    for g, state in zip(generators, states["loaders"]):
        g.set_state(state)



def read_checkpoint(file: PathLike) -> dict[str, Any]:
    """Load a checkpoint written by `learn.save_checkpoint` (on the CPU, `load_torch`) and check its format."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"no checkpoint at {file}: check the name, or `learn.path`/`model_dir` "
                                "(CheckpointCallback writes models/checkpoint.pth by default)")
    state = load_torch(file)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{file} is not a fastfreeze checkpoint (written by learn.save_checkpoint or "
                         "CheckpointCallback); a file written by learn.save loads with learn.load")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{file} is a checkpoint of format version {state.get('version')!r}; this fastfreeze "
                         f"reads version {CHECKPOINT_VERSION}")
    return state


def save_checkpoint(learn: "BaseLearner", name: Union[str, Path] = "checkpoint") -> Path:
    """Everything needed to resume the current fit exactly (`state_dict`) in `path/model_dir/name.pth`,
    written atomically from rank 0; the current epoch counts as done (call it in `after_epoch`, as
    `CheckpointCallback` does, or between fits). Resume with `fit`/`fit_one_cycle`/`fine_tune(...,
    resume_from=name)` and the same arguments."""
    n_batches = batches_per_epoch(learn.dls.train)  # this process's share under DDP
    done = min(learn.epoch + 1, learn.n_epoch)
    state = learn.state_dict()
    state["loop"].update(start_epoch=done, epoch=done, train_iter=done * n_batches, training=False,
                         step_iter=done * learn.steps_per_epoch(n_batches))
    state.update(format=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, n_batches=n_batches,
                 n_groups=learn.n_groups)
    return save_torch(state, learn.file_path(name), "the checkpoint")


def resume(learn: "BaseLearner", file: Path, n_epoch: int) -> int:
    """Restore a checkpoint of this same fit (`n_epoch` epochs); return the epochs it had done."""
    state = read_checkpoint(file)
    loop = state["loop"]
    if loop["n_epoch"] != n_epoch:
        raise ValueError(f"{file} was written during a fit of {loop['n_epoch']} epochs ({loop['phase']!r}), not "
                         f"{n_epoch}: resume with the same call and arguments, or use learn.load({str(file)!r}) "
                         "to load its weights and optimizer only")
    if state["n_groups"] != learn.n_groups:
        raise ValueError(f"{file} was written by a learner with {state['n_groups']} layer groups; this one has "
                         f"{learn.n_groups}: build the learner as before")
    if loop["accum_steps"] != learn.accum_steps:
        raise ValueError(f"{file} was written during a fit with accum_steps={loop['accum_steps']}, not "
                         f"{learn.accum_steps}: resume with the same call and arguments")
    if state["n_batches"] != batches_per_epoch(learn.dls.train):
        raise ValueError(f"{file} was written with {state['n_batches']} training batches per epoch; the data now "
                         f"gives {batches_per_epoch(learn.dls.train)}: resume on the same data and batch size")
    driver = next((name for name in learn.extra_state if getattr(learn, name) is not None), None)
    if driver is not None and learn.frozen_groups != loop["frozen_groups"]:  # a feature (fine_tune) set the freeze state
        raise ValueError(f"{file} was written with {loop['frozen_groups']} frozen layer groups, but this "
                         f"{driver.removesuffix('_state')} phase freezes {learn.frozen_groups}: resume with the same "
                         "strategy and arguments")
    # the smoothed loss goes on only if this fit does: one already complete leaves the next fit to restart it
    learn.load_state_dict(state, resume=loop["start_epoch"] < n_epoch, source=str(file))
    inexact = resume_warning(learn.dls.train)
    if inexact is not None:
        warn_once(f"resuming from {file}: {inexact}")
    return loop["start_epoch"]


class CheckpointCallback(Callback):
    """Write a resumable checkpoint (`learn.save_checkpoint(fname)`, by default `models/checkpoint.pth`)
    after every `every` epochs and after the last epoch of each fit. The file is overwritten each time.
    Resume with `learn.fit_one_cycle(..., resume_from=fname)` (or `fit`/`fine_tune`, with the same arguments).
    A checkpoint the disk or the folder refuses (full, not writable: `utils.files.WriteError`) is a warning saying
    so, and training goes on; the previous checkpoint file is kept."""
    order = 61  # after the Recorder (50) has the epoch's row and the progress table (60) printed it
    learn: "BaseLearner"

    def __init__(self, fname: Union[str, Path] = "checkpoint", every: int = 1):
        check_int(every, "every", unit="epochs between checkpoints")
        self.fname, self.every = fname, every

    def after_epoch(self) -> None:
        done = self.learn.epoch + 1
        if done % self.every == 0 or done == self.learn.n_epoch:
            try:
                self.learn.save_checkpoint(self.fname)
            except WriteError as e:  # the disk is full or the folder not writable: the fit itself can go on
                resume = ("a resume would start from the previous checkpoint, which is kept"
                          if self.learn.file_path(self.fname).exists() else "no checkpoint is on disk to resume from")
                warnings.warn(f"the checkpoint after epoch {done} of {self.learn.phase!r} was not written; training "
                              f"goes on, and {resume}. {e}", stacklevel=2)
