"""Learning-rate specs: one lr per layer group from a float, a slice, a list or layer-wise decay
(docs/learning-rates.md), worked out by hand."""
import numpy as np
import pytest

from fastfreeze.core.lrs import LayerDecay, expand_lrs, lrs_decay


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


def test_arrays_of_any_shape_are_read_in_order():
    assert expand_lrs(np.array([[1e-4], [2e-4], [3e-4]]), 3) == [1e-4, 2e-4, 3e-4]
    assert expand_lrs((1e-4, 2e-4), 2) == [1e-4, 2e-4]


def test_layer_decay_default_and_range():
    assert LayerDecay(1.0).expand(3) == [0.5625, 0.75, 1.0] and lrs_decay(1.0).expand(2) == [0.75, 1.0]
    assert lrs_decay(2.0, 1.0).expand(3) == [2.0, 2.0, 2.0]  # a decay of 1: every group at the head's lr
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError) as error:
            lrs_decay(1.0, bad)
        assert str(error.value) == f"layer decay must be in (0, 1], got {bad}"
    assert repr(lrs_decay(1e-3, 0.5)) == "lrs_decay(0.001, decay=0.5)"


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


LR_ERROR = ("learning rates must be finite and > 0, got {}: pass a positive lr (learn.lr_find() suggests one); to keep "
            "a layer group from training, freeze it (learn.freeze_to) instead of giving it lr 0")


@pytest.mark.parametrize("spec, where", [
    (-1e-3, "-0.001 in -0.001"),
    ([0.0], "0.0 in [0.0]"),
    ([1e-3, float("nan"), 1e-2], "nan (position 1) in [0.001, nan, 0.01]"),
    ([1e-3, None], "nan (position 1) in [0.001, None]"),  # None in a list reads as a missing number
    (np.array([1e-3, -1e-2, 1e-2]), "-0.01 (position 1) in array([ 0.001, -0.01 ,  0.01 ])"),  # repr, not str
    (slice(-1e-3, 1e-2), "-0.001 (position 0) in slice(-0.001, 0.01, None)"),
    (slice(float("inf")), "inf in slice(None, inf, None)"),
    # a decay that underflows: 1e-300 * (1e-100) ** 2 is below the smallest float
    (lrs_decay(1e-300, 1e-100), "0.0 (position 0) in lrs_decay(1e-300, decay=1e-100)"),
])
def test_an_lr_error_names_the_value_its_position_and_the_spec_as_given(spec, where):
    with pytest.raises(ValueError) as error:
        expand_lrs(spec, 3 if not isinstance(spec, list) or len(spec) != 2 else 2)
    assert str(error.value) == LR_ERROR.format(where)


@pytest.mark.parametrize("spec", [None, "1e-3", True, np.bool_(True)])
def test_specs_that_are_not_numbers_are_a_type_error(spec):
    with pytest.raises(TypeError) as error:
        expand_lrs(spec, 3)
    assert str(error.value) == ("an lr spec is a number, a slice, a list or array of numbers, or lrs_decay(...); "
                                f"got {spec!r}")


def test_a_slice_of_something_else_than_numbers_names_it():
    for bad, shown in ((slice("a", 1e-3), "'a'"), (slice(True), "True")):
        with pytest.raises(TypeError) as error:
            expand_lrs(bad, 3)
        assert str(error.value) == (f"learning rates must be numbers, got {shown} in {bad!r}: pass a float, a slice, "
                                    "or one number per layer group")
