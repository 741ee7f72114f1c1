"""Checks of arguments written once: numbers that are not bools, whole numbers in a range, epochs, and the
hyper-parameters (weight decay, momentums, one-cycle divisors and warm-up, the head's dropout and sizes, a
callback class given for an object), each message saying what to pass instead.

A whole number that is not one (a float or a bool where an int belongs) or is out of range raises
`WholeNumberError`: one type for that mistake, which is both a TypeError and a ValueError (as NumPy's `AxisError`
is both a ValueError and an IndexError), so `except TypeError` and `except ValueError` both catch it.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Union


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


# -------------------------------------------------------------------------------------------------
# hyper-parameters: each checked where it enters (Learner, fit, fit_one_cycle, fine_tune, vision_learner,
# create_head, an export's config), with the same message whichever entry it came through
# -------------------------------------------------------------------------------------------------
def _finite_real(value: Any) -> bool:
    return is_real(value) and math.isfinite(value)


def check_wd(wd: Any, name: str = "wd") -> float:
    """Weight decay as a float: a finite number >= 0, else a ValueError (TypeError for a non-number) saying
    the usual range."""
    if not is_real(wd):
        raise TypeError(f"{name} (weight decay) must be a number, got {wd!r}: typical values are 1e-2 (the default) "
                        "to 1e-4; 0 turns weight decay off")
    if not (math.isfinite(wd) and wd >= 0):
        raise ValueError(f"{name} (weight decay) must be a finite number >= 0, got {wd!r}: typical values are 1e-2 "
                         "(the default) to 1e-4; 0 turns weight decay off (a negative decay makes the weights grow)")
    return float(wd)


def _as_list(value: Any) -> Optional[list[Any]]:
    """The items of a list, tuple, array or other sequence (not a string or a mapping); None for anything else."""
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__") or not hasattr(value, "__len__"):
        return None
    return list(value)


def check_moms(moms: Any, name: str = "moms") -> Optional[tuple[float, float, float]]:
    """One-cycle momentums as a tuple of 3 floats in [0, 1) (start, middle, end), or None (momentum left alone);
    else a ValueError (TypeError for something that is not 3 numbers) naming fastai's values."""
    if moms is None:
        return None
    hint = ("fastai's are (0.95, 0.85, 0.95) (for Adam they are beta1, which must stay below 1); moms=None leaves "
            "the optimizer's momentum alone")
    values = _as_list(moms)
    if values is None or len(values) != 3 or not all(is_real(m) for m in values):
        raise TypeError(f"{name} must be 3 momentums (start, middle, end), got {moms!r}: {hint}")
    if not all(_finite_real(m) and 0 <= m < 1 for m in values):
        raise ValueError(f"{name} must be 3 momentums each in [0, 1), got {tuple(values)!r}: {hint}")
    return (float(values[0]), float(values[1]), float(values[2]))


def check_div(div: Any, name: str = "div") -> float:
    """A one-cycle divisor (`div`: the cycle starts at lr/div; `div_final`: it ends at lr/div_final) as a float:
    a finite number >= 1, else a ValueError (TypeError for a non-number)."""
    what = {"div": "the cycle starts at lr/div; fastai's default is 25 (fine_tune's unfrozen phase: 5)",
            "div_final": "the cycle ends at lr/div_final; fastai's default is 1e5"}.get(name, "the lr is divided by it")
    if not is_real(div):
        raise TypeError(f"{name} must be a number >= 1, got {div!r}: {what}")
    if not (math.isfinite(div) and div >= 1):
        raise ValueError(f"{name} must be a finite number >= 1, got {div!r}: {what}; 1 keeps the peak lr there")
    return float(div)


def check_pct_start(pct_start: Any, name: str = "pct_start") -> float:
    """The fraction of a one-cycle's steps spent warming up, as a float in (0, 1], else a ValueError (TypeError
    for a non-number)."""
    hint = ("it is the fraction of the steps spent warming up to the peak lr: fit_one_cycle's default is 0.25, "
            "fine_tune's 0.3; 1 warms up for the whole fit")
    if not is_real(pct_start):
        raise TypeError(f"{name} must be a number in (0, 1], got {pct_start!r}: {hint}")
    if not 0 < pct_start <= 1:  # NaN fails too
        raise ValueError(f"{name} must be in (0, 1], got {pct_start}: {hint}")
    return float(pct_start)


def check_dropout(ps: Any, name: str = "ps") -> Union[float, list[float]]:
    """Dropout probabilities (one number, or one per block) each in [0, 1), else a ValueError (TypeError for
    something that is not numbers)."""
    hint = ("fastai's default head has ps=0.5 (0.25 before its hidden layer); 0 turns dropout off, and 1 would "
            "drop every feature")
    values = [ps] if is_real(ps) else _as_list(ps)
    if values is None or not values or not all(is_real(p) for p in values):
        raise TypeError(f"{name} (the head's dropout probabilities) must be a number or a list of numbers, "
                        f"got {ps!r}: {hint}")
    bad = [p for p in values if not (_finite_real(p) and 0 <= p < 1)]
    if bad:
        raise ValueError(f"{name} (the head's dropout probabilities) must each be in [0, 1), got {ps!r}: {hint}")
    return float(ps) if is_real(ps) else [float(p) for p in values]


def check_layer_sizes(lin_ftrs: Any, name: str = "lin_ftrs") -> Optional[list[int]]:
    """The head's hidden layer sizes as a list of positive ints (None: the default), else a ValueError
    (TypeError for something that is not a list of ints)."""
    if lin_ftrs is None:
        return None
    hint = "e.g. [512] (the default), [1024, 256] for two hidden layers, or [] for none"
    values = _as_list(lin_ftrs)
    if values is None or not all(is_int(n) for n in values):
        raise TypeError(f"{name} (the head's hidden layer sizes) must be a list of ints, got {lin_ftrs!r}: {hint}")
    if not all(n >= 1 for n in values):
        raise ValueError(f"{name} (the head's hidden layer sizes) must be positive ints, got {values!r}: {hint}")
    return [int(n) for n in values]


def check_not_a_class(value: Any, name: str = "callbacks") -> None:
    """A TypeError for a class given where an object belongs (`cbs=EMA` for `cbs=EMA()`)."""
    if isinstance(value, type):
        cls = value.__name__
        raise TypeError(f"{name} are objects: pass {cls}(), not the class {cls} (an instance of it, built with "
                        "its arguments if it takes any)")
