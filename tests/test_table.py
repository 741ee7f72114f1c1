"""Tests for fastfreeze/data/table.py: columns by name or position, file paths as fastai builds them, validation
flags, and the errors that name the row or column."""
from pathlib import Path

import pandas as pd
import pytest

from fastfreeze.data.table import column, read_csv, table_items, valid_flags


def touch(root: Path, names):
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(b"")


def test_columns_by_name_or_position_and_a_clear_error_otherwise():
    df = pd.DataFrame({"fname": ["a", "b"], "label": ["x", "y"]})
    assert column(df, "label", "label_col").tolist() == ["x", "y"]
    assert column(df, 1, "label_col").tolist() == ["x", "y"]
    assert column(df, -2, "fn_col").tolist() == ["a", "b"]
    with pytest.raises(KeyError, match=r"no column 'labels' \(label_col='labels'\); its columns are \['fname', "
                                       r"'label'\]: pass label_col= one of these names, or a position from 0 to 1"):
        column(df, "labels", "label_col")
    with pytest.raises(KeyError, match="no column 2"):
        column(df, 2, "label_col")
    headerless = pd.DataFrame([["a", "x"]])  # header=None: the column names are the positions
    assert column(headerless, 1, "label_col").tolist() == ["x"]


def test_files_are_path_folder_name_suffix_and_flags_are_read(tmp_path):
    touch(tmp_path / "imgs", ["a.png", "b.png", "c.png"])
    df = pd.DataFrame({"id": ["a", "b", "c"], "tag": ["x", "y", "x"], "is_valid": [False, "True", 0]})
    items = table_items(df, tmp_path, fn_col="id", label_col="tag", valid_col="is_valid", folder="imgs",
                        suff=".png", source="labels.csv")
    assert items.files == [tmp_path / "imgs" / f"{n}.png" for n in "abc"]
    assert items.labels == ["x", "y", "x"] and items.is_valid == [False, True, False]
    assert items.rows[1] == "row 1 (b) of labels.csv"
    several = table_items(df.assign(t1=[1, 0, 1], t2=[0, 1, 1]), tmp_path, 0, ["t1", "t2"], folder="imgs",
                          suff=".png")
    assert several.label_names == ["t1", "t2"] and several.label_array.tolist() == [[1, 0], [0, 1], [1, 1]]


def test_missing_files_are_listed_with_their_rows(tmp_path):
    touch(tmp_path, ["a.jpg"])
    df = pd.DataFrame({"f": ["a.jpg", "gone.jpg", "also_gone.jpg"], "y": [1, 2, 3]})
    with pytest.raises(FileNotFoundError) as info:
        table_items(df, tmp_path, source="labels.csv")
    message = str(info.value)
    assert message.startswith("2 file(s) listed do not exist")
    assert f"row 1 (gone.jpg) of labels.csv: {tmp_path / 'gone.jpg'}" in message
    assert "row 2 (also_gone.jpg) of labels.csv" in message and "row 0" not in message
    with pytest.raises(ValueError, match="row 1 of the table has no file name in column 'f'"):
        table_items(pd.DataFrame({"f": ["a.jpg", None], "y": [1, 2]}), tmp_path)
    with pytest.raises(ValueError, match="has no rows"):
        table_items(pd.DataFrame({"f": [], "y": []}), tmp_path)


def test_validation_flags_and_their_errors():
    rows = ["row 0", "row 1", "row 2", "row 3"]
    assert valid_flags([True, "false", 1, "Valid"], rows, "is_valid") == [True, False, True, True]
    with pytest.raises(ValueError, match=r"row 2: the validation column 'is_valid' holds 'maybe', not True/False"):
        valid_flags([True, False, "maybe", True], rows, "is_valid")


def test_read_csv_needs_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CSV file at"):
        read_csv(tmp_path / "labels.csv")
    (tmp_path / "labels.csv").write_text("name,label\na.png,cat\n")
    assert read_csv(tmp_path / "labels.csv").columns.tolist() == ["name", "label"]
