"""`fastfreeze check DATA_DIR`: what `fine-tune` would read from an image folder, without training.

The data is built as `fine-tune` builds it (the same options, every image decoded once) and summarised: items per
class and split, the batch size and input size, and the files that were left out and why. `folder_summary` counts
from the DataLoaders' datasets and walks the folder itself for what was left out; when the data layer gives
DataLoaders a summary of their own (`dls.summary()`), `check` can print that instead.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from .data.image_data import IMAGE_EXTENSIONS

EXAMPLES = 3  # files named per kind of skipped file


@dataclass
class FolderSummary:
    """What `fine-tune` reads from a folder: `counts[class] = (training items, validation items)`, the layout,
    the batch and input sizes, and the files left out (`skipped[reason] = files`)."""
    data_dir: Path
    layout: str
    counts: dict[str, tuple[int, int]]
    batch_size: int
    train_batches: int
    input_size: Sequence[int]
    skipped: dict[str, list[Path]] = field(default_factory=dict)

    def warnings(self) -> list[str]:
        """Classes the training or the validation split lacks."""
        no_train = [c for c, (n_train, _) in self.counts.items() if n_train == 0]
        no_valid = [c for c, (_, n_valid) in self.counts.items() if n_valid == 0]
        found = []
        if no_train:
            found.append(f"no training images for {', '.join(no_train)}: the model would never learn "
                         f"{'these classes' if len(no_train) > 1 else 'this class'}; add some")
        if no_valid:
            found.append(f"no validation images for {', '.join(no_valid)}: accuracy says nothing about "
                         f"{'them' if len(no_valid) > 1 else 'it'}; add some to the validation split")
        return found

    def lines(self) -> list[str]:
        """The summary as printed."""
        n_train = sum(t for t, _ in self.counts.values())
        n_valid = sum(v for _, v in self.counts.values())
        width = max(len("class"), *(len(c) for c in self.counts))
        out = [f"{self.data_dir}: {len(self.counts)} classes, {n_train} training and {n_valid} validation images "
               f"({self.layout})",
               f"  {'class':<{width}}  {'train':>6}  {'valid':>6}"]
        out += [f"  {name:<{width}}  {t:>6}  {v:>6}" for name, (t, v) in self.counts.items()]
        out.append(f"batch size {self.batch_size} ({self.train_batches} training batches per epoch), input "
                   f"{'x'.join(str(s) for s in self.input_size[-2:])} px")
        if not self.skipped:
            out.append("skipped: nothing")
        for reason, files in self.skipped.items():
            names = ", ".join(str(f.relative_to(self.data_dir)) for f in files[:EXAMPLES])
            more = f", ... ({len(files)} in all)" if len(files) > EXAMPLES else ""
            out.append(f"skipped: {len(files)} {reason}: {names}{more}")
        out += [f"warning: {w}" for w in self.warnings()]
        return out


def class_counts(labels: Sequence[int], n_classes: int) -> list[int]:
    """How many items carry each label 0..n_classes-1."""
    counted = Counter(int(y) for y in labels)
    return [counted.get(i, 0) for i in range(n_classes)]


def skipped_files(roots: Sequence[Path], read: set[Path]) -> dict[str, list[Path]]:
    """The visible files under `roots` that are not in `read`, by why they were left out: directly in a split
    folder (not in a class folder), not an image by its extension, or other (e.g. a class the training split
    lacks). Symbolic links to folders are not followed."""
    suffixes = set(IMAGE_EXTENSIONS)
    found: dict[str, list[Path]] = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(f for f in files if not f.startswith(".")):
                path = Path(folder, name)
                if path.resolve() in read:
                    continue
                if Path(folder) == root:
                    reason = "file(s) outside the class folders"
                elif path.suffix.lower() not in suffixes:
                    reason = "file(s) that are not images (by their extension)"
                else:
                    reason = "image(s) not read for another reason"
                found.setdefault(reason, []).append(path)
    return found


def folder_summary(dls: Any, data_dir: Path, valid_pct: Optional[float]) -> FolderSummary:
    """Count what `dls` (built by `ImageDataLoaders.from_folder`) holds per class and split, and what it left out."""
    train_ds, valid_ds = dls.train.dataset, dls.valid.dataset
    vocab = list(dls.vocab)
    counts = dict(zip(vocab, zip(class_counts(train_ds.labels, len(vocab)), class_counts(valid_ds.labels, len(vocab)))))
    roots = [data_dir] if valid_pct is not None else [data_dir / "train", data_dir / "valid"]
    read = {Path(p).resolve() for p in [*train_ds.items, *valid_ds.items]}
    layout = (f"one folder per class, {valid_pct:.0%} of each held out for validation" if valid_pct is not None
              else "train/ and valid/")
    return FolderSummary(data_dir, layout, counts, dls.train.batch_size, len(dls.train),
                         tuple(dls.data_config["input_size"]), skipped_files(roots, read))
