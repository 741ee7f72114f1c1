"""Images and their labels listed in a table (a pandas DataFrame or a CSV file), the way most datasets ship:
a folder of images and a `labels.csv`. `ImageDataLoaders.from_df` / `from_csv` read the table with these
functions; the arguments mean what they mean in fastai (docs/tasks.md):

- `fn_col`: the column of file names (a name or a position; default 0); the file of a row is
  `path/folder/<name><suff>`;
- `label_col`: the column of labels (default 1), or a list of columns (one per tag, 0/1, or one per regression
  target); `label_delim` splits a cell into several tags (multi-label);
- `valid_col`: a column of booleans, True for the validation rows (else a random `valid_pct` split).

Every problem is reported with the row or the column it is in: a column the table does not have, a row without
a file name, files that do not exist, an empty label, a validation flag that is not a boolean. A warning given
while reading the table (column names that look like a row of data) is kept in `TableItems.notes`, which
`from_df` adds to `dls.summary()`.
pandas is needed only to read a CSV file (`pip install 'fastfreeze[table]'`); a DataFrame is read through its
own methods.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..core.validation import warn_data
from ..utils.checks import is_int

Column = Union[int, str]
TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes", "valid", "y", "t"), ("false", "0", "no", "train", "n", "f")


@dataclass
class TableItems:
    """What a table lists: one file per row, its label cell (or a row of label columns in `label_array`), the
    validation flags when the table has a validation column, a description of each row for errors, and the
    warnings given while reading it."""
    files: list[Path]
    labels: list[Any]
    label_array: Optional[np.ndarray]
    label_names: Optional[list[str]]
    is_valid: Optional[list[bool]]
    rows: list[str]
    notes: list[str] = field(default_factory=list)


def read_csv(csv_path: Union[str, Path], header: Union[int, str, None] = "infer",
             delimiter: Optional[str] = None) -> Any:
    """The CSV file at `csv_path` as a pandas DataFrame (`header=None` for a file without a header line)."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("reading a CSV file of labels needs pandas: pip install 'fastfreeze[table]' "
                          "(or pip install pandas)") from None
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"no CSV file at {csv_path}: from_csv(path, csv_fname) reads path/csv_fname")
    return pd.read_csv(csv_path, header=header, **({} if delimiter is None else {"delimiter": delimiter}))


def column(df: Any, col: Column, argument: str) -> Any:
    """The column `col` of `df`: by name, or by position for an int that is not a column name."""
    columns = list(df.columns)
    if col in columns:
        return df[col]
    if is_int(col) and -len(columns) <= col < len(columns):
        return df.iloc[:, col]
    raise KeyError(f"the table has no column {col!r} ({argument}={col!r}); its columns are {columns}: pass "
                   f"{argument}= one of these names, or a position from 0 to {len(columns) - 1}")


def column_name(df: Any, col: Column) -> str:
    """The name of the column `col` (a name, or a position)."""
    return str(col if col in list(df.columns) else list(df.columns)[col])


def table_items(df: Any, path: Union[str, Path] = ".", fn_col: Column = 0,
                label_col: Union[Column, Sequence[Column]] = 1, valid_col: Optional[Column] = None,
                folder: Optional[str] = None, suff: str = "", source: str = "the table") -> TableItems:
    """Read files, labels and validation flags from `df` (see the module docstring); check that every file
    exists. `source` names the table in errors (e.g. 'labels.csv')."""
    if len(df) == 0:
        raise ValueError(f"{source} has no rows: list one image per row")
    names = column(df, fn_col, "fn_col").tolist()
    rows = [f"row {i} ({n}) of {source}" for i, n in enumerate(names)]
    prefix = Path(path) if folder is None else Path(path) / folder
    files = []
    for i, name in enumerate(names):
        if name is None or (isinstance(name, float) and np.isnan(name)) or str(name).strip() == "":
            raise ValueError(f"row {i} of {source} has no file name in column {column_name(df, fn_col)!r}")
        files.append(prefix / f"{name}{suff}")
    check_files_exist(files, rows, f"the file of a row is {prefix}/<{column_name(df, fn_col)}>{suff}: check path=, "
                                   f"folder= and suff=")
    label_array, label_names, labels = None, None, []
    notes: list[str] = []
    if isinstance(label_col, (list, tuple)):
        label_names = [column_name(df, c) for c in label_col]
        label_array = np.stack([column(df, c, "label_col").to_numpy() for c in label_col], axis=1)
    else:
        labels = column(df, label_col, "label_col").tolist()
        check_header(column_name(df, fn_col), prefix / f"{column_name(df, fn_col)}{suff}",
                     column_name(df, label_col), labels, source, notes)
    is_valid = None
    if valid_col is not None:
        is_valid = valid_flags(column(df, valid_col, "valid_col").tolist(), rows, column_name(df, valid_col))
    return TableItems(files, labels, label_array, label_names, is_valid, rows, notes)


def check_header(fn_name: str, fn_file: Path, label_name: str, labels: Sequence[Any], source: str,
                 notes: Optional[list[str]] = None) -> None:
    """A table read from a CSV file without a header line takes its first row as the column names, and that row
    is lost. Refused when the file-name column's name is an existing file; a warning when the label column's
    name is one of the labels (kept in `notes`). The fix: read the file with `header=None`."""
    fix = (f"if {source} has no header line, read it with header=None (ImageDataLoaders.from_csv(..., "
           f"header=None), or pd.read_csv(..., header=None)), so that its first row is data")
    if fn_file.is_file():
        raise ValueError(f"the column names of {source} look like a row of data: the file-name column is called "
                         f"{fn_name!r}, which is an existing file ({fn_file}), and that row would be lost: {fix}")
    names = {str(v).strip() for v in labels if isinstance(v, (str, int, np.integer))}
    if str(label_name).strip() in names:
        warn_data(f"the label column of {source} is called {label_name!r}, which is also one of its labels: if this "
                  f"is a row of data, it is lost; {fix}", notes)


def check_files_exist(files: Sequence[Path], rows: Sequence[str], hint: str) -> None:
    """A FileNotFoundError listing (up to 10 of) the rows whose file does not exist."""
    missing = [(row, f) for row, f in zip(rows, files) if not f.is_file()]
    if not missing:
        return
    listing = "\n".join(f"  {row}: {f}" for row, f in missing[:10])
    more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
    raise FileNotFoundError(f"{len(missing)} file(s) listed do not exist ({hint}):\n{listing}{more}")


def valid_flags(values: Sequence[Any], rows: Sequence[str], name: str) -> list[bool]:
    """Booleans from a validation column: bools, 0/1, or words such as 'True'/'False' (any case)."""
    flags = []
    for row, v in zip(rows, values):
        if isinstance(v, (bool, np.bool_)):
            flags.append(bool(v))
        elif isinstance(v, (int, float, np.number)) and v in (0, 1):
            flags.append(bool(v))
        elif isinstance(v, str) and v.strip().lower() in TRUE_WORDS + FALSE_WORDS:
            flags.append(v.strip().lower() in TRUE_WORDS)
        else:
            raise ValueError(f"{row}: the validation column {name!r} holds {v!r}, not True/False (or 1/0): mark "
                             "each validation row True and each training row False")
    return flags
