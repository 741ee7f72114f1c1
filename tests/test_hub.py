"""The Hugging Face Hub, without the network: the folder push_to_hub uploads (the upload itself is replaced
here), and `hf-hub:` names read from a Hub cache laid out by the tests, with HF_HUB_OFFLINE=1."""
import json
import shutil
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from fastfreeze import ImageDataLoaders, accuracy, load_learner, vision_learner
from fastfreeze.utils.hub import hub_repo_id
from helpers import VOCAB, array_dls


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty Hub cache, read offline (huggingface_hub reads both settings when it is imported: set both)."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def lay_out(cache: Path, repo_id: str, folder: Path, commit: str = "0123456789abcdef0123456789abcdef01234567"):
    """The Hub cache's layout for one model repository: refs/main names a commit, snapshots/<commit> its files."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)


class FakeHfApi:
    """Stands in for huggingface_hub.HfApi: records the calls and keeps a copy of the uploaded folder."""
    calls: list = []
    uploaded: Path

    def __init__(self, token=None):
        self.calls.append(("init", token))

    def create_repo(self, repo_id, private=None, exist_ok=False):
        self.calls.append(("create_repo", repo_id, private, exist_ok))

    def upload_folder(self, repo_id, folder_path, commit_message):
        self.calls.append(("upload_folder", repo_id, commit_message))
        shutil.copytree(folder_path, FakeHfApi.uploaded)
        return type("CommitInfo", (), {"commit_url": f"https://hub.invalid/{repo_id}/commit/1"})()


@pytest.fixture
def pushed(tmp_path, monkeypatch):
    """A trained learner pushed to 'org/tiny-export'; returns (learn, uploaded folder, calls)."""
    learn = vision_learner(array_dls(), "test_resnet", pretrained=False, metrics=accuracy, progress=False,
                           path=tmp_path)
    learn.fit(1, lr=1e-2)
    FakeHfApi.calls, FakeHfApi.uploaded = [], tmp_path / "uploaded"
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    url = learn.push_to_hub("org/tiny-export", token="hf_x")
    assert url == "https://hub.invalid/org/tiny-export/commit/1"
    return learn, FakeHfApi.uploaded, FakeHfApi.calls


def test_push_to_hub_uploads_the_export_with_a_model_card(pushed):
    learn, folder, calls = pushed
    assert calls == [("init", "hf_x"), ("create_repo", "org/tiny-export", None, True),
                     ("upload_folder", "org/tiny-export", "Upload fastfreeze export")]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    weights = load_file(str(folder / "model.safetensors"))
    assert all(torch.equal(weights[k], v) for k, v in learn.model.state_dict().items())
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: fastfreeze\n")
    assert "load_learner('hf-hub:org/tiny-export')" in card
    assert '"arch": "test_resnet"' in card and "classes ant, bee, cat" in card
    for row in learn.groups_table():  # every layer group, with its parameter count
        assert f"| {row['group']} | {row['modules']} | {row['params']:,} |" in card
    assert "## Preprocessing (resize: squish)" in card and "| input_size | [3, 32, 32] |" in card
    last = learn.recorder.values[-1]
    assert f"| fit 1 | 0 | {last['train_loss']:.4f} | {last['valid_loss']:.4f} | {last['accuracy']:.4f} |" in card


def test_load_learner_reads_a_pushed_export_from_the_hub_cache_offline(pushed, offline_cache):
    learn, folder, _ = pushed
    lay_out(offline_cache, "org/tiny-export", folder)
    item = np.random.default_rng(3).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    expected = learn.predict(item)
    for name in ("hf-hub:org/tiny-export", "hf_hub:org/tiny-export@main"):
        predictor = load_learner(name)
        label, index, probs = predictor.predict(item)
        assert (label, index) == expected[:2] and torch.equal(probs, expected[2])  # bit for bit
    with pytest.raises(FileNotFoundError, match="is not in the Hub cache and cannot be downloaded"):
        load_learner("hf-hub:org/never-pushed")


def timm_hub_repo(cache: Path, repo_id: str) -> dict:
    """A timm model repository as timm's push_to_hf_hub writes it (config.json + model.safetensors), with
    preprocessing of its own; returns its weights."""
    model = timm.create_model("test_resnet", pretrained=False, num_classes=7)
    cfg = dict(model.pretrained_cfg, input_size=[3, 40, 40], mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6],
               interpolation="bilinear", crop_pct=1.0)
    cfg.pop("architecture", None)
    folder = cache.parent / repo_id.replace("/", "-")
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "test_resnet", "num_classes": 7,
                                                    "pretrained_cfg": cfg}))
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(folder / "model.safetensors"))
    lay_out(cache, repo_id, folder)
    return weights


def test_hub_names_work_wherever_an_arch_name_does(offline_cache, tmp_path):
    weights = timm_hub_repo(offline_cache, "org/tiny-timm")
    x = np.random.default_rng(0).integers(0, 255, (12, 40, 40, 3), dtype=np.uint8)
    y = np.arange(12) % 3
    dls = ImageDataLoaders.from_arrays(x, y, x[:6], y[:6], arch="hf-hub:org/tiny-timm", bs=4, vocab=VOCAB)
    config = dls.data_config  # the Hub config's preprocessing, not timm's defaults for test_resnet
    assert tuple(config["mean"]) == (0.1, 0.2, 0.3) and tuple(config["input_size"]) == (3, 40, 40)
    assert config["interpolation"] == "bilinear"
    learn = vision_learner(dls, "hf-hub:org/tiny-timm", pretrained=True, progress=False, path=tmp_path)
    body = learn.model.body.state_dict()
    shared = [k for k in weights if k in body]
    assert len(shared) == len(body) and all(torch.equal(body[k], weights[k]) for k in shared)  # the Hub's weights
    learn.export("export")  # no factory= or timm_kwargs= needed
    exported = json.loads((tmp_path / "export" / "config.json").read_text())
    assert exported["model"]["body"]["arch"] == "test_resnet"
    shutil.rmtree(offline_cache)  # the export rebuilds from timm alone, without the Hub
    item = x[0]
    assert torch.equal(load_learner(tmp_path / "export").predict(item)[2], learn.predict(item)[2])


def test_malformed_hub_names_are_refused(pushed):
    learn = pushed[0]
    assert hub_repo_id("resnet18") is None and hub_repo_id("hf-hub:a/b@v1") == "a/b@v1"
    for bad in ("hf-hub:noslash", "hf-hub:a/b/c", "hf-hub:/b"):
        with pytest.raises(ValueError, match="is not a Hub model name: write 'hf-hub:<owner>/<model>'"):
            hub_repo_id(bad)
    with pytest.raises(ValueError, match="without a revision"):
        learn.push_to_hub("org/name@main")
