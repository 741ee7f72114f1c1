"""vision_learner: timm bodies in layer groups, heads, pretrained files, image prediction."""
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from PIL import Image

from helpers import RecordLrs
from fastfreeze.data.image_data import ImageDataLoaders
from fastfreeze.core.metrics import accuracy
from fastfreeze.vision import vision_learner

# (architecture, timm kwargs) from ten families; tiny test_* models where timm has them
ARCHS = [
    ("test_resnet", {}),
    ("resnet18", {}),
    ("test_efficientnet", {}),
    ("tf_efficientnet_lite0", {}),
    ("mobilenetv3_small_050", {}),
    ("regnetx_002", {}),
    ("test_convnext", {}),
    ("test_vit", {}),
    ("deit_tiny_patch16_224", {"img_size": 32}),
    ("swin_tiny_patch4_window7_224", {"img_size": 64, "window_size": 2}),
    ("test_byobnet", {}),
    ("maxvit_rmlp_pico_rw_256", {"img_size": 64}),
]


def tiny_dls(size=32, n=32, n_classes=3, arch=None):
    g = np.random.default_rng(0)
    x = g.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    y = np.arange(n) % n_classes
    return ImageDataLoaders.from_arrays(x, y, x[:8], y[:8], size=size, bs=8, arch=arch,
                                        vocab=[f"c{i}" for i in range(n_classes)])


@pytest.mark.parametrize("arch,kwargs", ARCHS, ids=[a for a, _ in ARCHS])
def test_timm_families_split_into_groups(arch, kwargs):
    size = kwargs.get("img_size", 32 if "vit" not in arch else 32)
    if arch in ("resnet18", "tf_efficientnet_lite0", "mobilenetv3_small_050", "regnetx_002", "test_byobnet"):
        size = 64
    dls = tiny_dls(size=size, n=16)
    learn = vision_learner(dls, arch, pretrained=False, timm_kwargs=kwargs, progress=False)
    groups = learn.layer_groups
    assert learn.n_groups >= 4, f"{arch}: only {learn.n_groups} groups"  # >= 3 in the body + the head
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)) == len(list(learn.model.parameters()))
    assert [id(p) for p in groups[-1]] == [id(p) for p in learn.model.head.parameters()]
    # forward order: the first group whose parameters a module owns never decreases along execution
    group_of = {id(p): i for i, g in enumerate(groups) for p in g}
    order = []
    hooks = [m.register_forward_pre_hook(lambda m, _, order=order: order.append(m))
             for m in learn.model.modules() if any(True for _ in m.parameters(recurse=False))]
    learn.model.eval()
    with torch.no_grad():
        learn.model(next(iter(dls.valid))[0])
    for h in hooks:
        h.remove()
    seen = [min(group_of[id(p)] for p in m.parameters(recurse=False)) for m in order]
    running_max = np.maximum.accumulate(seen)
    # a module may run again later (shared); what matters is that no group starts before an earlier one
    firsts = [seen.index(i) for i in range(learn.n_groups) if i in seen]
    assert firsts == sorted(firsts), f"{arch}: groups not in forward order"
    assert running_max[-1] == learn.n_groups - 1
    # freeze_to(k) freezes exactly groups[:k] (norm params aside, train_bn)
    norm_ids = learn.norm_param_ids
    for k in range(learn.n_groups):
        learn.freeze_to(k)
        for i, g in enumerate(groups):
            assert all(p.requires_grad == (i >= k or id(p) in norm_ids) for p in g)
    # discriminative lrs: group i peaks at 1e-5 * 100 ** (i / (G-1))
    learn.unfreeze()
    rec = RecordLrs()
    learn.fit_one_cycle(1, slice(1e-5, 1e-3), cbs=rec)
    peak = np.array(rec.lrs).max(axis=0)
    G = learn.n_groups
    expected = [1e-5 * 100 ** (i / (G - 1)) for i in range(G)]
    # 2 steps at pct_start 0.25: the peak sits at step 1 (pos 0.5, annealing from q=1/3)
    q = (0.5 - 0.25) / 0.75
    factor = (1 + math.cos(math.pi * (1 - q))) / 2 * (1 / 1e5 - 1) + 1
    np.testing.assert_allclose(peak, np.array(expected) * factor, rtol=1e-5)


def test_pretrained_learner_starts_frozen_and_random_one_does_not(tmp_path):
    dls = tiny_dls()
    body = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    torch.save(body.state_dict(), tmp_path / "w.pth")
    learn = vision_learner(dls, "test_resnet", pretrained=str(tmp_path / "w.pth"), progress=False)
    assert learn.frozen_groups == learn.n_groups - 1
    state = body.state_dict()
    for k, v in learn.model.body.state_dict().items():  # the file's tensors, exactly
        assert torch.equal(v, state[k]), k
    assert not any(k.startswith("fc.") for k in learn.model.body.state_dict())
    learn2 = vision_learner(dls, "test_resnet", pretrained=False, progress=False)
    assert learn2.frozen_groups == 0


OFFLINE_SCRIPT = """
import numpy as np
from fastfreeze import ImageDataLoaders, vision_learner
dls = ImageDataLoaders.from_arrays(np.zeros((8, 32, 32, 3), np.uint8), np.arange(8) % 2, valid_pct=None, size=32)
try:
    vision_learner(dls, "resnet18", pretrained=True, progress=False)
except RuntimeError as error:
    print(f"{type(error.__cause__).__name__}|{error}")
"""


@pytest.mark.slow
def test_pretrained_true_offline_is_a_clear_error(tmp_path):
    """A user without internet, as huggingface_hub sees one (HF_HUB_OFFLINE=1, an empty cache), in a process of
    its own: timm's real download error, wrapped in a message that says what to pass instead."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    run = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    cause, _, message = run.stdout.strip().splitlines()[-1].partition("|")
    assert cause == "LocalEntryNotFoundError"  # huggingface_hub's own: nothing cached, and offline
    assert message.startswith("could not fetch timm's pretrained weights for 'resnet18' (LocalEntryNotFoundError: ")
    assert "Without internet, pass pretrained=False, or pretrained='path/to/weights.pth|.safetensors'" in message


def test_default_head_layout():
    learn = vision_learner(tiny_dls(), "test_resnet", pretrained=False, progress=False)
    nf = learn.body_info.num_features
    head = learn.model.head
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features, l.bias is None) for l in linears] == [(2 * nf, 512, True), (512, 3, True)]
    assert [m.p for m in head.modules() if isinstance(m, nn.Dropout)] == [0.25, 0.5]


def test_layer_list_head_mismatch_names_both_numbers():
    with pytest.raises(ValueError, match=r"(?s)(?=.*\b100\b)(?=.*\b" + "{}".format(
            timm.create_model("test_resnet", num_classes=0).num_features) + r"\b)"):
        vision_learner(tiny_dls(), "test_resnet", pretrained=False, head=[nn.Linear(100, 3)], progress=False)


def test_module_head_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="does not fit the body"):
        vision_learner(tiny_dls(), "test_resnet", pretrained=False, head=nn.Sequential(nn.Flatten(), nn.Linear(7, 3)),
                       progress=False)


def test_projection_head_trains_alone_with_freeze_strategy():
    learn = vision_learner(tiny_dls(), "test_resnet", pretrained=False, output_dim=16, progress=False)
    out = learn.model(next(iter(learn.dls.valid))[0])
    assert out.shape == (8, 16)
    learn.freeze()
    body_before = [p.detach().clone() for p in learn.model.body.parameters() if id(p) not in learn.norm_param_ids]
    head_before = [p.detach().clone() for p in learn.model.head.parameters()]
    learn.fit_one_cycle(1, 1e-2)
    body_after = [p for p in learn.model.body.parameters() if id(p) not in learn.norm_param_ids]
    assert all(torch.equal(a, b) for a, b in zip(body_after, body_before))
    assert any(not torch.equal(a, b) for a, b in zip(learn.model.head.parameters(), head_before))
    assert math.isfinite(learn.recorder.losses[-1])


def test_torchvision_and_custom_modules_get_a_new_head_and_train():
    import torchvision
    dls = tiny_dls(size=32)
    tv = torchvision.models.resnet18(weights=None, num_classes=1000)
    learn = vision_learner(dls, tv, pretrained=False, metrics=accuracy, progress=False)
    assert learn.model(next(iter(dls.valid))[0]).shape == (8, 3)
    assert learn.n_groups >= 3
    learn.fit_one_cycle(1, 1e-3)
    assert math.isfinite(learn.recorder.losses[-1])

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                                          nn.Conv2d(8, 16, 3), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.out = nn.Linear(16, 10)

        def forward(self, x):
            return self.out(self.pool(self.features(x)).flatten(1))
    learn = vision_learner(dls, Tiny(), pretrained=False, progress=False)
    assert learn.model(next(iter(dls.valid))[0]).shape == (8, 3)
    learn.fit_one_cycle(1, 1e-3)
    assert math.isfinite(learn.recorder.losses[-1])


def test_predict_takes_images_and_paths(tmp_path):
    dls = tiny_dls(size=32)
    learn = vision_learner(dls, "test_resnet", pretrained=False, progress=False)
    img = Image.fromarray(np.full((40, 40, 3), 128, dtype=np.uint8))
    img.save(tmp_path / "x.png")
    label, idx, probs = learn.predict(img)
    assert label == dls.vocab[idx] and probs.shape == (3,)
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0))
    label2, idx2, probs2 = learn.predict(tmp_path / "x.png")
    torch.testing.assert_close(probs2, probs)
    # an item of the validation set, preprocessed by hand, gives what get_preds gives for it
    xv, _ = next(iter(dls.valid))
    preds, _ = learn.get_preds()
    torch.testing.assert_close(learn.predict(xv[0])[2], preds[0], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ predict against the model on a hand-made input
def hand_input(photo: np.ndarray, config: dict, method: str) -> torch.Tensor:
    """The model input for a uint8 RGB photo worked out with PIL and NumPy: 'squish' resizes the whole image,
    'crop' resizes its shorter side to floor(size / crop_pct) and takes the centre; then scale and normalise."""
    size = config["input_size"][-1]
    image = Image.fromarray(np.ascontiguousarray(photo))
    if method == "squish":
        pixels = np.asarray(image.resize((size, size), Image.BICUBIC), dtype=np.float64)
    else:
        short = math.floor(size / config["crop_pct"])
        w, h = image.size
        new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        resized = np.asarray(image.resize(new, Image.BICUBIC), dtype=np.float64)
        top, left = int(round((resized.shape[0] - size) / 2)), int(round((resized.shape[1] - size) / 2))
        pixels = resized[top:top + size, left:left + size]
    x = (pixels / 255 - np.array(config["mean"])) / np.array(config["std"])
    return torch.from_numpy(x).permute(2, 0, 1).float()


def centred_log(probs: torch.Tensor) -> torch.Tensor:
    """log-probabilities minus their mean: the logits minus theirs (softmax forgets only a constant)."""
    logs = probs.double().log()
    return logs - logs.mean()


def model_logits(learn, x: torch.Tensor) -> torch.Tensor:
    learn.model.eval()
    with torch.no_grad():
        out = learn.model(x[None].to(memory_format=torch.channels_last))[0].double()
    return out - out.mean()


@pytest.mark.parametrize("method", ["squish", "crop"])
def test_predict_is_the_softmax_of_the_model_on_the_photo_preprocessed_by_hand(tmp_path, method):
    """predict(PIL image) and predict(path) are softmax(model(x)) for x made by hand with PIL: the resize of the
    data (the whole image for arrays, timm's resize and centre crop for folders), bicubic, RGB order, no flip.
    Compared as logits (centred log-probabilities), which a saturated softmax does not flatten. The same oracle
    on a flipped, channel-swapped, otherwise resized or nearest-resized photo lands more than 3 tolerances
    away, so the test sees each of those mistakes."""
    import skimage.data
    photo = skimage.data.astronaut()[40:440, 20:500]  # 400 x 480, not square, so 'crop' differs from 'squish'
    Image.fromarray(np.ascontiguousarray(photo)).save(tmp_path / "photo.png")
    if method == "squish":
        dls = tiny_dls(size=32)
    else:
        for split in ("train", "valid"):
            for name in ("a", "b", "c"):
                (tmp_path / split / name).mkdir(parents=True)
                Image.fromarray(np.ascontiguousarray(photo[::8, ::8])).save(tmp_path / split / name / "x.png")
        dls = ImageDataLoaders.from_folder(tmp_path, size=32, bs=2, num_workers=0)
    assert dls.resize_method == method
    config = dls.data_config
    assert config["interpolation"] == "bicubic" and config["crop_pct"] == 0.875  # timm's defaults (no arch given)
    assert config["mean"] == (0.485, 0.456, 0.406) and config["std"] == (0.229, 0.224, 0.225)
    torch.manual_seed(0)
    learn = vision_learner(dls, "test_resnet", pretrained=False, progress=False)
    expected = model_logits(learn, hand_input(photo, config, method))
    label, index, probs = learn.predict(Image.fromarray(np.ascontiguousarray(photo)))
    # 1.5% of the logits' scale: PIL rounds to 8 bits where fastfreeze resizes arrays in float (0.7% here)
    tol = 0.015 * float(expected.abs().max())
    torch.testing.assert_close(centred_log(probs), expected, atol=tol, rtol=0)
    assert index == int(expected.argmax()) and label == dls.vocab[index]
    torch.testing.assert_close(centred_log(learn.predict(tmp_path / "photo.png")[2]), expected, atol=tol, rtol=0)
    other_method = "crop" if method == "squish" else "squish"
    nearest = np.asarray(Image.fromarray(np.ascontiguousarray(photo)).resize((32, 32), Image.NEAREST))
    mistakes = {"flipped": hand_input(photo[:, ::-1], config, method),
                "BGR": hand_input(photo[..., ::-1], config, method),
                other_method: hand_input(photo, config, other_method),
                "nearest": hand_input(nearest, config, "squish")}
    for name, x in mistakes.items():
        assert float((model_logits(learn, x) - expected).abs().max()) > 3 * tol, name


def test_group_level_fine_gives_one_group_per_block():
    """resnet18 through vision_learner: 'coarse' is the stem, the 4 stages and the head; 'fine' the stem, the 8
    blocks (2 per stage) and the head, each group holding exactly that module's parameters; slice lrs spread
    geometrically over the 10 groups."""
    torch.manual_seed(0)
    dls = tiny_dls(size=32)
    coarse = vision_learner(dls, "resnet18", pretrained=False, progress=False)
    fine = vision_learner(dls, "resnet18", pretrained=False, group_level="fine", progress=False)
    body = fine.model.body
    blocks = [getattr(body, f"layer{i}")[j] for i in range(1, 5) for j in range(2)]
    expected = [[*body.conv1.parameters(), *body.bn1.parameters()], *[list(b.parameters()) for b in blocks],
                list(fine.model.head.parameters())]
    assert [[id(p) for p in g] for g in fine.layer_groups] == [[id(p) for p in g] for g in expected]
    assert coarse.n_groups == 6 and fine.n_groups == 10
    fine.set_lrs(slice(1e-6, 1e-3))
    lrs = [g["lr"] for g in fine.opt.param_groups]
    np.testing.assert_allclose(lrs, [1e-6 * 1000 ** (i / 9) for i in range(10)], rtol=1e-12)
    fine.freeze_to(-3)  # the last two blocks and the head train
    trains = [all(p.requires_grad for p in g if id(p) not in fine.norm_param_ids) for g in fine.layer_groups]
    assert trains == [False] * 7 + [True] * 3


# ------------------------------------------------------------------------------------------- the three tasks

def test_multi_label_data_gets_bce_sigmoid_and_predict_above_the_threshold():
    from fastfreeze.core.losses import MultiLabelLoss
    g = np.random.default_rng(0)
    x = g.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8)
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]] * 4, dtype=np.float64)  # multi-hot floats
    dls = ImageDataLoaders.from_arrays(x, y, x[:4], y[:4], size=32, bs=4, vocab=["red", "round", "shiny"])
    assert dls.task == "multi_label" and dls.c == 3
    torch.manual_seed(0)
    learn = vision_learner(dls, "test_resnet", pretrained=False, progress=False)
    assert isinstance(learn.loss_func, MultiLabelLoss) and learn.model.head[-1].out_features == 3
    learn.fit(1, lr=1e-3)  # int64 targets reach BCE as floats
    probs, targs = learn.get_preds()
    learn.model.eval()
    with torch.no_grad():
        raw = learn.model(torch.cat([b[0] for b in dls.valid]))
    assert torch.allclose(probs, torch.sigmoid(raw), atol=1e-6) and targs.tolist() == y[:4].tolist()
    for thresh in (0.3, 0.5, 0.7):
        learn.loss_func.thresh = thresh
        labels, mask, p = learn.predict(x[0])
        assert torch.allclose(p, probs[0], atol=1e-5)
        assert labels == [name for name, q in zip(dls.vocab, probs[0].tolist()) if q > thresh]
        assert mask.tolist() == [q > thresh for q in probs[0].tolist()]


def test_regression_data_gets_mse_and_y_range_bounds_the_outputs():
    g = np.random.default_rng(0)
    x = g.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8)
    y = g.uniform(2.0, 5.0, (16, 2))
    dls = ImageDataLoaders.from_arrays(x, y, x[:4], y[:4], size=32, bs=4)
    assert dls.task == "regression" and dls.c == 2
    torch.manual_seed(0)
    learn = vision_learner(dls, "test_resnet", pretrained=False, progress=False, y_range=(2.0, 5.0))
    assert isinstance(learn.loss_func, nn.MSELoss)
    learn.fit(1, lr=1e-3)
    preds, targs = learn.get_preds()
    assert preds.shape == (4, 2) and bool(((preds > 2.0) & (preds < 5.0)).all())
    value, values, _ = learn.predict(x[0])
    assert value == pytest.approx(preds[0].tolist(), abs=1e-5)
    assert learn.validate()[0] == pytest.approx(float(((preds - targs) ** 2).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="y_range applies to the default head"):
        vision_learner(dls, "test_resnet", pretrained=False, head=[nn.Linear(48, 2)], y_range=(0, 1))
