"""docs/errors.md names, for each row, the tests that check it: every name must be a test of tests/, and each case
has one row (its first cell said once)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def functions_of_tests() -> dict[str, set[str]]:
    """`{module: {test function names}}` of tests/."""
    return {f.stem: set(re.findall(r"^def (test_\w+)", f.read_text(), re.M)) for f in (ROOT / "tests").glob("test_*.py")}


def named_tests(cell: str, default_module: str) -> list[tuple[str, str]]:
    """`(module, test)` for each name in a Test cell: `module::test`, `module::test[case]`, `module::test_prefix_*`
    (the * kept), or a bare `test` of the section's default module."""
    found = []
    for name in re.findall(r"`([^`]+)`", cell):
        name = re.sub(r"\[.*", "", name)
        if "::" in name:
            found.append(tuple(name.split("::", 1)))
        elif name.startswith("test_"):
            found.append((default_module, name))
    return found


def test_every_test_named_in_errors_md_exists_and_each_case_has_one_row():
    tests = functions_of_tests()
    dangling, first_cells, repeated = [], set(), []
    default_module = ""
    for line in (ROOT / "docs" / "errors.md").read_text().splitlines():
        if line.startswith("## "):
            default_module = ""
        found = re.search(r"Tests in `tests/(test_\w+)\.py` unless named", line)
        if found:
            default_module = found.group(1)
        if not line.startswith("| ") or line.startswith("| What the user did"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if cells[0] in first_cells:
            repeated.append(cells[0])
        first_cells.add(cells[0])
        for module, test in named_tests(cells[-1], default_module):
            names = tests.get(module, set())
            ok = any(t.startswith(test[:-1]) for t in names) if test.endswith("*") else test in names
            if not ok:
                dangling.append(f"{module}::{test}")
    assert len(first_cells) > 100  # the table was read
    assert dangling == [] and repeated == []
