"""Bodies: spatial or pooled timm bodies with the right feature counts, classifiers cut from other models,
parameters the forward never uses, and TransferModel."""
import warnings

import pytest
import torch
import torch.nn as nn

from fastfreeze.models.body import BodyInfo, TransferModel, create_timm_body, cut_classifier, inspect_body
from fastfreeze.models.head import create_head


@pytest.mark.parametrize("arch,nf", [("resnet18", 512), ("convnext_atto", 320), ("tf_efficientnet_lite0", 1280)])
def test_cnn_bodies_are_spatial(arch, nf):
    info = create_timm_body(arch)
    assert isinstance(info, BodyInfo)
    assert (info.pooled, info.num_features, info.arch) == (False, nf, arch)
    assert info.data_config["input_size"] == (3, 224, 224)
    assert {"mean", "std", "interpolation", "crop_pct"} <= set(info.data_config)
    info.body.eval()
    with torch.no_grad():
        out = info.body(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, nf, 2, 2)  # all three downsample by 32
    assert info.removed == [] and info.unused == []


@pytest.mark.parametrize("arch,kwargs,nf", [
    ("vit_tiny_patch16_224", {"img_size": 64}, 192),
    ("swin_tiny_patch4_window7_224", {"img_size": 64, "window_size": 2}, 768),
])
def test_transformer_bodies_are_pooled(arch, kwargs, nf):
    info = create_timm_body(arch, **kwargs)
    assert (info.pooled, info.num_features) == (True, nf)
    assert info.data_config["input_size"] == (3, 64, 64)  # the size the model was built for, not timm's 224
    info.body.eval()
    with torch.no_grad():
        assert info.body(torch.randn(2, 3, 64, 64)).shape == (2, nf)


def test_convnext_final_norm_is_used_by_the_body():
    # fastai cuts convnext before head.norm and leaves it trainable but unused; here the body applies it
    info = create_timm_body("convnext_atto")
    body = info.body.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = body(x)
        body.head.norm.bias.add_(1.0)
        after = body(x)
    assert torch.allclose(after - before, torch.ones_like(before), atol=1e-5)  # LayerNorm bias shifts all


def test_timm_errors_are_clear():
    with pytest.raises(ValueError, match="no architecture named"):
        create_timm_body("resnet_that_does_not_exist")
    with pytest.raises(ValueError, match="num_classes"):
        create_timm_body("resnet18", num_classes=10)


def test_transfer_model_forward():
    info = create_timm_body("resnet18")
    model = TransferModel(info.body, create_head(info.num_features, 5)).eval()
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    assert model.body is info.body and isinstance(model.head, nn.Sequential)
    vit = create_timm_body("test_vit")
    model = TransferModel(vit.body, create_head(vit.num_features, 3, pool=False)).eval()
    assert model(torch.randn(2, 3, 160, 160)).shape == (2, 3)


def test_cut_torchvision_resnet18():
    torchvision = pytest.importorskip("torchvision")
    original = torchvision.models.resnet18()
    info = cut_classifier(original, input_size=64)
    assert (info.num_features, info.pooled) == (512, True)  # torchvision's forward pools and flattens
    assert isinstance(info.body.fc, nn.Identity)
    assert isinstance(original.fc, nn.Linear)  # a copy was cut, not the user's model
    assert info.data_config["input_size"] == (3, 64, 64)
    with torch.no_grad():
        assert info.body.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 512)
    in_place = cut_classifier(original, input_size=64, inplace=True)
    assert in_place.body is original and isinstance(original.fc, nn.Identity)


def test_cut_torchvision_classifier_blocks():
    torchvision = pytest.importorskip("torchvision")
    mobilenet = cut_classifier(torchvision.models.mobilenet_v3_small(), input_size=64)
    # classifier = Linear(576, 1024), Hardswish, Dropout, Linear(1024, 1000): cut before the Dropout
    assert (mobilenet.num_features, mobilenet.pooled) == (1024, True)
    assert [type(m).__name__ for m in mobilenet.body.classifier] == ["Linear", "Hardswish"]
    effnet = cut_classifier(torchvision.models.efficientnet_b0(), input_size=64)
    # classifier = Dropout, Linear(1280, 1000): nothing is left of it
    assert (effnet.num_features, len(effnet.body.classifier)) == (1280, 0)


class SmallNet(nn.Module):
    def __init__(self, classifier_name: str = "classifier"):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 24, 3))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier_name = classifier_name
        setattr(self, classifier_name, nn.Linear(24, 10))

    def forward(self, x):
        return getattr(self, self.classifier_name)(self.pool(self.features(x)).flatten(1))


@pytest.mark.parametrize("name", ["classifier", "fc", "out"])  # "out": found as the last nn.Linear
def test_cut_hand_written_module(name):
    info = cut_classifier(SmallNet(name), input_size=16)
    assert (info.num_features, info.pooled, info.arch) == (24, True, "SmallNet")
    assert isinstance(getattr(info.body, name), nn.Identity)


def test_cut_keeps_a_spatial_body_spatial():
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU())
    info = inspect_body(model, input_size=(3, 10, 10))
    assert (info.num_features, info.pooled) == (6, False)


def test_cut_errors():
    with pytest.raises(ValueError, match="inspect_body"):
        cut_classifier(nn.Sequential(nn.Conv2d(3, 4, 3)), input_size=8)
    with pytest.raises(ValueError, match=r"\(1, 5, 7\)"):  # tokens are neither pooled nor spatial
        inspect_body(nn.Sequential(nn.Flatten(2), nn.Linear(16, 7)), input_size=(5, 4, 4))
    with pytest.raises(ValueError, match="input_size"):
        inspect_body(nn.Conv2d(3, 4, 3), input_size=(3, 8))


class WithUnused(nn.Module):
    """An auxiliary classifier the forward never calls, and a parameter of a running module left unused."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.aux = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        self.scale = nn.Parameter(torch.ones(1))  # owned by the root module, which runs
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def test_unused_parameters_are_removed_or_reported():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = cut_classifier(WithUnused(), input_size=8)
    assert isinstance(info.body.aux, nn.Identity)
    assert info.removed == ["aux.0.weight", "aux.0.bias", "aux.1.weight", "aux.1.bias"]
    assert info.unused == ["scale"]
    assert any("scale" in str(w.message) for w in caught)
    assert {n for n, _ in info.body.named_parameters()} == {"features.0.weight", "features.0.bias", "scale"}
