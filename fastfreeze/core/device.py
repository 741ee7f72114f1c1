"""Where tensors go and in which precision: the default device, the autocast dtype of a precision setting,
and batches moved to the device in the memory format the model runs in (channels_last for CNNs)."""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Optional

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def default_device() -> torch.device:
    """The first CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for `precision` on `device` (None: full fp32). 'auto' is bf16 on CUDA GPUs that
    support it and fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> contextlib.AbstractContextManager:
    """`torch.autocast` on `device` to `dtype`, or nothing when `dtype` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def as_model_input(x: Any, channels_last: bool) -> Any:
    """`x` in the memory format the model runs in: a 4-D tensor becomes channels_last when `channels_last`."""
    if channels_last and isinstance(x, torch.Tensor) and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def move_batch(batch: Sequence[Any], device: torch.device, channels_last: bool = False) -> tuple[tuple, tuple]:
    """A batch `(x1, ..., xn, y)` on `device` (tensors only, copied without blocking) as `(inputs, (y,))`,
    the inputs in the model's memory format."""
    if not isinstance(batch, (list, tuple)) or len(batch) < 2:
        raise TypeError("each batch must be a tuple (x, y) (or (x1, ..., xn, y)); got "
                        f"{type(batch).__name__}")
    moved = [b.to(device, non_blocking=True) if isinstance(b, torch.Tensor) else b for b in batch]
    return tuple(as_model_input(x, channels_last) for x in moved[:-1]), tuple(moved[-1:])
