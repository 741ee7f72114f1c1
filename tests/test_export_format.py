"""The export format: config.json checked key by key before anything is built, heads of plain layers to JSON and
back, models rebuilt from a config."""
import json

import pytest
import torch
import torch.nn as nn

from fastfreeze.inference.export_format import FORMAT_VERSION, InvalidExportError, build_layer, layer_spec
from fastfreeze.inference.predictor import load_learner
from helpers import copy_export


def test_newer_format_version_says_upgrade(good_export, tmp_path):
    folder = copy_export(good_export, tmp_path / "e", lambda c: c.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(InvalidExportError, match=f"format version {FORMAT_VERSION + 1}.*upgrade fastfreeze"):
        load_learner(folder)


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.update(extra=1), r"unknown keys \['extra'\]"),
    (lambda c: c.pop("vocab"), r"lacks keys \['vocab'\]"),
    (lambda c: c.update(n_out="3"), r"n_out must be a positive int, found '3'"),
    (lambda c: c.update(activation="relu"), r"activation must be one of"),
    (lambda c: c["model"]["head"].update(ps="x"), r"model.head.ps must be"),
    (lambda c: c["model"]["body"].update(kind="pickle"), r"model.body.kind must be 'timm' or 'cut'"),
    (lambda c: c["model"]["body"]["timm_kwargs"].update(checkpoint_path="/etc/x"), r"may not hold \['checkpoint_path'\]"),
    (lambda c: c["preprocessing"]["data_config"].update(input_size=[3, 32]), r"input_size must be a list of 3"),
    (lambda c: c.update(vocab=["a", "b"]), r"vocab has 2 classes but n_out is 3"),
    (lambda c: c["model"].update(head={"kind": "layers", "module": {"type": "os.system", "command": "x"}}),
     r"unknown layer type 'os.system'"),
    (lambda c: c["model"].update(head={"kind": "layers", "module": {"type": "Linear", "in_features": 4}}),
     r"lacks keys \['bias', 'out_features'\]"),
])
def test_tampered_config_is_a_clear_error(good_export, tmp_path, edit, message):
    with pytest.raises(InvalidExportError, match=message):
        load_learner(copy_export(good_export, tmp_path / "e", edit))


def test_rebuilding_takes_out_the_modules_the_body_had_removed():
    import timm
    from fastfreeze.inference.export_format import build_model
    body = timm.create_model("test_resnet", num_classes=0, global_pool="")
    removed = [f"layer4.{n}" for n, _ in body.layer4.named_parameters()]
    config = {"model": {"kind": "transfer",
                        "body": {"kind": "timm", "arch": "test_resnet", "timm_kwargs": {"global_pool": ""},
                                 "removed": removed},
                        "head": {"kind": "projection", "output_dim": 4}},
              "body_info": {"num_features": 96, "pooled": False}}
    model = build_model(config)
    assert isinstance(model.body.layer4, nn.Identity)
    assert not any(n.startswith("body.layer4") for n, _ in model.named_parameters())


def test_a_head_of_plain_layers_goes_to_json_and_back():
    head = nn.Sequential(nn.Flatten(), nn.Linear(8, 4, bias=False), nn.GELU(approximate="tanh"),
                         nn.Sequential(nn.LayerNorm(4, eps=1e-3), nn.Dropout(0.25)), nn.Linear(4, 2))
    spec = layer_spec(head)
    assert spec["layers"][1] == {"type": "Linear", "in_features": 8, "out_features": 4, "bias": False}
    rebuilt = build_layer(json.loads(json.dumps(spec)))  # through JSON text
    assert layer_spec(rebuilt) == spec
    rebuilt.load_state_dict(head.state_dict())
    x = torch.randn(3, 2, 4)
    assert torch.equal(head.eval()(x), rebuilt.eval()(x))
    with pytest.raises(InvalidExportError, match="nests Sequential layers more than 16 deep"):
        deep = {"type": "Linear", "in_features": 1, "out_features": 1, "bias": True}
        for _ in range(18):
            deep = {"type": "Sequential", "layers": [deep]}
        build_layer(deep)
