"""Warnings said once per process."""
from __future__ import annotations

import warnings

_warned: set[str] = set()


def warn_once(message: str) -> None:
    """`warnings.warn(message)` the first time this process meets `message`."""
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)
