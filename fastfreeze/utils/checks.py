"""Checks of arguments written once: numbers that are not bools, whole numbers in a range, epochs.

A whole number that is not one (a float or a bool where an int belongs) or is out of range raises
`WholeNumberError`: one type for that mistake, which is both a TypeError and a ValueError (as NumPy's `AxisError`
is both a ValueError and an IndexError), so `except TypeError` and `except ValueError` both catch it.
"""
from __future__ import annotations

import numbers
from typing import Any, Optional


class WholeNumberError(TypeError, ValueError):
    """An argument that must be a whole number in a range is not (see the module docstring)."""


def is_int(value: Any) -> bool:
    """An int (Python's or NumPy's), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A real number (an int or a float, Python's or NumPy's), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(value: Any, name: str, low: int = 1, high: Optional[int] = None, unit: str = "") -> int:
    """`value` as an int when it is a whole number in `[low, high]` (`high=None`: no upper bound), else a
    `WholeNumberError` naming `name` and the range, with `unit` in brackets (e.g. 'training steps')."""
    if is_int(value) and value >= low and (high is None or value <= high):
        return int(value)
    kind = ("a positive integer" if low == 1 and high is None else
            f"an int >= {low}" if high is None else f"an int in [{low}, {high}]")
    raise WholeNumberError(f"{name} must be {kind}{f' ({unit})' if unit else ''}, got {value!r}")


def check_epochs(n_epoch: Any, name: str = "n_epoch") -> int:
    """`n_epoch` as an int when it is a whole number of epochs >= 0, else a `WholeNumberError`."""
    if not is_int(n_epoch):
        raise WholeNumberError(f"{name} must be a whole number of epochs (an int), got {n_epoch!r}: fastfreeze trains "
                               "whole epochs; for fewer steps, use less data per epoch")
    if n_epoch < 0:
        raise WholeNumberError(f"{name} must be >= 0, got {n_epoch}")
    return int(n_epoch)
