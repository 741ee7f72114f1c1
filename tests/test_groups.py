"""Layer groups: timm's matcher groups in forward order, every parameter once, head last; the fallback
split for torchvision and hand-written models."""
from functools import lru_cache

import pytest
import torch
import torch.nn as nn

from fastfreeze.models.body import TransferModel, create_timm_body, cut_classifier
from fastfreeze.models.groups import body_groups, generic_groups, layer_groups, merge_groups
from fastfreeze.core.layer_groups import group_names

# (architecture, timm kwargs, probe size): small variants of each family, small images where the model allows.
ARCHS = [
    ("resnet18", {}, 64),
    ("resnext26ts", {}, 64),
    ("tf_efficientnet_lite0", {}, 64),
    ("mobilenetv3_small_050", {}, 64),
    ("regnetx_002", {}, 64),
    ("convnext_atto", {}, 64),
    ("vit_tiny_patch16_224", {"img_size": 64}, 64),
    ("deit_tiny_patch16_224", {"img_size": 64}, 64),
    ("swin_tiny_patch4_window7_224", {"img_size": 64, "window_size": 2}, 64),
    ("eva02_tiny_patch14_224", {"img_size": 56}, 56),
    ("maxvit_nano_rw_256", {"img_size": 64}, 64),
    ("test_coatnet", {}, 160),
    ("test_vit", {}, 160),
    ("test_efficientnet", {}, 64),
    ("test_nfnet", {}, 64),
]


@lru_cache(maxsize=None)
def _body(arch: str, **kwargs):
    return create_timm_body(arch, check_unused=False, **kwargs)  # test_body checks the unused-parameter probe


def transfer_model(arch: str, **kwargs) -> TransferModel:
    """A timm body (built once per test session) with a small linear head; tests only read it."""
    info = _body(arch, **kwargs)
    head = nn.Linear(info.num_features, 3)
    if not info.pooled:
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    return TransferModel(info.body, head)


def assert_partition(model: nn.Module, groups: list[list[nn.Parameter]]) -> None:
    """Every parameter of `model` in exactly one group."""
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)), "a parameter is in two groups"
    assert set(ids) == {id(p) for p in model.parameters()}, "a parameter is missing from the groups"
    assert all(len(g) > 0 for g in groups)


def execution_order(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """Modules that own parameters, in the order they first run. Modules with submodules are left out:
    a hook tells when they start, not when they use their own parameters (a ViT's cls_token, CoaT's
    per-stage class tokens)."""
    order: list[nn.Module] = []

    def record(module, _inputs):
        if not any(module is m for m in order):
            order.append(module)

    owners = [m for m in model.modules()
              if any(p is not None for p in m._parameters.values()) and not any(True for _ in m.children())]
    handles = [m.register_forward_pre_hook(record) for m in owners]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return order


def assert_forward_order(model: nn.Module, groups: list[list[nn.Parameter]], x: torch.Tensor) -> None:
    """Along execution order, no module may use a group earlier than one already used."""
    group_of = {id(p): i for i, g in enumerate(groups) for p in g}
    highest = 0
    for module in execution_order(model, x):
        ids = [group_of[id(p)] for p in module._parameters.values() if p is not None]
        assert min(ids) >= highest, f"{type(module).__name__} (groups {ids}) runs after group {highest}"
        highest = max(highest, max(ids))
    assert highest == len(groups) - 1  # the head runs last


@pytest.mark.parametrize("arch,kwargs,size", ARCHS, ids=[a for a, _, _ in ARCHS])
def test_timm_groups_partition_in_forward_order(arch, kwargs, size):
    torch.manual_seed(0)
    model = transfer_model(arch, **kwargs)
    groups = layer_groups(model)
    assert len(groups) >= 4, f"{arch}: only {len(groups) - 1} body groups"
    assert_partition(model, groups)
    assert [id(p) for p in groups[-1]] == [id(p) for p in model.head.parameters()]
    assert_forward_order(model, groups, torch.randn(1, 3, size, size))
    names = group_names(model, groups)
    assert len(names) == len(groups) and names[-1] == "head"


def test_resnet_groups_are_stem_and_stages():
    model = transfer_model("resnet18")
    coarse, fine = layer_groups(model, "coarse"), layer_groups(model, "fine")
    # resnet18: stem, 4 stages of 2 basic blocks each, then the head
    assert len(coarse) == 1 + 4 + 1 and len(fine) == 1 + 8 + 1
    assert group_names(model, coarse) == ["conv1, bn1", "layer1", "layer2", "layer3", "layer4", "head"]
    assert group_names(model, fine)[1:3] == ["layer1.0", "layer1.1"]
    assert body_groups(model.body)[0] == ["conv1.weight", "bn1.weight", "bn1.bias"]


def test_efficientnet_fine_is_per_block():
    body = _body("tf_efficientnet_lite0").body
    coarse, fine = body_groups(body, "coarse"), body_groups(body, "fine")
    # EfficientNet-B0/lite0: 7 stages repeated 1, 2, 2, 3, 3, 4, 1 times -> 16 blocks, plus the stem
    assert len(coarse) == 1 + 7 and len(fine) == 1 + 16
    # conv_head and bn2 run after the last stage: they join the last group
    assert {"conv_head.weight", "bn2.weight", "bn2.bias"} <= set(coarse[-1])


def test_unmatched_final_norm_joins_last_body_group():
    # timm's convnext matcher leaves head.norm unmatched (its own trailing group); it runs after stage 3.
    model = transfer_model("convnext_atto")
    groups = body_groups(model.body)
    assert len(groups) == 1 + 4
    assert groups[-1][-2:] == ["head.norm.weight", "head.norm.bias"]
    assert all(n.startswith("stages.3.") for n in groups[-1][:-2])
    assert group_names(model, layer_groups(model))[-2:] == ["stages.3, body.head", "head"]


def test_vit_group_names():
    model = transfer_model("vit_tiny_patch16_224", img_size=64)
    names = group_names(model, layer_groups(model))
    assert names[0] == "cls_token, pos_embed, patch_embed"
    assert names[-2:] == ["blocks.11, norm", "head"]
    assert len(names) == 1 + 12 + 1


def test_max_groups_merges_smallest_neighbours():
    model = transfer_model("resnet18")
    two = body_groups(model.body, max_groups=2)
    # layer4 holds 8.4M of resnet18's 11.2M parameters: everything before it merges first
    assert all(n.startswith("layer4.") for n in two[1])
    assert len(two[0]) + len(two[1]) == len(list(model.body.parameters()))


def test_merge_groups_by_size():
    groups = [["a"], ["b"], ["c"], ["d"]]
    # sizes 1, 10, 2, 3: neighbour sums 11, 12, 5 -> merge c+d; then 11, 15 -> merge a+b
    assert merge_groups(groups, [1, 10, 2, 3], 2) == [["a", "b"], ["c", "d"]]
    assert merge_groups(groups, [1, 10, 2, 3], 4) == groups


def test_torchvision_resnet18_groups():
    torchvision = pytest.importorskip("torchvision")
    info = cut_classifier(torchvision.models.resnet18(), input_size=64)
    model = TransferModel(info.body, nn.Linear(info.num_features, 2))
    groups = layer_groups(model)
    assert_partition(model, groups)
    assert group_names(model, groups) == ["conv1, bn1", "layer1", "layer2", "layer3", "layer4", "head"]
    assert_forward_order(model, groups, torch.randn(1, 3, 64, 64))


def test_torchvision_mobilenet_features_are_split():
    torchvision = pytest.importorskip("torchvision")
    info = cut_classifier(torchvision.models.mobilenet_v3_small(), input_size=64)
    model = TransferModel(info.body, nn.Linear(info.num_features, 2))
    groups = layer_groups(model)
    # `features` (13 blocks) holds most parameters, so it is split; merged to the default 6 body groups
    assert len(groups) == 6 + 1
    assert_partition(model, groups)
    assert_forward_order(model, groups, torch.randn(1, 3, 64, 64))


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(16, 32, 3), nn.BatchNorm2d(32), nn.ReLU())
        self.block3 = nn.Sequential(nn.Conv2d(32, 64, 3), nn.BatchNorm2d(64), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, 10)

    def forward(self, x):
        return self.classifier(self.pool(self.block3(self.block2(self.block1(self.stem(x))))).flatten(1))


def test_hand_written_module_groups():
    info = cut_classifier(SmallNet(), input_size=32)
    model = TransferModel(info.body, nn.Linear(info.num_features, 2))
    groups = layer_groups(model)
    assert group_names(model, groups) == ["stem", "block1", "block2", "block3", "head"]
    assert_partition(model, groups)
    assert_forward_order(model, groups, torch.randn(1, 3, 32, 32))


def test_group_names_accepts_module_groups():
    info = cut_classifier(SmallNet(), input_size=32)
    model = TransferModel(info.body, nn.Linear(info.num_features, 2))
    assert group_names(model, [model.body, model.head]) == ["body", "head"]
    assert group_names(model.body, [model.body.stem, list(model.body.block1.parameters())]) == ["stem", "block1"]
    with pytest.raises(ValueError, match="not in the model"):
        group_names(model.body, [nn.Linear(1, 1)])


def test_flat_sequential_keeps_conv_and_its_norm_together():
    body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    assert generic_groups(body) == [["0.weight", "0.bias", "1.weight", "1.bias"],
                                    ["2.weight", "2.bias", "3.weight", "3.bias"]]


def test_bad_arguments():
    body = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="level"):
        body_groups(body, level="medium")
    with pytest.raises(ValueError, match="no parameters"):
        body_groups(nn.Sequential(nn.ReLU()))
    with pytest.raises(TypeError):
        layer_groups(body)  # not a TransferModel


# -- timm matchers of every shape, on small hand-made models (sizes chosen so that merges can be worked out) ---
class Matched(nn.Module):
    """A stem of 8 parameters and 5 blocks of 2, 4, 8, 16, 32 (weights only), with a timm-style group_matcher:
    `coarse_raises` models timm's RDNet (no coarse grouping), `matcher` replaces the whole matcher."""

    def __init__(self, coarse_raises=False, matcher=None, n_blocks=5):
        super().__init__()
        self.stem = nn.Linear(2, 4, bias=False)
        self.blocks = nn.ModuleList(nn.Linear(1, 2 ** (i + 1), bias=False) for i in range(n_blocks))
        self.coarse_raises, self.matcher = coarse_raises, matcher

    def group_matcher(self, coarse=False):
        if self.matcher is not None:
            return self.matcher
        if coarse and self.coarse_raises:
            raise NotImplementedError("no coarse grouping")
        return dict(stem=r"^stem", blocks=r"^blocks" if coarse else r"^blocks\.(\d+)")


BLOCK_NAMES = [[f"blocks.{i}.weight"] for i in range(5)]


def test_timm_groups_default_level_is_coarse_and_fine_is_per_block():
    from fastfreeze.models.groups import timm_groups
    body = Matched()
    assert timm_groups(body) == timm_groups(body, "coarse") == [["stem.weight"], [n[0] for n in BLOCK_NAMES]]
    assert timm_groups(body, "fine") == [["stem.weight"], *BLOCK_NAMES]


def test_a_model_without_coarse_groups_has_its_blocks_merged_to_six_groups():
    """Sizes 8 | 2, 4, 8, 16, 32: 6 groups, no merge; with two more blocks (64, 128): 8 groups, merged twice,
    smallest neighbours first: 2+4 = 6 (the smallest sum), then 8+6 = 14 (stem and the merged pair)."""
    from fastfreeze.models.groups import timm_groups
    assert timm_groups(Matched(coarse_raises=True)) == [["stem.weight"], *BLOCK_NAMES]
    names = [["stem.weight"]] + [[f"blocks.{i}.weight"] for i in range(7)]
    assert timm_groups(Matched(coarse_raises=True, n_blocks=7), "fine") == names
    assert timm_groups(Matched(coarse_raises=True, n_blocks=7)) == [
        names[0] + names[1] + names[2], *names[3:]]
    assert timm_groups(Matched(coarse_raises=True), "fine") == [["stem.weight"], *BLOCK_NAMES]

    class NoUsableGroups(Matched):  # no coarse grouping, and the fine one puts everything in one group
        def group_matcher(self, coarse=False):
            if coarse:
                raise NotImplementedError("no coarse grouping")
            return dict(everything=r"^(?:stem|blocks)")
    assert timm_groups(NoUsableGroups()) is None and timm_groups(NoUsableGroups(), "fine") is None


def test_matchers_that_place_every_name_or_too_few_groups():
    from fastfreeze.models.groups import timm_groups

    def by_prefix(name):  # a callable matcher, as some timm models have: unknown names go to group -1 (first)
        return 0 if name.startswith("stem") else (int(name.split(".")[1]) + 1 if name.startswith("blocks") else -1)
    # every name placed: the sentinel's own group (-1) is dropped, the others stay as they are
    assert timm_groups(Matched(matcher=by_prefix)) == [["stem.weight"], *BLOCK_NAMES]
    two = dict(stem=r"^stem", blocks=r"^blocks")  # exactly two groups: kept
    assert timm_groups(Matched(matcher=two), "fine") == [["stem.weight"], [n[0] for n in BLOCK_NAMES]]
    one = dict(stem=r"^(?:stem|blocks)")  # one group: no use as a split, so no matcher
    assert timm_groups(Matched(matcher=one)) is None
    nothing = dict(stem=r"^nothing_matches")
    assert timm_groups(Matched(matcher=nothing)) is None


def test_max_groups_reaches_generic_splits_and_layer_groups():
    from fastfreeze.models.groups import DEFAULT_MAX_GROUPS
    deep = nn.Sequential(*[nn.Linear(2, 2) for _ in range(14)])  # no matcher: the generic split
    assert len(body_groups(deep)) == DEFAULT_MAX_GROUPS["coarse"] == 6
    assert len(body_groups(deep, "fine")) == DEFAULT_MAX_GROUPS["fine"] == 12
    assert body_groups(deep, max_groups=1) == [[n for n, _ in deep.named_parameters()]]
    assert generic_groups(deep, max_groups=1) == [[n for n, _ in deep.named_parameters()]]
    model = TransferModel(deep, nn.Linear(2, 3))
    groups = layer_groups(model, max_groups=2)
    assert len(groups) == 3 and [id(p) for p in groups[-1]] == [id(p) for p in model.head.parameters()]
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"max_groups must be at least 1, got {bad}"):
            body_groups(deep, max_groups=bad)
        with pytest.raises(ValueError, match=f"max_groups must be at least 1, got {bad}"):
            generic_groups(deep, max_groups=bad)


@pytest.mark.parametrize("rest,split", [(7, True), (8, False), (12, False)])
def test_a_child_is_split_only_when_it_holds_more_than_half_of_the_parameters(rest, split):
    """`big` holds 8 parameters in two sub-layers; `rest` 7, 8 or 12: more than half, exactly half, 40%."""
    body = nn.Sequential()
    body.add_module("big", nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)))
    body.add_module("rest", nn.Linear(rest, 1, bias=False))
    expected = [["big.0.weight"], ["big.1.weight"]] if split else [["big.0.weight", "big.1.weight"]]
    assert generic_groups(body) == expected + [["rest.weight"]]


def test_a_modules_own_parameters_are_a_unit_before_its_children():
    class WithOwn(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))
            self.embed = nn.Linear(3, 3)
            self.out = nn.Linear(3, 3)
            self.out.weight = self.embed.weight  # tied: listed once, where it first appears
    assert generic_groups(WithOwn()) == [["scale"], ["embed.weight", "embed.bias"], ["out.bias"]]


def test_group_names_shorten_long_groups_and_name_empty_ones():
    body = nn.Sequential(*[nn.Linear(2, 2) for _ in range(6)])
    groups = [list(body[:4].parameters()), list(body[4:5].parameters()), list(body[5].parameters())]
    assert group_names(body, groups) == ["0 ... 3 (4 parts)", "4", "5"]
    three = [list(body[:3].parameters()), list(body[3:].parameters())]
    assert group_names(body, three) == ["0, 1, 2", "3, 4, 5"]
    assert group_names(body, three, max_parts=2) == ["0 ... 2 (3 parts)", "3 ... 5 (3 parts)"]
    assert group_names(body, [[], list(body.parameters())]) == ["(empty)", "0 ... 5 (6 parts)"]
