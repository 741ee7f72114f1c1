"""Export without pickle: safetensors + JSON, rebuilt and loaded by `load_learner`, predictions bit-exact on CPU."""
import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from fastfreeze import DataLoaders, Learner
from fastfreeze.inference.export import export_learner
from fastfreeze.inference.export_format import CONFIG_FILE, FORMAT_VERSION, WEIGHTS_FILE, InvalidExportError, build_spec
from fastfreeze.inference.predictor import load_learner
from fastfreeze.data.image_data import ImageDataLoaders
from fastfreeze.vision import vision_learner
from helpers import VOCAB, array_dls

def trained(learn):
    """One short fit, so that weights and BatchNorm statistics are not the initial ones."""
    learn.fit(1, lr=1e-3)
    return learn


def images():
    g = np.random.default_rng(1)
    return [Image.fromarray(g.integers(0, 255, (40 + 7 * i, 36, 3), dtype=np.uint8)) for i in range(3)]


def assert_predicts_like(predictor, learn, items):
    for item in items:
        label, index, probs = learn.predict(item)
        label2, index2, probs2 = predictor.predict(item)
        assert torch.equal(probs2, probs), (probs2 - probs).abs().max()  # bit-exact on the CPU
        assert (label2, index2) == (label, index)


# -- round trips ----------------------------------------------------------------------------------

def test_default_head_round_trip_is_bit_exact_and_needs_no_pickle(tmp_path, monkeypatch):
    learn = trained(vision_learner(array_dls(), "test_resnet", pretrained=False, progress=False))
    learn.build_spec = build_spec("test_resnet", n_out=3)
    folder = export_learner(learn, tmp_path / "export")
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["format"] == "fastfreeze-export" and config["format_version"] == FORMAT_VERSION
    assert config["model"]["body"] == {"kind": "timm", "arch": "test_resnet", "timm_kwargs": {"global_pool": ""},
                                       "removed": []}
    assert config["model"]["head"] == {"kind": "default", "n_out": 3, "lin_ftrs": None, "ps": 0.5, "concat_pool": True,
                                       "first_bn": True, "bn_final": False, "lin_first": False, "y_range": None}
    assert config["task"] == "single_label" and config["threshold"] is None
    assert config["body_info"] == {"num_features": learn.body_info.num_features, "pooled": False}
    assert config["vocab"] == VOCAB and config["n_out"] == 3 and config["activation"] == "softmax"
    assert config["channels_last"] is True and config["preprocessing"]["resize_method"] == "squish"
    assert config["preprocessing"]["data_config"]["input_size"] == [3, 32, 32]

    def no_unpickling(*args, **kwargs):
        raise AssertionError("load_learner unpickled something")
    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    predictor = load_learner(folder)
    assert not predictor.model.training
    state = learn.model.state_dict()
    assert all(torch.equal(v, state[k].cpu()) for k, v in predictor.model.state_dict().items())
    assert_predicts_like(predictor, learn, images())


def test_folder_images_with_crop_preprocessing_predict_by_path(tmp_path):
    for split, n in (("train", 4), ("valid", 2)):
        for c, grey in zip(VOCAB, (30, 120, 210)):
            for i in range(n):
                (tmp_path / "data" / split / c).mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (30 + 4 * i, 26), (grey, 255 - grey, i * 40)).save(tmp_path / "data" / split / c / f"{i}.png")
    dls = ImageDataLoaders.from_folder(tmp_path / "data", size=32, bs=4, num_workers=0, arch="test_efficientnet")
    learn = trained(vision_learner(dls, "test_efficientnet", pretrained=False, progress=False))
    predictor = load_learner(export_learner(learn, tmp_path / "export"))
    assert predictor.config["model"]["head"]["kind"] == "default"  # vision_learner recorded how it built the head
    assert predictor.resize_method == "crop" and predictor.vocab == VOCAB
    paths = sorted((tmp_path / "data" / "valid").rglob("*.png"))[:3]
    assert_predicts_like(predictor, learn, paths)
    assert_predicts_like(predictor, learn, [str(paths[0])])


def tiny_cnn() -> nn.Module:
    """A user's model with a classifier (module level, so export can name it)."""
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10))


HEADS = {
    "layer list": dict(head=[nn.Linear(64, 20), nn.GELU(), nn.LayerNorm(20), nn.Dropout(0.1), nn.Linear(20, 3)]),
    "default, two hidden": dict(lin_ftrs=[16, 8], ps=[0.1, 0.2, 0.3], bn_final=True),
    "default, lin_first": dict(lin_first=True, concat_pool=False, first_bn=False),
    "projection": dict(output_dim=5),
}


@pytest.mark.parametrize("name", list(HEADS))
def test_heads_round_trip(tmp_path, name):
    kwargs = HEADS[name]
    learn = trained(vision_learner(array_dls(), "test_convnext", pretrained=False, progress=False, **kwargs))
    spec_kwargs = {k: v for k, v in kwargs.items() if k != "head"}
    learn.build_spec = build_spec("test_convnext", head=kwargs.get("head"), n_out=3, **spec_kwargs)
    predictor = load_learner(export_learner(learn, tmp_path / "e"))
    kind = {"layer list": "layers", "projection": "projection"}.get(name, "default")
    assert predictor.config["model"]["head"]["kind"] == kind
    x = next(iter(learn.dls.valid))[0]
    learn.model.eval()
    with torch.no_grad():
        expected = learn.model(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(predictor.forward(x), expected)
    if name != "projection":
        assert_predicts_like(predictor, learn, images()[:1])


def test_pooled_vit_body_needs_its_timm_kwargs(tmp_path):
    learn = vision_learner(array_dls(), "test_vit", pretrained=False, progress=False, timm_kwargs={"img_size": 32})
    trained(learn)
    assert learn.build_spec["timm_kwargs"] == {"img_size": 32}  # vision_learner records how it built the body
    spec = learn.build_spec
    del learn.build_spec  # a learner that did not record it: built at img_size 32, the default size differs
    with pytest.raises(InvalidExportError, match="timm_kwargs"):
        export_learner(learn, tmp_path / "e")
    assert not (tmp_path / "e").exists() and not list(tmp_path.iterdir())  # nothing half-written
    learn.build_spec = spec
    predictor = load_learner(export_learner(learn, tmp_path / "e"))
    assert predictor.config["body_info"]["pooled"] is True and predictor.config["channels_last"] is False
    assert_predicts_like(predictor, learn, images())


def test_user_module_needs_a_named_factory(tmp_path):
    learn = trained(vision_learner(array_dls(), tiny_cnn(), pretrained=False, progress=False))
    with pytest.raises(InvalidExportError, match="factory="):
        export_learner(learn, tmp_path / "e")
    with pytest.raises(InvalidExportError, match="top level of an importable module"):
        export_learner(learn, tmp_path / "e", factory=lambda: tiny_cnn())
    folder = export_learner(learn, tmp_path / "e", factory=tiny_cnn)
    body = json.loads((folder / CONFIG_FILE).read_text())["model"]["body"]
    assert body == {"kind": "cut", "factory": "test_export:tiny_cnn", "kwargs": {}, "input_size": [3, 32, 32]}
    with pytest.raises(InvalidExportError, match=r"pass that function, load_learner\(path, factory=\.\.\.\)"):
        load_learner(folder)  # the name in the file is never imported
    with pytest.raises(InvalidExportError, match="was made with factory test_export:tiny_cnn"):
        load_learner(folder, factory=array_dls)
    assert_predicts_like(load_learner(folder, factory=tiny_cnn), learn, images())


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_plain_learner_with_a_factory_for_its_whole_model(tmp_path):
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    dls = DataLoaders.from_tensors(x, torch.arange(32) % 3, x[:8], torch.arange(8) % 3, bs=8)
    learn = Learner(mlp(), dls, path=tmp_path, progress=False)
    learn.fit(1)
    with pytest.raises(InvalidExportError, match="factory="):
        export_learner(learn, "e")
    predictor = load_learner(export_learner(learn, "e", factory=mlp), factory=mlp)  # "e" is taken from learn.path
    assert predictor.config["preprocessing"] is None and (tmp_path / "e" / WEIGHTS_FILE).exists()
    for item in x[:4]:
        assert torch.equal(predictor.predict(item)[2], learn.predict(item)[2])
    with pytest.raises(TypeError, match="takes tensors"):
        predictor.predict(images()[0])


def test_a_head_of_other_layers_cannot_be_exported(tmp_path):
    class Scale(nn.Module):
        def forward(self, x):
            return 2 * x
    learn = vision_learner(array_dls(), "test_resnet", pretrained=False, progress=False,
                           head=[nn.Linear(96, 3), Scale()])
    with pytest.raises(InvalidExportError, match=r"head\.3 is a .*Scale.*plain layers: Linear"):
        export_learner(learn, tmp_path / "e")


# -- bad exports ----------------------------------------------------------------------------------


def test_learn_export_writes_what_load_learner_reads_back(tmp_path):
    """`learn.export(path)` (the method users call): the safetensors file holds the model's state tensor for
    tensor (read here with safetensors itself), and the rebuilt model predicts exactly as the learner."""
    from safetensors.torch import load_file
    learn = trained(vision_learner(array_dls(), "test_resnet", pretrained=False, progress=False))
    folder = learn.export(tmp_path / "export")
    assert folder == tmp_path / "export"
    weights = load_file(str(folder / WEIGHTS_FILE))
    state = learn.model.state_dict()
    assert sorted(weights) == sorted(state)
    assert all(torch.equal(weights[k], v.cpu()) for k, v in state.items())
    assert json.loads((folder / CONFIG_FILE).read_text())["vocab"] == VOCAB
    assert_predicts_like(load_learner(folder), learn, images())


def test_exported_files_get_the_permissions_of_the_umask(tmp_path):
    """safetensors writes model.safetensors 0600; an export is meant to be shared, so it gets what any new file
    gets under the umask (0644 under 022), like config.json."""
    import os
    import stat
    learn = vision_learner(array_dls(), "test_resnet", pretrained=False, progress=False)
    learn.build_spec = build_spec("test_resnet", n_out=3)
    old = os.umask(0o022)
    try:
        folder = export_learner(learn, tmp_path / "export")
    finally:
        os.umask(old)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {WEIGHTS_FILE: 0o644,
                                                                                  CONFIG_FILE: 0o644}


def test_multi_label_and_regression_exports_predict_like_the_learner(tmp_path):
    g = np.random.default_rng(0)
    x = g.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    tags = np.array([[1, 0, 1], [0, 1, 0]] * 4)
    dls = ImageDataLoaders.from_arrays(x, tags, x[:4], tags[:4], size=32, bs=4, vocab=["a", "b", "c"])
    learn = vision_learner(dls, "test_resnet", pretrained=False, progress=False)
    learn.loss_func.thresh = 0.4
    predictor = load_learner(export_learner(learn, tmp_path / "multi"))
    assert predictor.task == "multi_label" and predictor.threshold == 0.4 and predictor.activation_name == "sigmoid"
    for item in x[:3]:
        labels, mask, probs = learn.predict(item)
        labels2, mask2, probs2 = predictor.predict(item)
        assert torch.equal(probs2, probs) and labels2 == labels and torch.equal(mask2, mask)
    values = g.uniform(0, 1, (8, 1))
    reg = vision_learner(ImageDataLoaders.from_arrays(x, values, size=32, bs=4), "test_resnet", pretrained=False,
                         progress=False, y_range=(0.0, 1.0))
    predictor = load_learner(export_learner(reg, tmp_path / "reg"))
    config = json.loads((tmp_path / "reg" / CONFIG_FILE).read_text())
    assert config["task"] == "regression" and config["model"]["head"]["y_range"] == [0.0, 1.0]
    assert predictor.predict(x[0])[0] == reg.predict(x[0])[0]


def test_a_version_1_config_reads_as_a_single_label_model(good_export, tmp_path):
    from helpers import copy_export

    def as_version_1(config):
        config.update(format_version=1)
        del config["task"], config["threshold"]
        del config["model"]["head"]["y_range"]
    # an export of format 1 has no checksum of its config in the weights' metadata
    predictor = load_learner(copy_export(good_export, tmp_path / "v1", as_version_1, keep_metadata=False))
    assert predictor.task == "single_label" and predictor.threshold == 0.5
    label, index, probs = predictor.predict(np.zeros((32, 32, 3), dtype=np.uint8))
    assert label == VOCAB[index] and index == int(probs.argmax())
