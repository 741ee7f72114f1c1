"""Feature caching for frozen epochs: a cached fit equals the uncached one, runs the body once, refuses what it
cannot replay exactly and says why, and puts everything back afterwards."""
import pytest
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from fastfreeze import Callback, DataLoaders, ImageDataLoaders, Learner, vision_learner
from fastfreeze.finetune.feature_cache import (FeatureCache, HeadOnFeatures, cache_blocker, choose_storage,
                                               dataset_augmentation, feature_cache_for)
from fastfreeze.data.image_data import ImageFolderDataset
from fastfreeze.data.preprocess import image_transform

from helpers import blobs, count_calls, mlp2, transfer_learner


# ------------------------------------------------------------------------------------------------ helpers


def images(n: int = 48, size: int = 32):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8), torch.arange(n) % 3


# ------------------------------------------------------------------------------------------ feature cache

def test_cached_frozen_fit_equals_uncached_and_runs_the_body_once():
    torch.manual_seed(123)
    plain = transfer_learner()
    plain_calls = count_calls(plain.model.body)
    plain.fit_one_cycle(3, 1e-2)

    torch.manual_seed(123)
    cache = FeatureCache(verbose=False)
    cached = transfer_learner(cbs=[cache])
    model, dls = cached.model, cached.dls
    head_before = [p.detach().clone() for p in cached.model.head.parameters()]
    body_before = {k: v.clone() for k, v in cached.model.body.state_dict().items()}
    cached_calls = count_calls(cached.model.body)
    cached.fit_one_cycle(3, 1e-2)

    # 40 training items in batches of 8 (5 batches), 24 validation items in batches of 16 (2 batches):
    # uncached, the body sees 3 epochs x (5 + 2) batches; cached, each item once (5 + 2 batches in order)
    assert len(plain_calls) == 3 * (5 + 2)
    assert cached_calls == [8] * 5 + [16, 8]
    assert cache.info["train_items"] == 40 and cache.info["valid_items"] == 24
    assert cache.info["bytes"] == (40 + 24) * (8 * 4 + 8)  # 8 float32 features + one int64 target per item
    # same batches, same order, same dropout draws in the head: the same training, step for step
    assert cached.recorder.losses == pytest.approx(plain.recorder.losses, abs=1e-6)
    for p, q, p0 in zip(plain.model.head.parameters(), cached.model.head.parameters(), head_before):
        assert torch.allclose(p, q, atol=1e-6)
        assert not torch.equal(q, p0)  # the head did train
    for k, v in cached.model.body.state_dict().items():
        assert torch.equal(v, body_before[k])  # eval mode: not even BatchNorm statistics moved
    # restored, and the shuffling stream goes on as after the uncached fit
    assert cached.model is model and cached.dls is dls
    assert not any(m.training for m in cached.model.modules())  # eval mode, as after the uncached fit
    assert torch.equal(cached.dls.train.generator.get_state(), plain.dls.train.generator.get_state())


def test_cached_vision_learner_bf16_matches_uncached():
    x, y = images()

    def learner(cbs=None):
        dls = ImageDataLoaders.from_tensors(x, y, valid_pct=0.25, bs=8, size=32, augment=False)
        torch.manual_seed(0)
        learn = vision_learner(dls, "test_resnet", pretrained=False, norm="frozen", precision="bf16",
                               progress=False, cbs=cbs)
        learn.freeze()
        return learn

    torch.manual_seed(1)
    plain = learner()
    plain.fit(2, 1e-2)
    torch.manual_seed(1)
    cache = FeatureCache(verbose=False)
    cached = learner([cache])
    cached.fit(2, 1e-2)
    assert cache.info["dtype"] == "torch.bfloat16"  # kept as autocast gave them: the head sees the same tensors
    assert cache.info["train_items"] == 36 and cache.info["valid_items"] == 12  # 48 items, valid_pct 0.25
    for p, q in zip(plain.model.head.parameters(), cached.model.head.parameters()):
        assert torch.allclose(p, q, atol=1e-5)
    assert cached.recorder.values[-1]["valid_loss"] == pytest.approx(plain.recorder.values[-1]["valid_loss"],
                                                                     abs=1e-5)


def test_cache_refuses_augmenting_data_and_says_why(capsys):
    x, y = images(24)
    dls = ImageDataLoaders.from_tensors(x, y, valid_pct=None, bs=8, size=32, augment=True)
    torch.manual_seed(0)
    learn = vision_learner(dls, "test_resnet", pretrained=False, norm="frozen", progress=False)
    learn.freeze()
    calls = count_calls(learn.model.body)
    cache = FeatureCache()
    learn.fit(2, 1e-3, cbs=cache)
    out = capsys.readouterr().out
    assert "not caching" in out and "augment=True" in out and "allow_augment=True" in out
    assert cache.info is None and len(calls) == 2 * 3  # uncached: the body ran in every batch of both epochs

    opted_in = FeatureCache(allow_augment=True)
    learn.fit(2, 1e-3, cbs=opted_in)
    assert "fixed to one draw" in capsys.readouterr().out
    assert opted_in.info["train_items"] == 24 and len(calls) == 6 + 3  # one pass of 3 batches for 2 epochs


def test_dataset_augmentation_detection():
    config = {"input_size": (3, 32, 32)}
    files = ImageFolderDataset(["a.png"], [0], image_transform(config, training=True))
    reason = dataset_augmentation(files)
    assert "RandomResizedCropAndInterpolation" in reason and "RandomHorizontalFlip" in reason
    assert dataset_augmentation(ImageFolderDataset(["a.png"], [0], image_transform(config, training=False))) is None
    assert dataset_augmentation(ImageFolderDataset(["a.png"], [0], image_transform(config, True, augment=False))) \
        is None
    tensors = TensorDataset(torch.zeros(4, 2), torch.zeros(4))
    assert dataset_augmentation(tensors) is None and dataset_augmentation(Subset(tensors, [0, 1])) is None

    class Custom(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return torch.zeros(2), 0
    assert "cannot tell" in dataset_augmentation(Custom())
    custom = Custom()
    custom.augment = False  # the protocol: a dataset may say so itself
    assert dataset_augmentation(custom) is None


def test_cache_blocker_reasons(capsys):
    assert cache_blocker(transfer_learner()) is None
    assert "norm='frozen'" in cache_blocker(transfer_learner(norm="train"))
    unfrozen = transfer_learner()
    unfrozen.unfreeze()
    assert "not frozen" in cache_blocker(unfrozen)
    x, y = blobs(16)
    plain_model = Learner(mlp2(), DataLoaders.from_tensors(x, y, bs=8), norm="frozen", progress=False)
    plain_model.freeze()
    assert "not a TransferModel" in cache_blocker(plain_model)
    listed = transfer_learner()
    listed.dls = DataLoaders([(torch.zeros(8, 4), torch.zeros(8, dtype=torch.long))])
    assert "not a torch DataLoader" in cache_blocker(listed)
    # a FeatureCache on an unfrozen fit stays silent: there is nothing to cache
    unfrozen.fit(1, 1e-3, cbs=FeatureCache())
    assert capsys.readouterr().out == ""


def test_cache_restored_after_an_interrupt_and_saves_the_whole_model(tmp_path):
    class Interrupt(Callback):
        def after_batch(self):
            raise KeyboardInterrupt

    learn = transfer_learner(cbs=[FeatureCache(verbose=False)])
    model, dls = learn.model, learn.dls
    with pytest.raises(KeyboardInterrupt):
        learn.fit(1, 1e-3, cbs=Interrupt())
    assert learn.model is model and learn.dls is dls
    stand_in = HeadOnFeatures(model)
    assert list(stand_in.state_dict()) == list(model.state_dict())  # learn.save inside a cached fit
    assert [id(p) for p in stand_in.parameters()] == [id(p) for p in model.head.parameters()]


def test_choose_storage():
    gib = 2**30
    cuda = torch.device("cuda")
    assert choose_storage(gib // 2, cuda, free_bytes=gib) == cuda  # 0.5 GiB of 1 GiB free: half, fits
    assert choose_storage(gib // 2 + 1, cuda, free_bytes=gib) == torch.device("cpu")
    assert choose_storage(gib // 2 + 1, cuda, max_gpu_fraction=0.9, free_bytes=gib) == cuda
    assert choose_storage(10 * gib, torch.device("cpu")) == torch.device("cpu")
    assert choose_storage(1, cuda, storage="cpu") == torch.device("cpu")


def test_feature_cache_for_fine_tune():
    learn = transfer_learner()
    assert feature_cache_for(learn, False, 5) == []
    assert feature_cache_for(learn, "auto", 1) == []  # one epoch: extraction costs what caching saves
    (auto,) = feature_cache_for(learn, "auto", 2)
    assert isinstance(auto, FeatureCache) and not auto.allow_augment
    (forced,) = feature_cache_for(learn, True, 1)
    assert forced.allow_augment
    learn.unfreeze()
    assert feature_cache_for(learn, True, 3) == []
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="cache_features"):
            feature_cache_for(learn, bad, 2)


# ------------------------------------------------------------------------------------------- precision


# ---------------------------------------------------------------------------------------- norm='frozen'


# ----------------------------------------------------------------------------------------------- compile
