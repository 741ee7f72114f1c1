"""ONNX export: onnxruntime's outputs against the PyTorch model's on real images (scikit-learn's digits).
One export for the module (torch's exporter takes several seconds even for a tiny model)."""
import json

import numpy as np
import pytest
import torch

from fastfreeze import ImageDataLoaders, vision_learner
from fastfreeze.inference.onnx_export import run_onnx

pytest.importorskip("onnx", reason="to_onnx needs onnx (pip install 'fastfreeze[onnx]')")
pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript (pip install 'fastfreeze[onnx]')")
pytest.importorskip("onnxruntime", reason="checking the file needs onnxruntime (pip install 'fastfreeze[onnx]')")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A test_resnet trained one epoch on 8x8 handwritten digits at 32 px, exported once."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = (digits.images * (255 / 16)).round().astype(np.uint8)
    y = digits.target
    dls = ImageDataLoaders.from_arrays(x[:160], y[:160], x[160:200], y[160:200], size=32, bs=16,
                                       vocab=[str(d) for d in range(10)], augment=False, seed=0)
    path = tmp_path_factory.mktemp("onnx")
    learn = vision_learner(dls, "test_resnet", pretrained=False, progress=False, path=path)
    learn.fit(1, lr=1e-2)  # BatchNorm statistics and weights away from their initial values
    return learn, learn.to_onnx("digits.onnx")


def test_onnx_outputs_match_the_model_on_real_images(exported):
    learn, file = exported
    assert file == learn.path / "digits.onnx" and file.exists() and not file.with_name("digits.onnx.tmp").exists()
    xb, yb = next(iter(learn.dls.valid))  # 32 validation digits, preprocessed as the learner sees them
    expected, _ = learn.get_preds(dl=[(xb, yb)], activation=False)
    for batch in (xb, xb[:3]):  # any batch size
        got = run_onnx(file, batch)
        assert got.shape == (len(batch), 10)
        assert np.abs(got - expected[:len(batch)].numpy()).max() <= 1e-4


def test_onnx_metadata_says_how_to_use_the_outputs(exported):
    import onnx
    learn, file = exported
    meta = {p.key: p.value for p in onnx.load(str(file)).metadata_props}
    assert json.loads(meta["vocab"]) == [str(d) for d in range(10)] and meta["activation"] == "softmax"
    assert meta["task"] == "single_label" and json.loads(meta["threshold"]) is None
    assert json.loads(meta["data_config"])["input_size"] == [3, 32, 32] and meta["resize_method"] == "squish"


def test_missing_exporter_packages_are_a_clear_error(exported, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if onnxscript were not installed
    with pytest.raises(ImportError, match="to_onnx needs onnx and onnxscript"):
        exported[0].to_onnx("never.onnx")


def test_metadata_of_a_multi_label_learner_carries_its_threshold():
    from fastfreeze import Learner
    from fastfreeze.core.losses import MultiLabelLoss
    from fastfreeze.inference.onnx_export import onnx_metadata
    x = np.random.default_rng(0).integers(0, 255, (8, 16, 16, 3), dtype=np.uint8)
    tags = np.array([[1, 0, 1], [0, 1, 0]] * 4)
    dls = ImageDataLoaders.from_arrays(x, tags, x[:4], tags[:4], size=16, bs=4, vocab=["a", "b", "c"])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3))
    meta = onnx_metadata(Learner(model, dls, loss_func=MultiLabelLoss(thresh=0.3), progress=False))
    assert (meta["task"], json.loads(meta["threshold"]), meta["activation"]) == ("multi_label", 0.3, "sigmoid")
    assert json.loads(meta["vocab"]) == ["a", "b", "c"]
