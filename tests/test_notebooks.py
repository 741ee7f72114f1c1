"""The tutorials in nbs/ run top to bottom, and are stored without outputs.

Each notebook is executed by nbclient in a kernel that runs *this* interpreter (`sys.executable`, the venv's
python, not whatever `python` comes first on PATH), with matplotlib's non-interactive Agg backend, in a temporary
working folder. A notebook that loads Fashion-MNIST is skipped when the data files are not installed (the notebook then
fails with the library's own message saying how to get them); any other failure shows the failing cell's error.
"""
import json
import sys
import time
from pathlib import Path

import nbformat
import pytest

NBS = Path(__file__).resolve().parent.parent / "nbs"
NOTEBOOKS = sorted(NBS.glob("*.ipynb"))
KERNEL_NAME = "python3"  # what the notebooks' metadata names; the temporary kernelspec below shadows it
# The start of the FileNotFoundError `fastfreeze.data.fashion_mnist.load_fashion_mnist` raises when the files are absent.
MISSING_DATA_MESSAGE = "Fashion-MNIST files ("


@pytest.fixture(scope="module")
def kernel_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A JUPYTER_PATH folder holding a `python3` kernelspec that starts this interpreter with MPLBACKEND=Agg.

    OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning. On a shared machine whose cores are
    busy, spinning threads fight the working ones: measured on 2 busy cores, 03_strategies took 184 s with the
    default policy and 31-42 s with PASSIVE (the same CPU work: 29 s).
    """
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "fastfreeze tests", "language": "python",
            "env": {"MPLBACKEND": "Agg", "OMP_WAIT_POLICY": "PASSIVE"}}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return root


def test_there_are_notebooks():
    names = [nb.name for nb in NOTEBOOKS]
    assert names[:4] == ["00_quickstart.ipynb", "01_custom_head.ipynb", "02_partial_unfreezing.ipynb",
                         "03_strategies.ipynb"], names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: code cells {dirty} keep outputs or execution counts; strip them "
                       f"(e.g. `jupyter nbconvert --clear-output --inplace {path.name}`)")
    assert all(cell.cell_type == "markdown" or cell.source.strip() for cell in nb.cells), \
        f"{path.name} has an empty code cell"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, kernel_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    monkeypatch.setenv("JUPYTER_PATH", str(kernel_path))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name=KERNEL_NAME,
                            resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as error:
        if error.ename == "FileNotFoundError" and MISSING_DATA_MESSAGE in error.evalue:
            pytest.skip(f"{path.name} needs Fashion-MNIST: {' '.join(error.evalue.split())}")
        pytest.fail(f"{path.name}: a cell failed\n{error}", pytrace=False)
    print(f"{path.name} ran in {time.perf_counter() - start:.1f} s")
    stderr = [out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
              if out.get("name") == "stderr"]
    assert not [text for text in stderr if "IProgress not found" in text], \
        f"{path.name}: tqdm's 'IProgress not found' warning reached the notebook"
