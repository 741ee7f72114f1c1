"""The export format: config.json checked key by key before anything is built, heads of plain layers to JSON and
back, models rebuilt from a config."""
import hashlib
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


# -------------------------------------------------------------------------------------------------
# integrity: the config's checksum in model.safetensors' metadata (docs/export.md)
# -------------------------------------------------------------------------------------------------
def _canonical(config):
    """docs/export.md: the checksum is the sha256 of the config as JSON with sorted keys and no spaces."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _reseal(folder):
    """Write the weights again with the checksum and copy of the config.json now in `folder`, as export does."""
    from safetensors.torch import load_file, save_file
    text = _canonical(json.loads((folder / "config.json").read_text()))
    save_file(load_file(str(folder / "model.safetensors")), str(folder / "model.safetensors"),
              metadata={"format": "fastfreeze-export", "config_sha256": hashlib.sha256(text.encode()).hexdigest(),
                        "config": text})
    return folder


def test_export_keeps_the_sha256_of_its_config_and_a_copy_in_the_weights_metadata(good_export):
    from safetensors import safe_open
    config = json.loads((good_export / "config.json").read_text())
    with safe_open(str(good_export / "model.safetensors"), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["config_sha256"] == hashlib.sha256(_canonical(config).encode()).hexdigest()
    assert json.loads(metadata["config"]) == config and metadata["format"] == "fastfreeze-export"


@pytest.fixture(scope="module")
def relu_export(tmp_path_factory):
    """An export whose timm body was built with act_layer='relu'."""
    from fastfreeze import vision_learner
    from helpers import array_dls
    learn = vision_learner(array_dls(), "test_resnet", pretrained=False, progress=False,
                           timm_kwargs={"act_layer": "relu"})
    return learn.export(tmp_path_factory.mktemp("relu") / "export")


@pytest.mark.parametrize("edit,change", [
    (lambda c: c["model"]["body"]["timm_kwargs"].update(act_layer="gelu"),
     "config.json's model.body.timm_kwargs.act_layer is 'gelu' but the export wrote 'relu'"),
    (lambda c: c.update(activation="none"), "config.json's activation is 'none' but the export wrote 'softmax'"),
    (lambda c: c.update(vocab=["bee", "ant", "cat"]),
     "config.json's vocab is ['bee', 'ant', 'cat'] but the export wrote ['ant', 'bee', 'cat']"),
    (lambda c: c["preprocessing"]["data_config"].update(mean=[0.5, 0.5, 0.5]),
     "config.json's preprocessing.data_config.mean is [0.5, 0.5, 0.5] but the export wrote [0.485, 0.456, 0.406]"),
    (lambda c: c["model"]["body"]["timm_kwargs"].pop("act_layer"),
     "config.json lacks model.body.timm_kwargs.act_layer, which the export wrote as 'relu'"),
])
def test_an_edited_config_is_refused_naming_each_changed_value(relu_export, tmp_path, edit, change):
    edited = copy_export(relu_export, tmp_path / "edited", edit)
    with pytest.raises(InvalidExportError) as info:
        load_learner(edited)
    message = str(info.value)
    assert message.startswith(f"{edited / 'config.json'} was changed after the export (its checksum is not the one "
                              f"model.safetensors keeps): {change}. ")
    assert "put back the exported values, or export the learner again" in message
    assert load_learner(copy_export(relu_export, tmp_path / "intact")).vocab == ["ant", "bee", "cat"]


def test_weights_without_the_checksum_are_refused_with_a_format_3_config(good_export, tmp_path):
    with pytest.raises(InvalidExportError, match=r"model.safetensors holds no checksum of .*config.json, which every "
                                                 r"export of format 3 writes into it: .*Export the learner again"):
        load_learner(copy_export(good_export, tmp_path / "e", keep_metadata=False))


@pytest.mark.parametrize("edit,message", [
    (lambda c: c["preprocessing"]["data_config"].update(std=[0, 0, 0]),
     r"preprocessing.data_config.std is \[0, 0, 0\] .*each value must be > 0"),
    (lambda c: c["model"]["body"]["timm_kwargs"].update(act_layer="relux"),
     r"timm_kwargs.act_layer is 'relux', an activation timm does not know"),
    (lambda c: c["model"]["body"]["timm_kwargs"].update(features_only=True),
     r"timm_kwargs has features_only=True: such a body returns a list of feature maps"),
    (lambda c: c["model"]["head"].update(ps=5),
     r"model.head: ps \(the head's dropout probabilities\) must each be in \[0, 1\), got 5"),
    (lambda c: c["model"]["head"].update(lin_ftrs=[0]), r"lin_ftrs \(the head's hidden layer sizes\) must be positive"),
    (lambda c: c.update(vocab=["ant", "bee", "cat", "dog"], n_out=4), r"the head has 3 outputs but n_out is 4"),
    (lambda c: c.update(threshold=2.0), r"threshold is 2.0, but it is a probability .* must be in \[0, 1\]"),
])
def test_values_that_cannot_be_right_are_refused_even_with_a_matching_checksum(good_export, tmp_path, edit, message):
    sealed = _reseal(copy_export(good_export, tmp_path / "e", edit))
    with pytest.raises(InvalidExportError, match=message) as info:
        load_learner(sealed)
    assert str(sealed / "config.json") in str(info.value)
    assert "export the learner again (learn.export)" in str(info.value)
