"""`--resume` with the arguments of the interrupted run: the arguments that decide a run are kept in its
checkpoint (`RunArguments`, a callback with a `state_key`), and a resume that gives other values is refused,
each difference named, before anything is built.

Arguments that do not change what is trained (where the results go, bars, workers: a run is bit-identical with
0 or 2 workers, how often it checkpoints, the final evaluation) may differ.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

from .cli_arguments import UsageError
from .core.callback import Callback

STATE_KEY = "command_line"
FREE_TO_CHANGE = frozenset({"command", "out", "resume", "no_bar", "workers", "checkpoint_every", "tta", "debug",
                            "data_dir", "data", "final_per_class"})


def run_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments that decide the run, as plain values (paths as text), by option name."""
    return {name: str(value) if isinstance(value, Path) else value
            for name, value in sorted(vars(args).items()) if name not in FREE_TO_CHANGE}


class RunArguments(Callback):
    """Keeps the command's `run_arguments` in every checkpoint the run writes."""
    state_key = STATE_KEY

    def __init__(self, arguments: dict[str, Any]):
        self.arguments = dict(arguments)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.arguments)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore: `check_resume_arguments` compared them before the run was built."""


def option(name: str, value: Any) -> str:
    """`name`'s value as it is written on the command line: `--valid-pct 0.2`, `--full` for a flag set."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"no {flag}"
    if value is None:
        return f"no {flag} (its default)"
    return f"{flag} {value}"


def recorded_arguments(state: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The arguments kept in a checkpoint's `state` (`read_checkpoint`); None for a checkpoint written without
    them (an older fastfreeze)."""
    return state["callbacks"].get(STATE_KEY)


def resume_differences(recorded: dict[str, Any], given: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """`(name, recorded value, given value)` for each argument whose value differs."""
    return [(name, recorded.get(name), given.get(name)) for name in sorted(set(recorded) | set(given))
            if recorded.get(name) != given.get(name)]


def check_resume_arguments(checkpoint: Path, state: dict[str, Any],
                           args: argparse.Namespace) -> Optional[dict[str, Any]]:
    """For `--resume`: the arguments recorded in `state`, the contents of `checkpoint` (None when it has none),
    after checking that `args` gives the same; a `UsageError` names each difference and the command lines that
    work."""
    recorded = recorded_arguments(state)
    if recorded is None:
        return None
    differences = resume_differences(recorded, run_arguments(args))
    if differences:
        listed = "; ".join(f"{option(name, saved)} in the checkpoint, {option(name, given)} given"
                           for name, saved, given in differences)
        wanted = " ".join(option(name, saved) for name, saved, _ in differences
                          if saved is not None and saved is not False)
        raise UsageError(f"--resume: {checkpoint} was written by a run with other arguments ({listed}). To go on "
                         f"from it, repeat the interrupted run's arguments{f' ({wanted})' if wanted else ''}; to "
                         "start afresh with these, drop --resume or choose another --out")
    return recorded
