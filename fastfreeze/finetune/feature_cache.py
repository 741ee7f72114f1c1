"""Feature caching for frozen epochs: when the whole body is frozen and in eval mode, its output for a
given item is the same in every epoch, so compute it once and train the head on it.

`FeatureCache()` is a callback (pass it in `cbs` of `fit`, `fit_one_cycle` or the Learner). In `before_fit`,
if the fit can be cached (see `cache_blocker`), it runs the body once over the training and validation
datasets (eval mode, no gradients, autocast as the learner trains), then for this fit only:
- `learn.model` becomes `HeadOnFeatures(model)`: the head, fed with the cached features;
- `learn.dls` becomes a copy whose loaders yield `(features, target)` batches. They reuse the original
  loaders' batch samplers and generators, so the batches hold the same items in the same order as the
  uncached fit would, and the shuffling stream goes on afterwards as if the fit had not been cached
  (exactly so when the loader has no persistent workers).
`after_fit` (which the Learner runs after an interrupt too) puts both back and frees the features.

When the cache is exact: the body is in eval mode in a frozen fit under `norm='frozen'` (or
'recalibrate'), so its output depends on the input only, and the cached head sees the very tensors
(dtype included: features are kept in the dtype autocast gives) the uncached one would. The training
items must be deterministic too: data that augments at random is never cached unless asked
(`allow_augment=True`: one fixed draw of the augmentation is then cached for the whole fit). A fit whose
training size changes from epoch to epoch (a callback with `changes_input_size`, `ProgressiveResize`) is never
cached; one at a single size is cached at that size (a callback that sets the size in `before_fit` runs before
this one, order < -20).

Cost: the extraction is one forward pass of the body over the data, which is what one uncached frozen
epoch costs under `norm='frozen'`; every further frozen epoch then costs the head only. So caching pays
from the second frozen epoch on, and is neutral for one.

Where the features live: on the GPU when they take at most `max_gpu_fraction` of its free memory,
else in CPU memory, each batch then pinned by the DataLoader for a non-blocking copy.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Sequence
from typing import Any, Optional, Union

import torch
import torch.nn as nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, IterableDataset, Subset, TensorDataset

from ..core.callback import Callback
from ..core.dataloaders import whole_batch
from ..core.loop import BaseLearner
from ..models.body import TransferModel, transfer_model_problem
from ..utils.seeds import batch_keys

# Transforms (torchvision's and timm's) that map an item to the same output every time. Any other
# transform in a dataset's `transform` counts as possibly random.
DETERMINISTIC_TRANSFORMS = frozenset({
    "Compose", "Resize", "CenterCrop", "ResizeKeepRatio", "CenterCropOrPad", "Pad", "Grayscale",
    "ToTensor", "MaybeToTensor", "PILToTensor", "MaybePILToTensor", "ToNumpy", "ToPILImage",
    "ToImage", "ToPureTensor", "ToDtype", "ConvertImageDtype", "Normalize",
})
CACHE_FEATURES = ("auto", True, False)


# ------------------------------------------------------------------------------------------------
# can this fit be cached?
# ------------------------------------------------------------------------------------------------
def body_is_frozen(learn: BaseLearner) -> bool:
    """True when `learn.model` is a `TransferModel` whose body parameters all lie in frozen layer groups."""
    if not isinstance(learn.model, TransferModel):
        return False
    frozen = learn.frozen_param_ids()
    body_params = list(learn.model.body.parameters())
    return bool(body_params) and all(id(p) in frozen for p in body_params)


def transform_randomness(transform: Any) -> list[str]:
    """Names of the transforms in `transform` (a torchvision/timm `Compose` or a single transform) that are
    not known to be deterministic; empty when every one is."""
    if transform is None:
        return []
    inner = getattr(transform, "transforms", None)
    if isinstance(inner, (list, tuple)):
        return [name for t in inner for name in transform_randomness(t)]
    name = type(transform).__name__
    return [] if name in DETERMINISTIC_TRANSFORMS else [name]


def dataset_augmentation(ds: Any) -> Optional[str]:
    """Why the items of `ds` may differ from one epoch to the next; None when they are known not to.

    Known: a dataset with an `augment` attribute (fastfreeze's `ArrayImageDataset`, or yours) says so
    itself; a plain `TensorDataset` never augments; a dataset with a `transform` attribute (image
    folders, torchvision datasets) augments when a transform is not one of `DETERMINISTIC_TRANSFORMS`.
    Anything else is unknown, and unknown counts as possibly augmenting."""
    if isinstance(ds, Subset):
        return dataset_augmentation(ds.dataset)
    if isinstance(ds, ConcatDataset):
        return next((r for r in map(dataset_augmentation, ds.datasets) if r is not None), None)
    name = type(ds).__name__
    if hasattr(ds, "augment"):
        return f"{name}.augment={ds.augment!r} (random augmentation)" if ds.augment else None
    if type(ds) is TensorDataset:
        return None
    if hasattr(ds, "transform"):
        random = transform_randomness(ds.transform)
        return f"the {name} transform includes {', '.join(random)}" if random else None
    return (f"cannot tell whether {name} augments (give the dataset an `augment` attribute saying whether "
            "it does)")


def _loader_problem(dl: Any, which: str) -> Optional[str]:
    """Why `dl` cannot be replayed over cached features (None when it can)."""
    if not isinstance(dl, DataLoader):
        return f"dls.{which} is a {type(dl).__name__}, not a torch DataLoader, so its order cannot be replayed"
    if isinstance(dl.dataset, IterableDataset):
        return f"dls.{which} reads an IterableDataset: items have no index to cache features under"
    if dl.batch_sampler is None:
        return f"dls.{which} has automatic batching turned off (batch_size=None)"
    return None


def cache_blocker(learn: BaseLearner, allow_augment: bool = False) -> Optional[str]:
    """Why this learner's next fit cannot train its head on cached body features; None when it can."""
    not_transfer = transfer_model_problem(learn.model)
    if not_transfer is not None:
        return not_transfer
    if not body_is_frozen(learn):
        return "the body is not frozen (call learn.freeze() first)"
    if learn.norm == "train":
        return ("norm='train' trains the body's normalization layers in a frozen fit, so its features change; "
                "create the Learner with norm='frozen' to cache them")
    mixing = [type(cb).__name__ for cb in learn.cbs if getattr(cb, "mixes_inputs", False)]
    if mixing:  # a callback that mixes the images of each batch (MixUp, CutMix): features cannot be mixed instead
        return f"{mixing[0]} mixes the images of every training batch, which cached features cannot reproduce"
    resizing = [type(cb).__name__ for cb in learn.cbs if getattr(cb, "changes_input_size", False)]
    if resizing:  # a callback that changes the training size within this fit (ProgressiveResize)
        return (f"{resizing[0]} changes the training input size during this fit, and features cached at one size "
                "cannot stand for items made at another")
    for which in ("train", "valid"):
        dl = getattr(learn.dls, which)
        if dl is None:
            continue
        problem = _loader_problem(dl, which)
        if problem is not None:
            return problem
        augmentation = dataset_augmentation(dl.dataset)
        if augmentation is not None and not allow_augment:
            return (f"dls.{which} may augment at random ({augmentation}); build the data without augmentation "
                    "(e.g. augment=False), or pass allow_augment=True (cache_features=True) to train on one "
                    "fixed draw of it")
    return None


# ------------------------------------------------------------------------------------------------
# computing and serving features
# ------------------------------------------------------------------------------------------------
def choose_storage(nbytes: int, device: torch.device, storage: str = "auto", max_gpu_fraction: float = 0.5,
                   free_bytes: Optional[int] = None) -> torch.device:
    """Where `nbytes` of features go: `storage` when given ('cpu', 'cuda'...); with 'auto', the learner's
    GPU when they take at most `max_gpu_fraction` of its free memory (`free_bytes`, measured when None),
    else the CPU. A CPU learner keeps them on the CPU."""
    if storage != "auto":
        return torch.device(storage)
    if device.type != "cuda":
        return device
    if free_bytes is None:
        free_bytes, _ = torch.cuda.mem_get_info(device)
    return device if nbytes <= max_gpu_fraction * free_bytes else torch.device("cpu")


@torch.no_grad()
def body_features(learn: BaseLearner, dl: Iterable, max_items: Optional[int] = None, storage: str = "auto",
                  max_gpu_fraction: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """`(features, targets)` of the items `dl` yields, in the order it yields them, up to `max_items` (default:
    all of `dl.dataset`): the frozen body's output in eval mode, without gradients, under the learner's
    autocast (features keep the dtype it gives), stored where `choose_storage` says. The one place the
    body's features are computed, for the feature cache and for `base_lr='auto'`."""
    body = learn.model.body
    sizes = [n for n in (max_items, len(dl.dataset) if hasattr(dl, "dataset") else None) if n is not None]
    if not sizes:
        raise TypeError("body_features needs max_items for a loader without a dataset")
    n = min(sizes)
    features: Optional[torch.Tensor] = None
    targets: Optional[torch.Tensor] = None
    filled = 0
    was_training = body.training
    body.eval()
    try:
        for batch in dl:
            xb, yb = learn.to_device(batch)
            if len(xb) != 1:
                raise ValueError(f"body features need (x, y) batches; these have {len(xb)} inputs")
            if not isinstance(yb[0], torch.Tensor):
                raise TypeError(f"body features need tensor targets, got {type(yb[0]).__name__}")
            with learn.autocast():
                out = body(xb[0])
            if features is None:
                item_bytes = out[0].numel() * out.element_size() + yb[0][0].numel() * yb[0].element_size()
                where = choose_storage(n * item_bytes, learn.device, storage, max_gpu_fraction)
                features = torch.empty((n, *out.shape[1:]), dtype=out.dtype, device=where)
                targets = torch.empty((n, *yb[0].shape[1:]), dtype=yb[0].dtype, device=where)
            take = min(len(out), n - filled)
            features[filled:filled + take] = out[:take]
            targets[filled:filled + take] = yb[0][:take]
            filled += take
            if filled >= n:
                break
    finally:
        body.train(was_training)
    if features is None or targets is None:
        raise ValueError("computing body features needs data, and the loader yielded no batch")
    return features[:filled], targets[:filled]


def extract_features(learn: BaseLearner, dl: DataLoader, storage: str = "auto",
                     max_gpu_fraction: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """`body_features` of every item of `dl.dataset`, in dataset order (what the cache holds). The items are
    read by a loader like `dl` (same batch size, collate function and workers) with a generator of its own,
    so neither `dl`'s shuffling stream nor the global RNG is touched."""
    reader = DataLoader(dl.dataset, batch_size=dl.batch_size or 64, shuffle=False, num_workers=dl.num_workers,
                        collate_fn=dl.collate_fn, pin_memory=dl.pin_memory, worker_init_fn=dl.worker_init_fn,
                        generator=torch.Generator())
    features, targets = body_features(learn, reader, storage=storage, max_gpu_fraction=max_gpu_fraction)
    if len(features) != len(dl.dataset):
        raise RuntimeError(f"reading {type(dl.dataset).__name__} in order gave {len(features)} items, but it has "
                           f"{len(dl.dataset)}")
    return features, targets


class FeatureDataset(Dataset):
    """Cached `(features, targets)`; a whole batch is gathered with one indexing operation."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor):
        self.features, self.targets = features, targets

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[i], self.targets[i]

    def __getitems__(self, keys: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of `keys`: indices, or the `(index, epoch_seed)` keys of the loader whose batch sampler this
        one shares (cached features draw nothing, so the seed is not used)."""
        indices, _ = batch_keys(keys)
        index = torch.as_tensor(indices, dtype=torch.long, device=self.features.device)
        return self.features[index], self.targets[index]


def feature_loader(dl: DataLoader, features: torch.Tensor, targets: torch.Tensor,
                   pin_memory: bool = False) -> DataLoader:
    """A loader over cached features that yields the items `dl` would, in the order it would: it shares
    `dl`'s batch sampler and generator."""
    return DataLoader(FeatureDataset(features, targets), batch_sampler=dl.batch_sampler, generator=dl.generator,
                      collate_fn=whole_batch, pin_memory=pin_memory)


class HeadOnFeatures(nn.Module):
    """Stands in for a `TransferModel` while its head trains on cached body features.

    `forward` is the head's. Only the head is a submodule (so `train()`/`eval()` and `parameters()` see
    the head alone and the body stays in eval mode), but `state_dict`/`load_state_dict` act on the whole
    model, so `learn.save` during a cached fit writes a complete checkpoint."""

    def __init__(self, model: TransferModel):
        super().__init__()
        self.head = model.head
        object.__setattr__(self, "full_model", model)  # a plain attribute, not a submodule (see above)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.full_model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self.full_model.load_state_dict(state_dict, strict=strict, assign=assign)


# ------------------------------------------------------------------------------------------------
# the callback
# ------------------------------------------------------------------------------------------------
class FeatureCache(Callback):
    """Train the head on cached body features during a fit whose body is entirely frozen (module docstring).

    Args:
        allow_augment: cache even when the training data may augment at random (one fixed draw is cached).
        storage: 'auto' (GPU if the features fit in `max_gpu_fraction` of its free memory, else CPU),
            'cpu', or a device.
        verbose: print one line saying what was cached, or why nothing was although the body is frozen.

    After a cached fit, `self.info` holds the item counts, bytes, storage device and extraction seconds
    (None when the fit was not cached)."""
    order = -20  # before schedulers and the Recorder read len(dls.train), and before CompileCallback

    def __init__(self, allow_augment: bool = False, storage: str = "auto", max_gpu_fraction: float = 0.5,
                 verbose: bool = True):
        if not 0 < max_gpu_fraction <= 1:
            raise ValueError(f"max_gpu_fraction must be in (0, 1], got {max_gpu_fraction}")
        self.allow_augment, self.storage, self.max_gpu_fraction = allow_augment, storage, max_gpu_fraction
        self.verbose = verbose
        self.info: Optional[dict[str, Any]] = None
        self._saved: Optional[tuple[nn.Module, Any]] = None

    def _say(self, message: str) -> None:
        if self.verbose:
            print(message)

    def before_fit(self) -> None:
        learn = self.learn
        self.info, self._saved = None, None
        if not body_is_frozen(learn):  # an unfrozen fit has no fixed features: nothing to say
            return
        reason = cache_blocker(learn, self.allow_augment)
        if reason is not None:
            self._say(f"FeatureCache: not caching body features: {reason}")
            return
        start = time.perf_counter()
        train = extract_features(learn, learn.dls.train, self.storage, self.max_gpu_fraction)
        valid = (extract_features(learn, learn.dls.valid, self.storage, self.max_gpu_fraction)
                 if learn.dls.valid is not None else None)
        stored_on = train[0].device
        pin = learn.device.type == "cuda" and stored_on.type == "cpu"
        dls = copy.copy(learn.dls)  # keeps vocab, c, data_config and any subclass attributes
        dls.train = feature_loader(learn.dls.train, *train, pin_memory=pin)
        dls.valid = feature_loader(learn.dls.valid, *valid, pin_memory=pin) if valid is not None else None
        nbytes = sum(t.numel() * t.element_size() for pair in (train, valid) if pair is not None for t in pair)
        self.info = {"train_items": len(train[0]), "valid_items": len(valid[0]) if valid is not None else 0,
                     "bytes": nbytes, "device": str(stored_on), "seconds": time.perf_counter() - start,
                     "feature_shape": tuple(train[0].shape[1:]), "dtype": str(train[0].dtype)}
        self._saved = (learn.model, learn.dls)
        learn.model, learn.dls = HeadOnFeatures(learn.model), dls
        augments = dataset_augmentation(self._saved[1].train.dataset) is not None
        fixed = " (any random augmentation fixed to one draw)" if augments else ""
        self._say(f"FeatureCache: training the head on cached body features{fixed}: {self.info['train_items']} "
                  f"train + {self.info['valid_items']} valid items, {nbytes / 2**20:.1f} MiB on {stored_on}, "
                  f"computed in {self.info['seconds']:.1f} s")

    def after_fit(self) -> None:
        if self._saved is None:
            return
        self.learn.model, self.learn.dls = self._saved
        self.learn.model.eval()  # as the Learner leaves the model after any fit
        self._saved = None


def feature_cache_for(learn: BaseLearner, cache_features: Union[str, bool], n_epoch: int,
                      verbose: bool = True) -> list[Callback]:
    """The callbacks `fine_tune` adds to one phase for `cache_features`:
    False: none. True: `FeatureCache(allow_augment=True)` (the user accepts one fixed draw of augmentation).
    'auto': `FeatureCache()` for a phase of at least 2 epochs whose body is frozen (with one epoch the
    extraction costs what it saves); it caches when `cache_blocker` finds nothing, else says why."""
    if cache_features not in CACHE_FEATURES or not isinstance(cache_features, (str, bool)):
        raise ValueError(f"cache_features must be 'auto', True or False, got {cache_features!r}")
    if cache_features is False or not body_is_frozen(learn):
        return []
    if cache_features is True:
        return [FeatureCache(allow_augment=True, verbose=verbose)]
    return [FeatureCache(verbose=verbose)] if n_epoch >= 2 else []
