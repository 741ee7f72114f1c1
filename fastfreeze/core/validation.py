"""One validation path for labelled data. Every way data comes in (folders, tables, lists, arrays, tensors and
`test_dl`) goes through these checks, so the same problem gets the same message wherever it comes from:

- `check_classes`: single-label class indices against the training and validation splits: a single training
  class, classes seen only in validation, and classes without any training example (integer labels with gaps,
  `[0, 1, 5]`). When the classes were inferred from the labels these are refused (the model would get outputs it
  never trains, or learn nothing); when the user named them (`vocab=`, `c=`) they are warnings naming the classes;
- `check_known_classes`: labels given for new data (`test_dl`) must be classes the data already has;
- `find_duplicates`: an item (a file, compared by its real path) listed twice: refused when the labels differ or
  when it lands in both training and validation, counted once otherwise;
- `spelling_variants`: labels that differ only by case or surrounding spaces (`'cat'`, `'cat '`, `'Cat'`);
- `check_tags`: multi-label tags against the training and validation splits, by the same rule as
  `check_classes`: tags read from the labels that occur only in validation are refused; tags the user named
  (`vocab=`, the columns of multi-hot arrays) without a training example are a warning;
- `whole_number_floats`: float targets that are all whole numbers (class ids or regression values?);
- `warn_classes_without_validation`: classes (tags) that the validation split lacks, whose scores say nothing.

`DataReport` is what `dls.summary()` prints and returns: items per class and split, what was skipped and why,
and the warnings given while the data was built.
"""
from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

MAX_LISTED = 20  # items listed in a message or a summary before "... and N more"


def listing(entries: Sequence[str], limit: int = MAX_LISTED, indent: str = "  ") -> str:
    """`entries` one per line, at most `limit` of them, then how many more there are."""
    lines = [f"{indent}{e}" for e in entries[:limit]]
    if len(entries) > limit:
        lines.append(f"{indent}... and {len(entries) - limit} more")
    return "\n".join(lines)


def warn_data(message: str, notes: Optional[list[str]] = None) -> None:
    """Warn about the data (`UserWarning`) and keep the message in `notes` for the summary."""
    if notes is not None:
        notes.append(message)
    warnings.warn(message, UserWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------------ classes

def _class_name(vocab: Optional[Sequence[str]], index: int) -> Any:
    return vocab[index] if vocab is not None and index < len(vocab) else index


def check_classes(train: Any, valid: Any = None, vocab: Optional[Sequence[str]] = None, c: Optional[int] = None,
                  fix: Optional[str] = "pass vocab= naming every class", notes: Optional[list[str]] = None,
                  named: Optional[bool] = None) -> int:
    """The number of classes of single-label class indices `train` (and `valid`), checked.

    Without `vocab` or `c` the classes are what the labels show (`max + 1`), and the data must make sense on its
    own: at least 2 training classes, no class only in validation, no class index without a training example
    (a gap). Each is a ValueError that ends in `fix`, the way to name the classes instead. With `vocab` or `c`
    the user named the classes: labels beyond them are refused, and classes without a training example are a
    warning naming them (kept in `notes`). `named=False`: a `vocab` read from the data itself (folder names,
    the values of a table), which names the classes in messages but is checked as inferred."""
    train = torch.as_tensor(train).reshape(-1).long()
    if train.numel() == 0:
        raise ValueError("there are no training labels: pass at least one item per class")
    valid = None if valid is None else torch.as_tensor(valid).reshape(-1).long()
    every = train if valid is None or valid.numel() == 0 else torch.cat([train, valid])
    if int(every.min()) < 0:
        raise ValueError(f"class indices must be >= 0, found {int(every.min())}")
    named = (vocab is not None or c is not None) if named is None else named
    n = len(vocab) if vocab is not None else (c if c is not None else int(every.max()) + 1)
    if int(every.max()) >= n:
        what = f"vocab names {n} classes" if vocab is not None else f"c={n}"
        raise ValueError(f"labels go up to {int(every.max())} but {what}: class indices must be 0..{n - 1}; "
                         f"name every class (vocab=) or fix the labels")
    seen = torch.unique(train)
    counts = torch.bincount(train, minlength=n)
    if not named:
        if len(seen) < 2:
            only = int(seen[0])
            raise ValueError(f"the training labels hold a single class ({_class_name(vocab, only)!r}, "
                             f"{train.numel()} items): a classifier needs at least 2. Add items of the other "
                             f"classes" + (f", or, if the model should have more outputs than these labels show, "
                                           f"{fix}" if fix else ""))
        if valid is not None and valid.numel():
            only_valid = [_class_name(vocab, int(v)) for v in torch.unique(valid) if int(counts[int(v)]) == 0]
            if only_valid:
                held = f"up to {int(seen.max())}" if vocab is None else _shown([vocab[int(i)] for i in seen])
                raise ValueError(f"validation label(s) {only_valid} never occur in the training labels (which hold "
                                 f"{len(seen)} classes, {held}): the model would get outputs it "
                                 f"never trains. Add training items of those classes or drop them from validation"
                                 + (f"; if the classes are meant to be there, {fix}" if fix else ""))
        gaps = [_class_name(vocab, i) for i in range(n) if int(counts[i]) == 0]
        if gaps:
            raise ValueError(f"the class indices have gaps: {_shown(gaps)} have no item although labels go up to "
                             f"{n - 1}, so the model would get {n} outputs, {len(gaps)} of which never train. "
                             f"Number the classes 0..{len(seen) - 1} (e.g. np.unique(y, return_inverse=True)[1])"
                             + (f", or, if these classes are meant to be there, {fix}" if fix else ""))
        return n
    missing = [i for i in range(n) if int(counts[i]) == 0]
    if missing:
        names = [_class_name(vocab, i) for i in missing]
        warn_data(f"{len(missing)} of the {n} classes have no training example: {_shown(names)}. The model gets "
                  f"outputs for them that never train: add training items of these classes, or leave them out of "
                  f"vocab=/c= if they are not meant to be predicted", notes)
    return n


def check_tags(train: Tensor, valid: Optional[Tensor] = None, vocab: Optional[Sequence[str]] = None,
               named: bool = True, fix: Optional[str] = "pass vocab= naming every tag",
               notes: Optional[list[str]] = None) -> None:
    """Multi-hot targets `(N, C)` of the training (and validation) items, checked by `check_classes`' rule:
    tags read from the labels (`named=False`) that no training item carries are refused (those seen only in
    validation, named as such), ending in `fix`; tags the user named (`vocab=`, or the columns of multi-hot
    arrays) without a training example are a warning naming them (kept in `notes`)."""
    n = train.shape[1]
    on_train = train.reshape(-1, n).sum(0)
    missing = [j for j in range(n) if int(on_train[j]) == 0]
    if not missing:
        return
    names = [_class_name(vocab, j) for j in missing]
    if named:
        warn_data(f"{len(missing)} of the {n} tags have no training example: {_shown(names)}. The model gets "
                  f"outputs for them that never train: add training items with these tags, or leave them out of "
                  f"vocab= if they are not meant to be predicted", notes)
        return
    on_valid = torch.zeros(n, dtype=on_train.dtype) if valid is None or valid.numel() == 0 else \
        valid.reshape(-1, n).sum(0)
    only_valid = [_class_name(vocab, j) for j in missing if int(on_valid[j]) > 0]
    held = [_class_name(vocab, j) for j in range(n) if int(on_train[j]) > 0]
    if only_valid:
        raise ValueError(f"validation tag(s) {_shown(only_valid)} never occur in the training labels (which hold "
                         f"{len(held)} tags, {_shown(held)}): the model would get outputs it never trains. Add "
                         f"training items with those tags or drop them from validation"
                         + (f"; if the tags are meant to be there, {fix}" if fix else ""))
    raise ValueError(f"tag(s) {_shown(names)} are on no item, so the model would get outputs that never train: "
                     f"drop them from the tags" + (f", or, if they are meant to be there, {fix}" if fix else ""))


def _shown(values: Sequence[Any], limit: int = MAX_LISTED) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


def check_known_classes(targets: Tensor, n_classes: Optional[int], vocab: Optional[Sequence[str]],
                        what: str = "test_dl labels") -> None:
    """Class indices of new data (`test_dl(items, labels=...)`) must be among the data's classes: a ValueError
    naming the labels that are not."""
    if n_classes is None or targets.numel() == 0:
        return
    targets = targets.reshape(-1)
    unknown = sorted({int(t) for t in targets[(targets < 0) | (targets >= n_classes)]})
    if unknown:
        known = f"the vocab {list(vocab)}" if vocab is not None else f"class indices 0..{n_classes - 1}"
        raise ValueError(f"{what} {unknown} are not among this data's classes ({known}): a model trained on "
                         f"this data has no output for them. Fix or drop those items")


def check_known_names(values: Sequence[Any], vocab: Optional[Sequence[str]], what: str = "test_dl labels") -> None:
    """Class names of new data must be in the data's vocab (surrounding spaces ignored): a ValueError naming the
    ones that are not, or saying that the data has no names (then give class indices)."""
    if vocab is None:
        raise ValueError(f"{what} are class names, but this data has no vocab (its classes are indices 0..c-1): "
                         f"pass class indices, or build the data with vocab=")
    known = set(vocab)
    unknown = list(dict.fromkeys(v for v in values if str(v).strip() not in known))
    if unknown:
        raise ValueError(f"{what} {_shown(unknown)} are not among this data's classes (the vocab {list(vocab)}): a "
                         f"model trained on this data has no output for them. Fix or drop those items")


# -------------------------------------------------------------------------------------------------- items

@dataclass
class Duplicates:
    """What `find_duplicates` found: the positions to keep, and `(row, why)` for each dropped one."""
    keep: list[int]
    dropped: list[tuple[str, str]] = field(default_factory=list)


def find_duplicates(keys: Sequence[Hashable], labels: Sequence[Hashable], rows: Sequence[str],
                    is_valid: Optional[Sequence[bool]] = None, notes: Optional[list[str]] = None) -> Duplicates:
    """Items whose `keys` are equal (files: their real paths). A ValueError, naming the rows, when an item is
    listed with different `labels` or in both training and validation (`is_valid`); the same item listed again
    with the same label in the same split is kept once, with a warning (kept in `notes`)."""
    first: dict[Hashable, int] = {}
    groups: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        j = first.setdefault(key, i)
        if j != i:
            groups.setdefault(j, [j]).append(i)
    if not groups:
        return Duplicates(list(range(len(keys))))
    relabelled = [g for g in groups.values() if len({labels[i] for i in g}) > 1]
    if relabelled:
        lines = [", ".join(f"{rows[i]}: {labels[i]!r}" for i in g) for g in relabelled]
        raise ValueError(f"{len(relabelled)} item(s) listed more than once with different labels; an image has "
                         f"one label:\n{listing(lines)}\nKeep one row per file, with its right label (or, for "
                         f"several tags per image, one row with a label_delim)")
    if is_valid is not None:
        split = [g for g in groups.values() if len({bool(is_valid[i]) for i in g}) > 1]
        if split:
            lines = [", ".join(f"{rows[i]} ({'valid' if is_valid[i] else 'train'})" for i in g) for g in split]
            raise ValueError(f"{len(split)} item(s) are in both the training and the validation data, which would "
                             f"score them on images the model trained on:\n{listing(lines)}\nKeep one row per "
                             f"file, in one split")
    dropped_at = {i: g[0] for g in groups.values() for i in g[1:]}
    dropped = [(rows[i], f"the same file as {rows[j]}: counted once") for i, j in dropped_at.items()]
    warn_data(f"{len(dropped)} item(s) repeat another with the same label and are counted once:\n"
              f"{listing([f'{r}: {why}' for r, why in dropped])}", notes)
    return Duplicates([i for i in range(len(keys)) if i not in dropped_at], dropped)


# ------------------------------------------------------------------------------------------------- labels

def spelling_variants(values: Sequence[Any]) -> list[list[str]]:
    """Groups of distinct string labels that differ only by case or surrounding spaces, e.g.
    `[['Dog', 'dog'], ['cat', 'cat ']]`."""
    groups: dict[str, set[str]] = {}
    for v in values:
        if isinstance(v, str):
            groups.setdefault(v.strip().casefold(), set()).add(v)
    return [sorted(g) for _, g in sorted(groups.items()) if len(g) > 1]


def warn_spelling_variants(values: Sequence[Any], notes: Optional[list[str]] = None) -> None:
    """Warn about labels that differ only by case or surrounding spaces: surrounding spaces are ignored (one
    class), case is not (separate classes); say how to normalise them."""
    groups = spelling_variants(values)
    if not groups:
        return
    shown = "; ".join(" / ".join(repr(v) for v in g) for g in groups[:MAX_LISTED])
    warn_data(f"labels that differ only by case or surrounding spaces: {shown}. Surrounding spaces are ignored, "
              f"but 'Cat' and 'cat' are separate classes. If they are the same class, normalise the labels first, "
              f"e.g. df[col] = df[col].str.strip().str.lower() (or [s.strip().lower() for s in labels])", notes)


def whole_number_floats(values: Tensor) -> bool:
    """True for float values that are all finite whole numbers (`0., 1., 2.`): class ids stored as floats?"""
    return (values.is_floating_point() and values.numel() > 0 and bool(torch.isfinite(values).all())
            and bool((values == values.round()).all()))


def warn_whole_number_floats(values: Tensor, chosen: str, notes: Optional[list[str]] = None) -> None:
    """Say which task float labels that are all whole numbers were read as, and how to choose the other."""
    distinct = torch.unique(values)
    span = f"{len(distinct)} distinct values, {float(distinct.min()):g} to {float(distinct.max()):g}"
    if chosen == "regression":
        warn_data(f"the labels are floats that are all whole numbers ({span}): read as regression targets "
                  f"(task='regression', MSE loss). If they are class ids, pass task='single_label' or integer "
                  f"labels (y.astype(int)); pass task='regression' to say they are numbers", notes)
    else:
        warn_data(f"the labels are floats that are all whole numbers ({span}): read as class names "
                  f"(task='single_label'). If they are numbers to predict, pass task='regression'; pass "
                  f"task='single_label' to say they are classes", notes)


# ------------------------------------------------------------------------------------------------ summary

@dataclass
class DataReport:
    """What the data holds and what was left out: `dls.summary()` prints `text()` and returns this.

    `n_train`/`n_valid`: items per split (None: unknown; `n_valid` None also when there is no validation set);
    `classes`: the class (or tag) names, or None; `train_counts`/`valid_counts`: items per class (multi-label:
    items carrying each tag), None when not counted; `skipped`: `(what, why)` for each file or row left out;
    `notes`: the warnings given while the data was built."""
    task: Optional[str]
    n_train: Optional[int]
    n_valid: Optional[int]
    classes: Optional[list[str]] = None
    train_counts: Optional[list[int]] = None
    valid_counts: Optional[list[int]] = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        """The report as the lines `summary()` prints."""
        task = (self.task or "data").replace("_", "-")
        count = lambda n: "?" if n is None else str(n)  # noqa: E731
        valid = "no validation set" if self.n_valid is None and self.valid_counts is None else \
            f"{count(self.n_valid)} validation items"
        lines = [f"{task}: {count(self.n_train)} training items, {valid}"]
        if self.classes is not None and self.train_counts is not None:
            width = max([len(str(c)) for c in self.classes] + [5])
            lines.append(f"{'class':<{width}}  {'train':>7}  {'valid':>7}")
            for i, name in enumerate(self.classes):
                v = "-" if self.valid_counts is None else str(self.valid_counts[i])
                lines.append(f"{str(name):<{width}}  {self.train_counts[i]:>7}  {v:>7}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}:")
            lines.append(listing([f"{what}: {why}" for what, why in self.skipped]))
        if self.notes:
            lines.append("warnings:")
            lines += [f"  - {n}".replace("\n", "\n    ") for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()


def label_counts(targets: Optional[Tensor], task: Optional[str], n_classes: Optional[int]) -> Optional[list[int]]:
    """Items per class of encoded targets (class indices counted, multi-hot columns summed); None without
    targets, for regression, or when the number of classes is unknown."""
    if targets is None or n_classes is None:
        return None
    if task == "multi_label" and targets.ndim == 2:
        return [int(v) for v in targets.sum(0)]
    if task in (None, "single_label") and not targets.is_floating_point() and targets.ndim == 1:
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= n_classes):
            return None  # labels outside the classes (an ignore_index): not counted per class
        return [int(v) for v in torch.bincount(targets.long(), minlength=n_classes)]
    return None


def warn_classes_without_validation(report: DataReport) -> None:
    """Warn (and note in `report`) about the classes, or multi-label tags, that no validation item has: the
    validation scores say nothing about them. Nothing is said without a validation set or per-class counts."""
    if not report.n_valid or report.classes is None or report.valid_counts is None or report.train_counts is None:
        return
    absent = [name for name, n_train, n_valid in zip(report.classes, report.train_counts, report.valid_counts)
              if n_valid == 0 and n_train > 0]
    if not absent:
        return
    kind = "tag(s)" if report.task == "multi_label" else "class(es)"
    warn_data(f"no validation items for the {kind} {_shown(absent)}: the validation loss and metrics say nothing "
              f"about {'it' if len(absent) == 1 else 'them'}; add items of {'it' if len(absent) == 1 else 'them'} to "
              f"the validation split (with valid_pct: more items, or a larger valid_pct)", report.notes)
