"""ProgressiveResize: the sizes each phase and epoch trains at (read from the batches' shapes, against sizes
worked out by hand from docs/progressive-resizing.md's formula), validation at the final size, exact resume,
worker processes (persistent ones) seeing each change, and the feature cache only where the size is fixed."""
import numpy as np
import pytest
import torch

from fastfreeze import Callback, CheckpointCallback, DataLoaders, FeatureCache, ImageDataLoaders, ProgressiveResize
from helpers import KillAfterEpoch, blobs, noise_folder, same, state_of, tiny_learner


class BatchSizes(Callback):
    """The spatial size of every batch the model receives: `(phase, epoch, 'train' | 'valid', size)`."""
    order = 100

    def __init__(self):
        self.seen = []

    def before_batch(self):
        height, width = self.learn.xb[0].shape[-2:]
        assert height == width
        self.seen.append((self.learn.phase, self.learn.epoch, "train" if self.learn.training else "valid", height))

    def train_sizes(self):
        """One `(phase, epoch, size)` per training epoch (every batch of an epoch checked to share it)."""
        per_epoch = {}
        for phase, epoch, split, size in self.seen:
            if split == "train":
                per_epoch.setdefault((phase, epoch), set()).add(size)
        assert all(len(sizes) == 1 for sizes in per_epoch.values())
        return [(phase, epoch, sizes.pop()) for (phase, epoch), sizes in per_epoch.items()]

    def valid_sizes(self):
        return {size for _, _, split, size in self.seen if split == "valid"}


def digits_like(n=24, size=12, seed=0):
    g = np.random.default_rng(seed)
    return g.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % 3


def array_data(size=32, num_workers=0, augment=False):
    x, y = digits_like()
    return ImageDataLoaders.from_arrays(x, y, x[:6], y[:6], size=size, bs=8, seed=0, augment=augment,
                                        num_workers=num_workers)



# ------------------------------------------------------------------------------------------ the sizes
def test_fine_tune_trains_the_frozen_phase_at_start_and_grows_over_the_unfrozen_one():
    """freeze_epochs=2, epochs=3, 16 -> 32 by 8: the frozen phase at 16, 16; the unfrozen phase's 3 epochs at
    16 + 16 * t / 2 = 16, 24, 32; validation at 32 throughout; the data back at 32 afterwards."""
    learn = tiny_learner(array_data(32))
    probe = BatchSizes()
    learn.fine_tune(3, base_lr=1e-3, freeze_epochs=2, cache_features=False,
                    cbs=[ProgressiveResize(16, 32, multiple=8), probe])
    assert probe.train_sizes() == [("frozen", 0, 16), ("frozen", 1, 16),
                                   ("unfrozen", 0, 16), ("unfrozen", 1, 24), ("unfrozen", 2, 32)]
    assert probe.valid_sizes() == {32}
    assert learn.dls.current_train_size() == (32, 32)
    assert next(iter(learn.dls.train))[0].shape[-1] == 32


def test_rounding_to_the_multiple_and_end_defaulting_to_the_data_size():
    """64 -> 96 by 32 over 5 unfrozen epochs: 64 + 32 t / 4 = 64, 72, 80, 88, 96, to the nearest multiple of
    32 with halves up: 64, 64, 96, 96, 96 (72 = 2.25 x 32 -> 64; 80 = 2.5 x 32 -> 96)."""
    learn = tiny_learner(array_data(96))
    probe = BatchSizes()
    learn.fine_tune(5, base_lr=1e-3, freeze_epochs=1, cache_features=False, cbs=[ProgressiveResize(64), probe])
    assert [s for _, _, s in probe.train_sizes()] == [64, 64, 64, 96, 96, 96]


def test_steps_and_a_three_phase_strategy():
    """('unfreeze_milestones', ((1, 2), 1)) over 4 epochs: head-only [0, 1), the last of the 5 body groups [1, 2), all
    [2, 4). Growing epochs: 3 (t = 0, 1, 2). Linear 8 -> 32 by 8: 8, 20 -> 24 (2.5 x 8 rounds up), 32. With
    steps=2, stretch floor(2 t / 3) = 0, 0, 1: 8, 8, 32."""
    for resize, grown in ((ProgressiveResize(8, 32, multiple=8), [24, 32]),
                          (ProgressiveResize(8, 32, multiple=8, steps=2), [8, 32])):
        learn = tiny_learner(array_data(32))
        probe = BatchSizes()
        learn.fine_tune(4, base_lr=1e-3, strategy=("unfreeze_milestones", ((1, 2), 1)), cache_features=False,
                        cbs=[resize, probe])
        sizes = probe.train_sizes()
        assert [p for p, _, _ in sizes] == ["frozen", "unfrozen from group 4", "unfrozen", "unfrozen"]
        assert [s for _, _, s in sizes] == [8, 8] + grown
        assert resize.history == sizes  # what the callback says it did is what the model received


def test_a_plain_fit_grows_over_its_epochs_unless_it_trains_the_head_only():
    """fit_one_cycle(4) unfrozen, 8 -> 32 by 8: 8 + 24 t / 3 = 8, 16, 24, 32. A head-only fit stays at 8, or
    grows the same with grow_frozen=True."""
    cases = [(False, False, [8, 16, 24, 32]), (True, False, [8, 8, 8, 8]), (True, True, [8, 16, 24, 32])]
    for frozen, grow_frozen, expected in cases:
        learn = tiny_learner(array_data(32))
        learn.freeze() if frozen else learn.unfreeze()
        probe = BatchSizes()
        learn.fit_one_cycle(4, 1e-3, cbs=[ProgressiveResize(8, 32, multiple=8, grow_frozen=grow_frozen), probe])
        assert [s for _, _, s in probe.train_sizes()] == expected
        assert probe.valid_sizes() == {32}


def test_a_resized_batch_is_the_batch_of_data_built_at_that_size():
    """The pixels, not only the shape: the training batch made at 16 after set_train_size(16) is the batch of the
    same data built with size=16 (same order, same flips)."""
    resized, direct = array_data(32, augment=True), array_data(16, augment=True)
    list(resized.train), list(direct.train)  # epoch 0 at 32 and at 16: the epoch seeds move alike
    resized.set_train_size(16)
    for (a, ya), (b, yb) in zip(resized.train, direct.train):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    resized.set_train_size(None)
    assert resized.current_train_size() == (32, 32)


# ---------------------------------------------------------------------------------------- workers
def test_persistent_workers_see_each_size_arrays_and_files(tmp_path):
    """from_arrays(num_workers=2) and from_folder(num_workers=2) keep persistent worker processes started at the
    first epoch; a size set afterwards reaches them: the batches (random resized crops and flips included) are
    those of the data built at that size in the main process."""
    x, y = digits_like()
    arrays = ImageDataLoaders.from_arrays(x, y, size=32, bs=8, seed=0, augment=True, num_workers=2)
    arrays_16 = ImageDataLoaders.from_arrays(x, y, size=16, bs=8, seed=0, augment=True, num_workers=0)
    folder = noise_folder(tmp_path)
    files = ImageDataLoaders.from_folder(folder, size=24, bs=4, seed=0, num_workers=2)
    files_16 = ImageDataLoaders.from_folder(folder, size=16, bs=4, seed=0, num_workers=0)
    for dls, reference in ((arrays, arrays_16), (files, files_16)):
        assert dls.train.persistent_workers and dls.train.num_workers == 2
        first = [xb.shape[-1] for xb, _ in dls.train]  # starts the workers, which keep the dataset
        list(reference.train)
        assert set(first) == {dls.data_config["input_size"][-1]}
        dls.set_train_size(16)
        for (a, _), (b, _) in zip(dls.train, reference.train):
            assert a.shape[-1] == 16 and torch.equal(a, b)


def test_fine_tune_with_workers_sees_the_planned_sizes(tmp_path):
    folder = noise_folder(tmp_path)
    learn = tiny_learner(ImageDataLoaders.from_folder(folder, size=32, bs=4, seed=0, num_workers=2))
    probe = BatchSizes()
    learn.fine_tune(3, base_lr=1e-3, freeze_epochs=1, cbs=[ProgressiveResize(16, 32, multiple=8), probe])
    assert [s for _, _, s in probe.train_sizes()] == [16, 16, 24, 32]
    assert probe.valid_sizes() == {32}


# ----------------------------------------------------------------------------------------- resume
def test_resume_trains_each_epoch_at_the_uninterrupted_runs_size_and_ends_with_its_weights(tmp_path):
    """Killed after the first unfrozen epoch (at 16) of 16, 24, 32: the resumed run, in a new learner with other
    global seeds, trains at 24 then 32 and ends bit-identical to the uninterrupted run."""
    def run(path, cbs, seed=0, **kwargs):
        learn = tiny_learner(array_data(32, augment=True), path=path)
        torch.manual_seed(seed)
        learn.fine_tune(3, base_lr=1e-3, freeze_epochs=1, cache_features=False, cbs=cbs, **kwargs)
        return learn

    full_probe, full_resize = BatchSizes(), ProgressiveResize(16, 32, multiple=8)
    full = run(tmp_path / "full", [full_resize, full_probe])
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run", [ProgressiveResize(16, 32, multiple=8), CheckpointCallback(),
                               KillAfterEpoch(0, "unfrozen")])
    probe, resize = BatchSizes(), ProgressiveResize(16, 32, multiple=8)
    resumed = run(tmp_path / "run", [resize, probe], seed=5, resume_from="checkpoint")
    assert probe.train_sizes() == [("unfrozen", 1, 24), ("unfrozen", 2, 32)] == full_probe.train_sizes()[-2:]
    assert resize.history == full_resize.history == [("frozen", 0, 16), ("unfrozen", 0, 16), ("unfrozen", 1, 24),
                                                     ("unfrozen", 2, 32)]
    assert same(state_of(resumed.model), state_of(full.model))
    # other settings, or no ProgressiveResize, would not train at the run's sizes: refused
    with pytest.raises(ValueError, match=r"ProgressiveResize\(start=16, end=32, multiple=8.*resume with the same"):
        run(tmp_path / "run", [ProgressiveResize(8, 32, multiple=8)], resume_from="checkpoint")
    with pytest.raises(ValueError, match="progressive_resize"):
        run(tmp_path / "run", [], resume_from="checkpoint")


# ------------------------------------------------------------------------------------ feature cache
def body_inputs(learn):
    """The spatial size of every batch the body receives (cache extraction included)."""
    sizes = []
    learn.model.body.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[-1]))
    return sizes


def test_feature_cache_at_the_start_size_and_refused_where_the_size_changes(capsys):
    """A head-only fit at one size is cached at that size: the body runs once over the 24 training items at 16
    and the 6 validation items at 32, then never again. Growing within a head-only fit refuses the cache: the body
    runs on every batch, at 8, 16, 24, 32."""
    learn = tiny_learner(array_data(32), norm="frozen")
    learn.freeze()
    seen, cache = body_inputs(learn), FeatureCache()
    learn.fit_one_cycle(3, 1e-3, cbs=[ProgressiveResize(16, 32, multiple=8), cache])
    assert cache.info is not None and cache.info["train_items"] == 24
    assert seen == [16, 16, 16, 32]  # 3 training batches of 8, one validation batch of 6 (bs 16)

    learn = tiny_learner(array_data(32), norm="frozen")
    learn.freeze()
    seen, cache = body_inputs(learn), FeatureCache()
    learn.fit_one_cycle(4, 1e-3, cbs=[ProgressiveResize(8, 32, multiple=8, grow_frozen=True), cache])
    assert cache.info is None
    assert "ProgressiveResize changes the training input size" in capsys.readouterr().out
    assert seen == [8, 8, 8, 32, 16, 16, 16, 32, 24, 24, 24, 32, 32, 32, 32, 32]


def test_fine_tune_caches_its_frozen_phase_at_the_start_size():
    """cache_features='auto' with norm='frozen': the 2-epoch frozen phase is cached at 16 (the body runs once over
    the data), the unfrozen phase trains the body at 16, 32."""
    learn = tiny_learner(array_data(32), norm="frozen")
    seen = body_inputs(learn)
    learn.fine_tune(2, base_lr=1e-3, freeze_epochs=2, cbs=[ProgressiveResize(16, 32, multiple=8)])
    extraction, unfrozen = seen[:4], seen[4:]
    assert extraction == [16, 16, 16, 32]
    assert unfrozen == [16, 16, 16, 32, 32, 32, 32, 32]  # epoch 0 at 16 + validation, epoch 1 at 32 + validation


# ----------------------------------------------------------------------------------------- errors
def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="start=20 is not a multiple of multiple=8: .*pass start=24"):
        ProgressiveResize(20, 32, multiple=8)
    with pytest.raises(ValueError, match="start=64 must be at most end=32"):
        ProgressiveResize(64, 32)
    with pytest.raises(ValueError, match="steps must be None"):
        ProgressiveResize(32, 64, steps=1)
    learn = tiny_learner(array_data(32))
    with pytest.raises(ValueError, match="ends at 24 px, but the data is made at 32 px.*size=24"):
        learn.fit(1, cbs=ProgressiveResize(16, 24, multiple=8))
    x, y = blobs(16)
    from fastfreeze import Learner
    plain = Learner(torch.nn.Linear(4, 3), DataLoaders.from_tensors(x, y, x, y, bs=8), progress=False)
    with pytest.raises(TypeError, match="ImageDataLoaders.from_folder"):
        plain.fit(1, cbs=ProgressiveResize(16, 32, multiple=8))


def test_a_vit_that_takes_one_size_only_is_a_clear_error_and_a_dynamic_one_trains():
    """timm's ViTs check the input size (`strict_img_size`) unless built with dynamic_img_size=True."""
    from fastfreeze import vision_learner
    for dynamic in (False, True):
        torch.manual_seed(0)
        learn = vision_learner(array_data(32), "test_vit", pretrained=False, progress=False,
                               timm_kwargs={"img_size": 32, "dynamic_img_size": dynamic})
        probe = BatchSizes()
        if not dynamic:
            with pytest.raises(ValueError, match=r"takes \(32, 32\) inputs only.*\[16, 32\].*dynamic_img_size"):
                learn.fit(2, 1e-3, cbs=[ProgressiveResize(16, 32, multiple=16), probe])
            assert probe.seen == []  # refused before the first batch
        else:
            learn.fit(2, 1e-3, cbs=[ProgressiveResize(16, 32, multiple=16), probe])
            assert [s for _, _, s in probe.train_sizes()] == [16, 32]

