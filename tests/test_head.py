"""Heads: layer layout written out by hand from docs/head.md, initialization statistics, pooling by hand."""
import math

import pytest
import torch
import torch.nn as nn

from fastfreeze.models.head import AdaptiveConcatPool2d, create_head, head_from_layers, projection_head


def layout(head: nn.Sequential) -> list[tuple]:
    """A plain description of each layer: what the expected lists below are written in."""
    out = []
    for m in head:
        if isinstance(m, AdaptiveConcatPool2d):
            out.append(("ConcatPool",))
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            out.append(("AvgPool", m.output_size))
        elif isinstance(m, nn.Flatten):
            out.append(("Flatten",))
        elif isinstance(m, nn.BatchNorm1d):
            out.append(("BN", m.num_features))
        elif isinstance(m, nn.Dropout):
            out.append(("Drop", m.p))
        elif isinstance(m, nn.Linear):
            out.append(("Lin", m.in_features, m.out_features, m.bias is not None))
        elif isinstance(m, nn.ReLU):
            out.append(("ReLU",))
        else:
            out.append((type(m).__name__,))
    return out


def test_default_head_layout():
    head = create_head(512, 10)
    assert layout(head) == [
        ("ConcatPool",), ("Flatten",),
        ("BN", 1024), ("Drop", 0.25), ("Lin", 1024, 512, False), ("ReLU",),
        ("BN", 512), ("Drop", 0.5), ("Lin", 512, 10, False),
    ]
    head.eval()
    assert head(torch.randn(2, 512, 3, 3)).shape == (2, 10)


def test_lin_ftrs_two_hidden_layers():
    head = create_head(64, 5, lin_ftrs=[256, 128])
    assert layout(head) == [
        ("ConcatPool",), ("Flatten",),
        ("BN", 128), ("Drop", 0.25), ("Lin", 128, 256, False), ("ReLU",),
        ("BN", 256), ("Drop", 0.25), ("Lin", 256, 128, False), ("ReLU",),
        ("BN", 128), ("Drop", 0.5), ("Lin", 128, 5, False),
    ]
    assert head(torch.randn(4, 64, 2, 2)).shape == (4, 5)  # train mode, batch of 4


def test_ps_list_one_per_block():
    head = create_head(16, 3, lin_ftrs=[32, 8], ps=[0.1, 0.2, 0.3])
    assert [m.p for m in head if isinstance(m, nn.Dropout)] == [0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match="3"):
        create_head(16, 3, lin_ftrs=[32, 8], ps=[0.1, 0.2])


def test_average_pool_head():
    head = create_head(64, 7, concat_pool=False)
    assert layout(head) == [
        ("AvgPool", 1), ("Flatten",),
        ("BN", 64), ("Drop", 0.25), ("Lin", 64, 512, False), ("ReLU",),
        ("BN", 512), ("Drop", 0.5), ("Lin", 512, 7, False),
    ]


def test_no_pool_head_takes_pooled_features():
    head = create_head(192, 4, pool=False)
    assert layout(head) == [
        ("BN", 192), ("Drop", 0.25), ("Lin", 192, 512, False), ("ReLU",),
        ("BN", 512), ("Drop", 0.5), ("Lin", 512, 4, False),
    ]
    head.eval()
    assert head(torch.randn(3, 192)).shape == (3, 4)


def test_first_bn_false_gives_first_linear_a_bias():
    head = create_head(64, 2, first_bn=False)
    assert layout(head) == [
        ("ConcatPool",), ("Flatten",),
        ("Drop", 0.25), ("Lin", 128, 512, True), ("ReLU",),
        ("BN", 512), ("Drop", 0.5), ("Lin", 512, 2, False),
    ]


def test_bn_final_appends_batchnorm_on_outputs():
    head = create_head(64, 2, bn_final=True)
    assert layout(head)[-2:] == [("Lin", 512, 2, False), ("BN", 2)]
    assert head[-1].momentum == 0.01


def test_lin_first_puts_linear_before_norm():
    head = create_head(64, 2, lin_first=True)
    assert layout(head) == [
        ("ConcatPool",), ("Flatten",),
        ("Drop", 0.25), ("Lin", 128, 512, False), ("ReLU",), ("BN", 512),
        ("Drop", 0.5), ("Lin", 512, 2, True),
    ]
    head.eval()
    assert head(torch.randn(2, 64, 2, 2)).shape == (2, 2)


def test_bad_sizes_rejected():
    with pytest.raises(ValueError):
        create_head(0, 10)


def test_linear_init_is_kaiming_normal_fan_in():
    torch.manual_seed(0)
    head = create_head(512, 10, first_bn=False)  # first Linear: 1024 -> 512 with a bias
    big, small = [m for m in head if isinstance(m, nn.Linear)]
    # std of a normal estimated from n samples has relative standard error 1/sqrt(2n):
    # n = 524288 -> 0.1%, n = 5120 -> 1%; tolerances are about 5 of those.
    assert big.weight.std().item() == pytest.approx(math.sqrt(2 / 1024), rel=0.005)
    assert small.weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.05)
    assert abs(big.weight.mean().item()) < 5 * math.sqrt(2 / 1024) / math.sqrt(big.weight.numel())
    assert torch.equal(big.bias, torch.zeros(512))


def test_concat_pool_is_max_then_mean():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]], [[-1.0, -1.0], [-1.0, 3.0]]]])  # (1, 2, 2, 2)
    out = AdaptiveConcatPool2d()(x)
    # channel 0: max 6, mean 3; channel 1: max 3, mean 0; max pools first
    assert torch.equal(out.flatten(), torch.tensor([6.0, 3.0, 3.0, 0.0]))
    assert out.shape == (1, 4, 1, 1)
    y = torch.randn(3, 5, 4, 7)
    expected = torch.cat([y.amax(dim=(2, 3)), y.mean(dim=(2, 3))], dim=1)
    assert torch.allclose(AdaptiveConcatPool2d()(y).flatten(1), expected, atol=1e-6)


def test_head_from_layers_keeps_the_users_layers():
    layers = [nn.Linear(768, 256), nn.ReLU(), nn.Linear(256, 3)]
    weight = layers[0].weight.clone()
    head = head_from_layers(layers, nf=768)
    assert layout(head) == [("AvgPool", 1), ("Flatten",), ("Lin", 768, 256, True), ("ReLU",), ("Lin", 256, 3, True)]
    assert head[2] is layers[0] and head[4] is layers[2]
    assert torch.equal(head[2].weight, weight)  # not re-initialized
    assert head(torch.randn(2, 768, 4, 4)).shape == (2, 3)
    pooled = head_from_layers([nn.Linear(768, 3)], nf=768, pool=False)
    assert layout(pooled) == [("Lin", 768, 3, True)]
    concat = head_from_layers([nn.Linear(768, 3)], nf=384, concat_pool=True)
    assert layout(concat)[0] == ("ConcatPool",)


def test_head_from_layers_size_mismatch_names_both_numbers():
    with pytest.raises(ValueError) as err:
        head_from_layers([nn.Linear(512, 10)], nf=768)
    assert "512" in str(err.value) and "768" in str(err.value)
    with pytest.raises(ValueError) as err:  # the first sized layer may come after a Dropout
        head_from_layers([nn.Dropout(0.1), nn.BatchNorm1d(100), nn.Linear(100, 2)], nf=64)
    assert "100" in str(err.value) and "64" in str(err.value)
    with pytest.raises(ValueError) as err:  # concat pooling doubles the width
        head_from_layers([nn.Linear(64, 2)], nf=64, concat_pool=True)
    assert "128" in str(err.value)
    with pytest.raises(ValueError):
        head_from_layers([], nf=64)
    # no declared input size before a layer with parameters of an unknown kind: nothing to check
    assert len(head_from_layers([nn.LazyLinear(3)], nf=64, pool=False)) == 1
    assert len(head_from_layers([nn.PReLU(), nn.Linear(5, 3)], nf=64, pool=False)) == 2


def test_projection_head():
    torch.manual_seed(0)
    head = projection_head(512, 64)
    assert layout(head) == [("AvgPool", 1), ("Flatten",), ("Lin", 512, 512, True), ("ReLU",), ("Lin", 512, 64, True)]
    assert head(torch.randn(2, 512, 3, 3)).shape == (2, 64)
    small = projection_head(96, 64, hidden=128, pool=False)
    assert layout(small) == [("Lin", 96, 128, True), ("ReLU",), ("Lin", 128, 64, True)]
    assert small(torch.randn(5, 96)).shape == (5, 64)
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in head if isinstance(m, nn.Linear))
    assert head[2].weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.02)  # n = 262144


def test_y_range_ends_the_head_with_a_sigmoid_range():
    from fastfreeze.models.head import SigmoidRange
    head = create_head(8, 2, pool=False, y_range=(-1.0, 3.0))
    assert isinstance(head[-1], SigmoidRange)
    x = torch.tensor([[0.0, math.log(3.0)]])
    assert head[-1](x)[0].tolist() == pytest.approx([1.0, 2.0])  # -1 + 4 * (1/2, 3/4)
    with pytest.raises(ValueError, match="low < high"):
        SigmoidRange(1.0, 1.0)
