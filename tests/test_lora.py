"""LoRA through peft (finetune/lora.py, models/lora.py): the adapters' parameter counts worked out by hand from
the modules' shapes, the body frozen and the adapters and head trained, per-group lrs on the adapters, the merged
export (loaded without peft) and exact resume."""
import math
import sys

import pytest
import torch
import torch.nn as nn

pytest.importorskip("peft")

from fastfreeze import load_learner, vision_learner  # noqa: E402
from fastfreeze.core.checkpoint import CheckpointCallback  # noqa: E402
from fastfreeze.finetune.lora import LoRA, add_lora, trainable_parameters  # noqa: E402
from fastfreeze.finetune.strategies import Phase  # noqa: E402
from fastfreeze.models.lora import adapter_modules, merged_state_dict  # noqa: E402
from helpers import KillAfterEpoch, RecordLrs, array_dls  # noqa: E402

R = 8


def learner(arch, path=".", seed=0, **kwargs):
    torch.manual_seed(seed)
    return vision_learner(array_dls(size=32), arch, pretrained=False, progress=False, path=path, **kwargs)


def body_state(learn):
    """The body's own weights and buffers (the LoRA matrices left out), copied."""
    return {k: v.clone() for k, v in learn.model.body.state_dict().items() if "lora_" not in k}


# -- how many parameters the adapters add, by hand ---------------------------------------------------

# r * (in + out) per adapted Linear; r * (in * k * k + out) per adapted Conv2d (A: in -> r with the base
# kernel, B: 1x1 r -> out). Shapes read off timm's tiny test models (print(model)).
VIT = 6 * R * ((64 + 192) + (64 + 64) + (64 + 192) + (192 + 64))  # 6 blocks: qkv, proj, fc1, fc2
CONVNEXT = R * 2 * 5 * (24 * 1 + 32 * 2 + 48 * 4 + 64 * 2)  # fc1 d -> 4d and fc2 4d -> d, blocks (1, 2, 4, 2)
EFFICIENTNET = R * ((64 + 24) + (96 + 32) + (32 + 128) + (128 + 48) + (48 + 192) + (192 + 64))  # 1x1 pw/pwl


@pytest.mark.parametrize("arch,adapters,modules", [("test_vit", VIT, 24), ("test_convnext", CONVNEXT, 18),
                                                   ("test_efficientnet", EFFICIENTNET, 6)])
def test_default_targets_add_the_parameters_worked_out_by_hand(arch, adapters, modules):
    assert (VIT, CONVNEXT, EFFICIENTNET) == (43_008, 32_640, 8_384)
    learn = learner(arch, norm="frozen")
    head = sum(p.numel() for p in learn.model.head.parameters())
    base_total = sum(p.numel() for p in learn.model.parameters())
    add_lora(learn, r=R)
    summary = learn.lora_summary()
    assert (summary.adapters, summary.adapted_modules) == (adapters, modules)
    assert summary.total == base_total + adapters
    assert summary.trainable == adapters + head  # norm='frozen': nothing else of the body trains
    learn.unfreeze()
    assert trainable_parameters(learn.model) == (adapters + head, base_total + adapters)


def test_a_conv_target_with_a_3x3_kernel_follows_peft_conv2d_shapes():
    learn = learner("test_efficientnet")
    add_lora(learn, r=4, targets=["conv_exp"])  # blocks.1.0: 16 -> 64, blocks.2.0: 24 -> 96, both 3x3
    assert learn.lora_summary().adapters == 4 * (16 * 9 + 64) + 4 * (24 * 9 + 96) == 2080


def test_train_bn_counts_the_body_norm_parameters_as_trainable():
    learn = learner("test_vit", norm="train")
    norms = sum(m.weight.numel() + m.bias.numel() for m in learn.model.body.modules() if isinstance(m, nn.LayerNorm))
    head = sum(p.numel() for p in learn.model.head.parameters())
    add_lora(learn, r=R)
    assert learn.lora_summary().trainable == VIT + head + norms


# -- what trains ------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["test_vit", "test_efficientnet"])
def test_only_the_adapters_and_the_head_change(arch):
    learn = learner(arch, norm="frozen")
    before_body, before_head = body_state(learn), {k: v.clone() for k, v in learn.model.head.state_dict().items()}
    learn.fine_tune(2, base_lr=1e-2, strategy=LoRA(r=R))
    after_body = body_state(learn)
    renamed = {k.replace(".base_layer.", "."): v for k, v in after_body.items()}
    assert renamed.keys() == before_body.keys()
    assert all(torch.equal(renamed[k], before_body[k]) for k in before_body)  # BatchNorm statistics included
    head = learn.model.head.state_dict()
    assert any(not torch.equal(head[k], before_head[k]) for k in before_head)
    for module in adapter_modules(learn.model).values():
        assert module.lora_B["default"].weight.abs().max() > 0  # B starts at zero: it moved
    assert learn.recorder.phases == ["frozen"] * 3 + ["lora"] * 6 and learn.frozen_groups == 0  # 3 batches/epoch


def test_a_second_fine_tune_keeps_the_adapters_and_a_plain_fit_keeps_the_body_frozen():
    learn = learner("test_vit", norm="frozen")
    learn.fine_tune(1, base_lr=1e-2, strategy="lora")
    adapters = learn.lora_summary().adapters
    learn.fine_tune(1, base_lr=1e-2, strategy="lora")
    assert learn.lora_summary().adapters == adapters == VIT
    before = body_state(learn)
    learn.unfreeze()
    learn.fit(1, 1e-2)
    assert all(torch.equal(v, before[k]) for k, v in body_state(learn).items())


def test_each_adapter_is_in_its_base_module_group_and_gets_that_group_lr():
    learn = learner("test_vit", norm="frozen")
    groups_before = [{id(p) for p in g} for g in learn.layer_groups]
    group_of_module = {}
    for name, m in learn.model.body.named_modules():
        if name.startswith("blocks.") and isinstance(m, nn.Linear):
            group_of_module[name] = next(i for i, g in enumerate(groups_before) if id(m.weight) in g)
    rec = RecordLrs()
    base_lr, lr_mult = 1e-2, 100
    learn.fine_tune(1, base_lr=base_lr, lr_mult=lr_mult, strategy=LoRA(r=R, freeze_epochs=0), cbs=rec)
    param_group = {id(p): i for i, g in enumerate(learn.opt.param_groups) for p in g["params"]}
    for name, m in adapter_modules(learn.model.body).items():
        assert param_group[id(m.lora_A["default"].weight)] == group_of_module[name]
        assert param_group[id(m.lora_B["default"].weight)] == group_of_module[name]
    # 8 groups (embeddings, 6 blocks, head), slice(base_lr / lr_mult, base_lr): at every step group i runs at
    # the head's lr times lr_mult ** ((i - 7) / 7)
    g = learn.n_groups
    assert g == 8 and group_of_module["blocks.0.attn.qkv"] == 1 and group_of_module["blocks.5.mlp.fc2"] == 6
    assert len(rec.lrs) == 3
    for step in rec.lrs:
        for i in range(g):
            assert math.isclose(step[i], step[-1] * lr_mult ** ((i - (g - 1)) / (g - 1)), rel_tol=1e-9)
    assert max(step[-1] for step in rec.lrs) <= base_lr / 2


def test_lora_phases_are_fastai_recipe_with_lora_for_unfreezing():
    learn = learner("test_vit")
    disc = lambda head_lr: slice(head_lr / 100, head_lr)  # noqa: E731
    g = learn.n_groups
    frozen = Phase(1, g - 1, slice(1e-2), "frozen", pct_start=0.99, div=25.0)
    assert list(LoRA().phases(learn, 5, 1e-2, disc)) == [frozen, Phase(5, 0, slice(5e-5, 5e-3), "lora")]
    assert list(LoRA(freeze_epochs=0).phases(learn, 3, 1e-2, disc)) == [Phase(3, 0, slice(5e-5, 5e-3), "lora")]
    assert list(LoRA(freeze_epochs=2).phases(learn, 0, 1e-2, disc)) == [
        Phase(2, g - 1, slice(1e-2), "frozen", pct_start=0.99, div=25.0)]


# -- export: merged weights, loaded without peft ---------------------------------------------------

def test_merge_is_w_plus_b_a_times_alpha_over_r():
    learn = learner("test_vit")
    add_lora(learn, r=4, alpha=12)
    qkv = learn.model.body.blocks[0].attn.qkv
    torch.manual_seed(1)
    with torch.no_grad():
        qkv.lora_B["default"].weight.normal_()
    a, b = qkv.lora_A["default"].weight, qkv.lora_B["default"].weight
    expected = qkv.base_layer.weight + (b @ a) * 12 / 4
    merged = merged_state_dict(learn.model)
    assert torch.allclose(merged["body.blocks.0.attn.qkv.weight"], expected, atol=1e-6)
    assert not any("lora_" in k or "base_layer" in k for k in merged)
    assert adapter_modules(learn.model)  # the learner's own model keeps its adapters


@pytest.mark.parametrize("arch", ["test_vit", "test_convnext", "test_efficientnet"])
def test_export_is_merged_and_loads_without_peft(tmp_path, monkeypatch, arch):
    learn = learner(arch, path=tmp_path)
    plain_keys = set(learn.model.state_dict())
    learn.fine_tune(1, base_lr=1e-2, strategy="lora")
    folder = learn.export("export")
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now fails
    predictor = load_learner(folder)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    learn.model.eval()
    with torch.no_grad():
        expected = learn.model(x.contiguous(memory_format=torch.channels_last)
                               if learn.channels_last else x)
        got = predictor.forward(x)
    assert (got - expected).abs().max() < 1e-5
    from safetensors.torch import load_file
    assert set(load_file(str(folder / "model.safetensors"))) == plain_keys


# -- resume -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def uninterrupted_lora(tmp_path_factory):
    full = learner("test_vit", path=tmp_path_factory.mktemp("full"), ps=0.25)
    full.fine_tune(2, base_lr=1e-2, strategy=LoRA(r=4, dropout=0.1))
    return full


@pytest.mark.parametrize("phase,epoch", [("frozen", 0), ("lora", 0)])
def test_resume_of_a_lora_fine_tune_is_exact(tmp_path, uninterrupted_lora, phase, epoch):
    full = uninterrupted_lora
    expected = full.model.state_dict()

    killed = learner("test_vit", path=tmp_path / "run", ps=0.25)
    with pytest.raises(KeyboardInterrupt):
        killed.fine_tune(2, base_lr=1e-2, strategy=LoRA(r=4, dropout=0.1),
                         cbs=[CheckpointCallback(), KillAfterEpoch(epoch, phase)])
    resumed = learner("test_vit", path=tmp_path / "run", seed=123, ps=0.25)  # other head and adapter draws
    resumed.fine_tune(2, base_lr=1e-2, strategy=LoRA(r=4, dropout=0.1), resume_from="checkpoint")
    got = resumed.model.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert resumed.recorder.lrs == full.recorder.lrs
    assert resumed.recorder.phases == full.recorder.phases == ["frozen"] * 3 + ["lora"] * 6
    # the control: the interrupted run's weights differ, so the comparison above can fail
    assert any(not torch.equal(killed.model.state_dict()[k], expected[k]) for k in expected)


# -- errors -----------------------------------------------------------------------------------------

def test_an_unsupported_family_names_the_supported_ones_and_targets():
    learn = learner("test_resnet")
    with pytest.raises(ValueError, match=r"no default target modules for a ResNet body.*VisionTransformer.*"
                                         r"ConvNeXt.*EfficientNet.*targets="):
        learn.fine_tune(1, base_lr=1e-2, strategy="lora")
    assert not adapter_modules(learn.model)
    add_lora(learn, r=2, targets=["conv2"])  # explicit targets work on any family
    assert len(adapter_modules(learn.model)) == sum(1 for n, _ in learn.model.body.named_modules()
                                                    if n.endswith(".conv2"))


@pytest.mark.parametrize("targets,message", [(["nothing_here"], "names no module"),
                                             (["bn1"], "neither nn.Linear nor nn.Conv2d"),
                                             ("conv2", "list of module names")])
def test_bad_targets_say_what_to_name(targets, message):
    learn = learner("test_resnet")
    with pytest.raises((ValueError, TypeError), match=message):
        learn.fine_tune(1, base_lr=1e-2, strategy=LoRA(targets=targets))


@pytest.mark.parametrize("kwargs,message", [({"r": 0}, "rank r"), ({"alpha": -1}, "alpha"),
                                            ({"dropout": 1.0}, "dropout"), ({"freeze_epochs": -1}, "freeze_epochs")])
def test_bad_lora_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LoRA(**kwargs)


def test_without_peft_the_error_says_what_to_install(monkeypatch):
    learn = learner("test_vit")
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=r"pip install 'fastfreeze\[peft\]'"):
        learn.fine_tune(1, base_lr=1e-2, strategy="lora")


def test_show_groups_calls_a_body_group_with_adapters_partly_trainable():
    learn = learner("test_vit", norm="frozen")
    add_lora(learn, r=R)
    learn.unfreeze()
    states = [row["state"] for row in learn.groups_table()]
    assert states == ["frozen"] + ["partly trainable"] * 6 + ["trainable"]
    assert [row["trainable"] for row in learn.groups_table()][1:7] == [VIT // 6] * 6
