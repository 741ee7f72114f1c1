"""No silent skips in CI (tests/ci_skips.py): an inner pytest run of a few sample tests, with and without CI=true."""
import os
import subprocess
import sys
from pathlib import Path

from ci_skips import in_ci

SAMPLES = {
    "test_samples.py": '''
import pytest

def test_passes():
    pass

def test_skips_for_a_dataset():
    pytest.skip("needs Fashion-MNIST (apt-get install dataset-fashion-mnist)")

def test_skips_for_a_package():
    pytest.importorskip("a_package_that_is_not_installed")

@pytest.mark.skipif(True, reason="needs the tool frobnicate")
def test_skipif():
    pass

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_expected_failure():
    assert False
''',
    "test_module_level.py": '''
import pytest
pytest.importorskip("another_missing_package")

def test_never_collected():
    pass
''',
}


def run_samples(tmp_path: Path, ci: str, name: str) -> subprocess.CompletedProcess:
    (tmp_path / name).write_text(SAMPLES[name])
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "CI": ci}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "ci_skips", "-p", "no:cacheprovider", "-rA", "-q",
                           name], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


REFUSED = "skipped under CI=true, where every test must run: "


def test_what_counts_as_ci(monkeypatch):
    for value, ci in [("true", True), ("1", True), ("TRUE", True), ("yes", True), ("", False), ("false", False),
                      ("0", False)]:
        monkeypatch.setenv("CI", value)
        assert in_ci() is ci, value
    monkeypatch.delenv("CI")
    assert not in_ci()


def test_under_ci_every_skip_fails_naming_what_is_missing(tmp_path):
    run = run_samples(tmp_path, "true", "test_samples.py")
    out = run.stdout
    assert run.returncode == 1, out
    # a skipif marker skips in the setup phase: refused there, it counts as an error
    assert "2 failed, 1 passed, 1 xfailed, 1 error" in out.splitlines()[-1], out
    for missing in ("needs Fashion-MNIST (apt-get install dataset-fashion-mnist)",
                    "could not import 'a_package_that_is_not_installed'", "needs the tool frobnicate"):
        assert REFUSED + missing in out, missing
    # a skip at the top of a test file: a collection error, which stops the run
    run = run_samples(tmp_path, "true", "test_module_level.py")
    assert run.returncode == 2 and REFUSED + "could not import 'another_missing_package'" in run.stdout, run.stdout


def test_outside_ci_a_skip_is_a_skip(tmp_path):
    run = run_samples(tmp_path, "", "test_samples.py")
    assert run.returncode == 0 and "1 passed, 3 skipped, 1 xfailed" in run.stdout.splitlines()[-1], run.stdout
    run = run_samples(tmp_path, "false", "test_module_level.py")
    assert run.returncode == 5 and "1 skipped" in run.stdout.splitlines()[-1], run.stdout  # 5: no test ran
