"""Learning-rate specs: one lr per layer group from a float, a slice, a list or layer-wise decay
(docs/learning-rates.md), worked out by hand."""
import numpy as np
import pytest

from fastfreeze.lrs import expand_lrs, lrs_decay


def test_float_and_slice_of_the_head_lr():
    assert expand_lrs(1e-3, 3) == [1e-3] * 3
    assert expand_lrs(slice(1e-3), 3) == pytest.approx([1e-4, 1e-4, 1e-3])


def test_slice_lo_hi_is_geometric_over_the_groups():
    assert expand_lrs(slice(1e-5, 1e-3), 3) == pytest.approx([1e-5, 1e-4, 1e-3], rel=1e-12)
    assert expand_lrs(slice(1e-5, 1e-3), 5) == pytest.approx([1e-5, 3.16228e-5, 1e-4, 3.16228e-4, 1e-3], rel=1e-5)
    assert expand_lrs(slice(1e-5, 1e-3), 1) == [1e-3]


def test_lists_arrays_and_layer_decay():
    assert expand_lrs([1e-4, 2e-4, 3e-4], 3) == [1e-4, 2e-4, 3e-4]
    assert expand_lrs(np.array([5e-3]), 4) == [5e-3] * 4
    assert expand_lrs(lrs_decay(1.0, 0.5), 4) == [0.125, 0.25, 0.5, 1.0]  # head_lr * d**(G-1-i)
    with pytest.raises(ValueError, match="got 2 learning rates for 3 layer groups"):
        expand_lrs([1e-3, 1e-2], 3)
    with pytest.raises(ValueError, match="layer decay must be in"):
        lrs_decay(1.0, 1.5)


@pytest.mark.parametrize("spec", [float("nan"), float("inf"), -1e-3, 0.0, [1e-3, float("nan"), 1e-2],
                                  np.array([1e-3, -1e-2, 1e-2]), slice(-1e-3, 1e-2), slice(float("nan")),
                                  slice(1e-4, float("inf"))])
def test_every_lr_must_be_finite_and_positive(spec):
    with pytest.raises(ValueError, match=r"learning rates must be finite and > 0, got .* pass a positive lr"):
        expand_lrs(spec, 3)


def test_a_slice_from_high_to_low_is_an_error_that_gives_the_right_order():
    with pytest.raises(ValueError, match=r"slice\(0\.01, 0\.0001, None\) has lo > hi: .* slice\(0\.0001, 0\.01\)"):
        expand_lrs(slice(1e-2, 1e-4), 3)
    assert expand_lrs(slice(1e-3, 1e-3), 3) == pytest.approx([1e-3] * 3)  # lo == hi: the same lr everywhere


def test_numpy_arrays_and_scalars_are_lists_and_numbers():
    assert expand_lrs(np.array([1e-4, 1e-3, 1e-2]), 3) == pytest.approx([1e-4, 1e-3, 1e-2])
    assert expand_lrs(np.float32(0.5), 2) == [0.5, 0.5]
    with pytest.raises(TypeError, match="an lr spec is a number, a slice"):
        expand_lrs("fast", 3)
    with pytest.raises(ValueError, match="learning rates must be finite and > 0, got -1.0 in lrs_decay"):
        lrs_decay(-1.0)
