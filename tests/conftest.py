"""Shared fixtures and the test session's settings (helpers the tests import are in helpers.py)."""
import os

# idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning made CPU runs 4-5x slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
torch.set_num_threads(min(2, os.cpu_count() or 1))

from fastfreeze import DataLoaders, vision_learner  # noqa: E402
from fastfreeze.inference.export import export_learner  # noqa: E402
from fastfreeze.inference.export_format import build_spec  # noqa: E402
from helpers import array_dls, blobs  # noqa: E402
from ci_skips import pytest_make_collect_report, pytest_runtest_makereport  # noqa: E402,F401 (CI: no silent skips)


@pytest.fixture
def dls_5_batches():
    """5 training batches of 8 per epoch (40 items), 24 validation items."""
    x, y = blobs(40)
    xv, yv = blobs(24, seed=1)
    return DataLoaders.from_tensors(x, y, xv, yv, bs=8, seed=0)


@pytest.fixture(scope="module")
def good_export(tmp_path_factory):
    learn = vision_learner(array_dls(), "test_resnet", pretrained=False, progress=False)
    learn.build_spec = build_spec("test_resnet", n_out=3)
    return export_learner(learn, tmp_path_factory.mktemp("good") / "export")
