"""No silent skips in CI: under `CI=true` a test that skips (a missing optional dependency, dataset or tool)
fails the run instead, with its reason, which names what is missing (docs/testing.md).

Loaded by conftest.py for the whole suite. A test that needs something optional skips as usual,
`pytest.importorskip("onnx")` or `pytest.skip("needs Fashion-MNIST (apt-get install dataset-fashion-mnist)")`:
on a workstation it is skipped, in CI it fails until the test command installs what it needs. Expected
failures (`xfail`) are not skips and are left alone.
"""
from __future__ import annotations

import os
from typing import Any

import pytest

CI_VALUES = ("1", "true", "yes")


def in_ci() -> bool:
    """True when the environment says CI (`CI=true`, as CI services and `.ci/run` set it)."""
    return os.environ.get("CI", "").strip().lower() in CI_VALUES


def skip_reason(report: Any) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (file, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def refuse_skip(report: Any) -> None:
    """Turn a skip report into a failure that says what was missing."""
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = (f"skipped under CI=true, where every test must run: {skip_reason(report).rstrip('.')}. "
                           "The test command must install what it needs (docs/testing.md)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    outcome = yield
    refuse_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    outcome = yield  # a module-level skip, e.g. pytest.importorskip at the top of a test file
    refuse_skip(outcome.get_result())
