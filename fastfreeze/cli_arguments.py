"""The command line's arguments checked before anything is built: value types for argparse, paths, the
architecture, the pretrained weights and, for timm's hub weights, whether they can be had at all.

A mistake in the arguments raises `UsageError` (the command exits with 2), a failure of the run `RunError` (exit
1); both carry a message that says what to do, printed by `cli.main` as one line.
"""
from __future__ import annotations

import argparse
import difflib
import math
import os
import socket
from pathlib import Path
from typing import Any, Callable, Optional, Union
from urllib.parse import urlparse

import timm
import torch.hub
from huggingface_hub import try_to_load_from_cache
from timm.models import get_pretrained_cfg

from .models.weights import EFFICIENTNET_LITE_NAMES
from .utils.hub import HUB_PREFIXES

USAGE_EXIT, FAILURE_EXIT = 2, 1
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
NETWORK_TIMEOUT_S = 3.0  # how long the check of huggingface.co waits for a connection


class UsageError(Exception):
    """A mistake in the command's arguments (exit code 2)."""


class RunError(Exception):
    """A run that cannot go on, for a reason its message gives (exit code 1)."""


# ------------------------------------------------------------------------------------- argparse value types

def whole_number(low: int, unit: str) -> Callable[[str], int]:
    """An argparse `type`: an int >= `low` (`unit` says what it counts)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low} ({unit}), got {text!r}")
        return value
    parse.__name__ = "whole number"
    return parse


def learning_rate(text: str) -> Union[str, float]:
    """An argparse `type`: 'auto' or a finite number > 0."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0 or 'auto', got {text!r}: e.g. --lr 1e-3, or "
                                         "--lr auto to let fine_tune choose")
    return value


def fraction(text: str) -> float:
    """An argparse `type`: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1 (the share of each class held out "
                                         f"for validation), got {text!r}: e.g. --valid-pct 0.2")
    return value


def seed(text: str) -> int:
    """An argparse `type`: a seed in [0, 2**32 - 1] (NumPy's range)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2 ** 32:
        raise argparse.ArgumentTypeError(f"expected a whole number in [0, 4294967295], got {text!r}")
    return value


def pretrained(text: str) -> Union[bool, str]:
    """An argparse `type`: true, false, or a file / known name (checked by `check_pretrained`)."""
    return {"true": True, "false": False}.get(text.lower(), text)


# ------------------------------------------------------------------------------------- checks after parsing

def check_data_dir(data_dir: Path) -> None:
    """DATA_DIR must be an existing folder."""
    if not data_dir.exists():
        raise UsageError(f"DATA_DIR {data_dir} does not exist: pass the folder that holds train/<class>/ and "
                         "valid/<class>/ (or one folder per class, with --valid-pct 0.2)")
    if not data_dir.is_dir():
        raise UsageError(f"DATA_DIR {data_dir} is a file, not a folder: pass the folder that holds train/<class>/ "
                         "and valid/<class>/ (or one folder per class, with --valid-pct 0.2)")


def check_out(out: Path) -> None:
    """--out must be a folder, or a path where one can be created."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: --out names a folder (created if missing) for the plots, the "
                         "model and the checkpoint; pass another path")
    existing = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise UsageError(f"--out {out} cannot be created: {existing} is a file; pass another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: {existing} is not writable by this user; pass a folder you can write to")


def check_arch(arch: str) -> None:
    """--arch must be a timm architecture (or a Hub name); an unknown one is refused with the closest names."""
    if arch.startswith(HUB_PREFIXES) or timm.is_model(arch):
        return
    names = timm.list_models()
    close = difflib.get_close_matches(arch.lower(), names, n=5, cutoff=0.6)
    base = arch.split(".")[0].lower()
    close += [n for n in timm.list_models(f"*{base}*") if n not in close][:5 - len(close)] if base else []
    hint = f"close names: {', '.join(close)}" if close else f"none of timm's {len(names)} names is close"
    raise UsageError(f"unknown --arch {arch!r}: timm has no such architecture ({hint}); "
                     "python -c \"import timm; print(timm.list_models('*name*'))\" lists them")


def check_pretrained(value: Union[bool, str]) -> None:
    """--pretrained must be true, false, a known name or an existing weights file."""
    if isinstance(value, bool) or value in EFFICIENTNET_LITE_NAMES:
        return
    path = Path(value)
    choices = (f"pass true (timm's hub), false (random weights), a {'/'.join(WEIGHT_SUFFIXES)} file, or one of "
               f"{', '.join(EFFICIENTNET_LITE_NAMES)}")
    if not path.exists():
        raise UsageError(f"--pretrained {value}: no such file; {choices}")
    if not path.is_file() or path.suffix not in WEIGHT_SUFFIXES:
        raise UsageError(f"--pretrained {value} is not a weights file; {choices}")


# ------------------------------------------------------------------------------------- timm's hub weights offline

def hub_weights_cached(arch: str) -> bool:
    """Whether timm's pretrained weights for `arch` are already on this machine (Hugging Face or torch hub cache)."""
    cfg = get_pretrained_cfg(arch)
    if cfg is None:
        return False
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        for filename in filter(None, (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin")):
            if isinstance(try_to_load_from_cache(repo, filename, revision=revision or None), str):
                return True
    if cfg.url:
        return (Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)).is_file()
    return False


def network_problem(host: str, port: int = 443, timeout: float = NETWORK_TIMEOUT_S) -> Optional[str]:
    """None when a TCP connection to `host:port` opens within `timeout` seconds, else why not."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return None


def check_hub_weights_reachable(arch: str, env: Optional[dict[str, str]] = None) -> None:
    """For `--pretrained true`: the weights must be cached, or huggingface.co reachable (a 3 s check), else a
    `RunError` in one line instead of timm's retries and traceback. Behind a proxy the check is left to timm."""
    env = dict(os.environ) if env is None else env
    if arch.startswith(HUB_PREFIXES) or hub_weights_cached(arch):
        return
    fixes = ("pass --pretrained false (random weights), or --pretrained path/to/weights.safetensors|.pth (a file "
             "downloaded elsewhere), or run once with internet to fill the Hugging Face cache (HF_HOME)")
    if env.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise RunError(f"--pretrained true needs timm's weights for {arch!r}, which are not in the Hugging Face cache, "
                       f"and HF_HUB_OFFLINE is set: unset it to download them, or {fixes}")
    if any(env.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return  # a direct connection says nothing about the proxy: timm's download decides
    host = urlparse(env.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    problem = network_problem(host)
    if problem is not None:
        raise RunError(f"--pretrained true downloads timm's weights for {arch!r} from {host}, which cannot be "
                       f"reached ({problem}): {fixes}")


def check_arguments(args: Any) -> None:
    """Everything about `args` that can be checked without building the data or the model (`UsageError`), then,
    for `--pretrained true`, whether timm's weights can be had (`RunError`)."""
    if getattr(args, "data_dir", None) is not None:
        check_data_dir(args.data_dir)
    if getattr(args, "out", None) is not None:
        check_out(args.out)
    check_arch(args.arch)
    weights = getattr(args, "pretrained", None)
    if weights is not None:
        check_pretrained(weights)
        if weights is True:
            check_hub_weights_reachable(args.arch)
