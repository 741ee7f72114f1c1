"""load_learner and Predictor: loading an export checks what it reads and names what is wrong."""
import json

import pytest
import torch

from fastfreeze.inference.export_format import CONFIG_FILE, WEIGHTS_FILE, InvalidExportError
from fastfreeze.inference.predictor import load_learner
from helpers import copy_export


def test_weights_that_do_not_fit_are_a_clear_error(good_export, tmp_path):
    first = "body.conv1.0.weight"

    def drop(w):
        del w[first]

    def add(w):
        w["body.extra"] = torch.zeros(2)

    def reshape(w):
        w[first] = w[first][:1].clone()
    with pytest.raises(InvalidExportError, match=f"1 keys of the model missing from the file: {first}"):
        load_learner(copy_export(good_export, tmp_path / "a", weights_edit=drop))
    with pytest.raises(InvalidExportError, match="1 keys in the file that the model does not have: body.extra"):
        load_learner(copy_export(good_export, tmp_path / "b", weights_edit=add))
    with pytest.raises(InvalidExportError, match=rf"{first}: file \(1, 3, 3, 3\) vs model \(16, 3, 3, 3\)"):
        load_learner(copy_export(good_export, tmp_path / "c", weights_edit=reshape))
    broken = copy_export(good_export, tmp_path / "d")
    (broken / WEIGHTS_FILE).write_bytes(b"\x00" * 20)
    with pytest.raises(InvalidExportError, match="not a readable safetensors file"):
        load_learner(broken)


def test_not_an_export(good_export, tmp_path):
    with pytest.raises(FileNotFoundError, match="no export at"):
        load_learner(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidExportError, match="not a fastfreeze export: it has no config.json and no model"):
        load_learner(tmp_path / "empty")
    torch.save({"model": {}}, tmp_path / "model.pth")
    with pytest.raises(InvalidExportError, match="is a file, not a fastfreeze export.*learn.load"):
        load_learner(tmp_path / "model.pth")
    other = copy_export(good_export, tmp_path / "hf")
    (other / CONFIG_FILE).write_text(json.dumps({"architectures": ["BertModel"], "hidden_size": 768}))
    with pytest.raises(InvalidExportError, match="not a fastfreeze export config"):
        load_learner(other)
    (other / CONFIG_FILE).write_text("{not json")
    with pytest.raises(InvalidExportError, match="not valid JSON"):
        load_learner(other)
    assert load_learner(good_export / CONFIG_FILE).n_out == 3  # one of the two files names its folder too
