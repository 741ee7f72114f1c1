"""What a fit shows while it runs: fastprogress bars and the per-epoch table (docs/progress.md)."""
from __future__ import annotations

import contextlib
import io
import math
import sys
import time
from typing import Any, Optional

from .callback import Callback


def _format_row(values: list[Any]) -> list[str]:
    return [f"{v:.6f}" if isinstance(v, float) else str(v) for v in values]


class ProgressCallback(Callback):
    """fastprogress bars: a master bar over epochs, a bar over batches with the smoothed loss as comment,
    and the per-epoch table `epoch train_loss valid_loss <metrics> time` (docs/progress.md).

    The smoothed loss in the comment is read back from the device (a synchronisation) at most every
    `refresh_every` steps and every `refresh_seconds` seconds, so it may lag; the Recorder's losses are exact.
    """
    order = 60

    def __init__(self, refresh_every: int = 10, batch_bars: Optional[bool] = None, refresh_seconds: float = 0.5):
        self.refresh_every, self.refresh_seconds = refresh_every, refresh_seconds
        self.batch_bars = batch_bars
        self.last_read = -math.inf
        self.mbar = None
        self.pbar = None

    def before_fit(self) -> None:
        from fastprogress.fastprogress import IN_NOTEBOOK, master_bar
        # fastprogress's console bar prints a test glyph ('█' and a carriage return) when it is created, which a log
        # file keeps in front of the table's header: the master bar never draws itself, so its glyph is dropped
        with contextlib.nullcontext() if IN_NOTEBOOK else contextlib.redirect_stdout(io.StringIO()):
            self.mbar = master_bar(list(range(self.learn.start_epoch, self.learn.n_epoch)))
        self._epochs = iter(self.mbar)
        names = ["epoch"] + self.learn.recorder.metric_names + ["time"]
        self.mbar.write(names, table=True)

    def before_epoch(self) -> None:
        if self.mbar is not None:
            next(self._epochs, None)

    def before_train(self) -> None:
        self._wrap_dl()

    def before_validate(self) -> None:
        self._wrap_dl()

    def _wrap_dl(self) -> None:
        """Show a bar over the batches: in Jupyter or a terminal (a log file gets only the epoch table)."""
        from fastprogress.fastprogress import IN_NOTEBOOK, progress_bar
        show = self.batch_bars if self.batch_bars is not None else (IN_NOTEBOOK or sys.stdout.isatty())
        if not show:
            self.pbar = None
            return
        try:
            total = len(self.learn.dl)
        except TypeError:
            total = "noinfer"
        self.pbar = progress_bar(self.learn.dl, total=total, parent=self.mbar, leave=False)
        self.learn.dl = self.pbar

    def after_batch(self) -> None:
        if self.pbar is None or not self.learn.training or self.learn.iter % self.refresh_every:
            return
        now = time.perf_counter()
        if now - self.last_read >= self.refresh_seconds:
            self.pbar.comment = f"{float(self.learn.smooth_loss):.4f}"
            self.last_read = now

    def after_epoch(self) -> None:
        from fastprogress.fastprogress import format_time
        row = self.learn.recorder.values[-1]
        cells = [row["epoch"]] + [row.get(n, math.nan) for n in self.learn.recorder.metric_names]
        self.mbar.write(_format_row(cells) + [format_time(row["time"])], table=True)

    def after_fit(self) -> None:
        if self.mbar is not None:
            try:
                self.mbar.on_iter_end()
            finally:
                self.mbar = None
