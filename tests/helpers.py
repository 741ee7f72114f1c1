"""Helpers the tests share: tiny models, synthetic data, recording callbacks, an independent one-cycle oracle,
learners built the same way every time, and the interrupt that checkpoint tests resume from.
(Fixtures are in conftest.py.)"""
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from fastfreeze import Callback, DataLoaders, ImageDataLoaders, Learner, TransferModel
from fastfreeze.inference.export_format import CONFIG_FILE, WEIGHTS_FILE


def blobs(n: int, n_classes: int = 3, dim: int = 4, seed: int = 0, spread: float = 0.5):
    """Gaussian blobs around well-separated centres: a separable classification task."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(n_classes, dim) * 4
    y = torch.arange(n) % n_classes
    x = centres[y] + spread * torch.randn(n, dim, generator=g)
    return x, y


def mlp3(dim: int = 4, hidden: int = 16, n_out: int = 3) -> nn.Sequential:
    """Three top-level children with parameters -> three layer groups by default; BatchNorm in the first two."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU()),
        nn.Sequential(nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU()),
        nn.Linear(hidden, n_out),
    )


def mlp2(dim: int = 4, hidden: int = 16, n_out: int = 3) -> nn.Sequential:
    """Two layer groups (body, head)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU()),
                         nn.Linear(hidden, n_out))


class FixedLogits(nn.Module):
    """Returns a stored row of logits for each item index: predictions chosen by hand."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, idx):
        return self.logits[idx.long()]


class RecordLrs(Callback):
    """Each training batch's lr of every param group."""

    def __init__(self):
        self.lrs = []

    def after_batch(self):
        if self.learn.training:
            self.lrs.append([g["lr"] for g in self.learn.opt.param_groups])


class RecordParams(Callback):
    """A user callback reading the optimizer's param groups after each training step."""

    def __init__(self):
        self.lrs, self.moms = [], []

    def after_batch(self):
        if self.learn.training:
            self.lrs.append([g["lr"] for g in self.learn.opt.param_groups])
            self.moms.append([g["betas"][0] for g in self.learn.opt.param_groups])


def one_cycle_oracle(n_steps, lr, div=25.0, div_final=1e5, pct_start=0.25, moms=(0.95, 0.85, 0.95)):
    """docs/schedules.md (one-cycle), written out independently of fastfreeze."""
    lrs, ms = [], []
    for t in range(n_steps):
        pos = t / n_steps
        if pos < pct_start:
            q = pos / pct_start
            s_lr, e_lr, s_m, e_m = lr / div, lr, moms[0], moms[1]
        else:
            q = (pos - pct_start) / (1 - pct_start)
            s_lr, e_lr, s_m, e_m = lr, lr / div_final, moms[1], moms[2]
        lrs.append(s_lr + (1 + math.cos(math.pi * (1 - q))) * (e_lr - s_lr) / 2)
        ms.append(s_m + (1 + math.cos(math.pi * (1 - q))) * (e_m - s_m) / 2)
    return np.array(lrs), np.array(ms)


def transfer_learner(cbs=None, norm="frozen", n_train=40, bs=8, **kwargs) -> Learner:
    """A TransferModel whose body has BatchNorm and Dropout (so eval mode matters) and whose head has
    BatchNorm and Dropout (so the global RNG stream matters); the body frozen."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 8))
    head = nn.Sequential(nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    x, y = blobs(n_train)
    xv, yv = blobs(24, seed=1)
    dls = DataLoaders.from_tensors(x, y, xv, yv, bs=bs, seed=0)
    learn = Learner(TransferModel(body, head), dls, splitter=lambda m: [m.body, m.head], norm=norm,
                    progress=False, cbs=cbs, **kwargs)
    learn.freeze()
    return learn


def count_calls(module: nn.Module) -> list:
    calls = []
    module.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    return calls


VOCAB = ["ant", "bee", "cat"]


def array_dls(size=32, n=24):
    g = np.random.default_rng(0)
    x = g.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    y = np.arange(n) % 3
    return ImageDataLoaders.from_arrays(x, y, x[:6], y[:6], size=size, bs=8, vocab=VOCAB)


def copy_export(src: Path, dst: Path, config_edit=None, weights_edit=None, keep_metadata=True) -> Path:
    """A copy of the export `src` in `dst`, its config and weights edited by the functions given; the weights keep
    their metadata (the exported config's checksum) unless `keep_metadata=False` (an export of format 1 or 2)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    dst.mkdir()
    config = json.loads((src / CONFIG_FILE).read_text())
    if config_edit:
        config_edit(config)
    (dst / CONFIG_FILE).write_text(json.dumps(config))
    weights = load_file(str(src / WEIGHTS_FILE))
    with safe_open(str(src / WEIGHTS_FILE), framework="pt") as f:
        metadata = f.metadata() if keep_metadata else None
    if weights_edit:
        weights_edit(weights)
    save_file(weights, str(dst / WEIGHTS_FILE), metadata=metadata)
    return dst


def make(model, dls):
    """A Learner without progress bars."""
    return Learner(model, dls, progress=False)


def snapshot(params):
    """Copies of the tensors in `params`."""
    return [p.detach().clone() for p in params]


def dropout_mlp() -> nn.Sequential:
    """Two layer groups; Dropout makes every step draw from torch's global RNG."""
    return nn.Sequential(nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3)),
                         nn.Linear(16, 3))


def make_learner(tmp_path, seed: int = 0, **kwargs) -> Learner:
    """The same architecture and data every time; shuffling from the DataLoader's own seeded generator.
    `seed` sets the initial weights and the global RNG (a resumed run must not depend on either)."""
    x, y = blobs(40)
    xv, yv = blobs(24, seed=1)
    dls = DataLoaders.from_tensors(x, y, xv, yv, bs=8, seed=0)  # 5 batches per epoch
    torch.manual_seed(seed)
    return Learner(dropout_mlp(), dls, path=tmp_path, progress=False, **kwargs)


class KillAfterEpoch(Callback):
    """Ctrl-C right after epoch `epoch` of the fit labelled `phase` (any fit when None), after that epoch's
    checkpoint is written (`CheckpointCallback`, order 61)."""
    order = 100

    def __init__(self, epoch: int = 0, phase=None):
        self.epoch, self.phase = epoch, phase

    def after_epoch(self):
        if self.learn.epoch == self.epoch and self.phase in (None, self.learn.phase):
            raise KeyboardInterrupt


def tiny_learner(dls, **kwargs) -> Learner:
    """`vision_learner` on timm's tiny `test_resnet`, without weights, its head drawn from seed 0."""
    from fastfreeze import vision_learner
    torch.manual_seed(0)
    return vision_learner(dls, "test_resnet", pretrained=False, progress=False, **kwargs)


def state_of(module: nn.Module) -> dict:
    """A copy of `module`'s state dict."""
    return {k: v.clone() for k, v in module.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    """Two state dicts with the same keys and bit-identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def grey_class_folders(root: Path, classes=("dark", "light"), levels=(40, 210), n_train: int = 8, n_valid: int = 4,
                       noise: float = 10, shape=(12, 12, 3), valid_level=None) -> Path:
    """`root/{train,valid}/<class>/<i>.png`: per class (paired with its grey level in `levels`), `n_train` and
    `n_valid` images of that level plus Gaussian noise of std `noise`, clipped to 0-255, drawn in that order from
    one generator seeded 0. `valid_level`: every validation image drawn around that level instead, whatever its
    class (a model's predictions on them are borderline)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("valid", n_valid)):
        for c, level in zip(classes, levels):
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                mean = valid_level if split == "valid" and valid_level is not None else level
                pixels = np.clip(mean + rng.normal(0, noise, shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def noise_folder(root: Path, per_class: int = 6) -> Path:
    """Two classes ('a', 'b') of random-noise images (40x48), `per_class` training and 2 validation images each,
    so every random crop, flip or resize shows in the pixels."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("valid", 2)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root
