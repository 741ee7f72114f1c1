"""Shared fixtures: tiny models and synthetic data, so the tests run offline in seconds."""
import os

# idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning made CPU runs 4-5x slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import matplotlib
import pytest
import torch
import torch.nn as nn

matplotlib.use("Agg")
torch.set_num_threads(min(2, os.cpu_count() or 1))

from fastfreeze import DataLoaders  # noqa: E402


def blobs(n: int, n_classes: int = 3, dim: int = 4, seed: int = 0, spread: float = 0.5):
    """Gaussian blobs around well-separated centres: a separable classification task."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(n_classes, dim) * 4
    y = torch.arange(n) % n_classes
    x = centres[y] + spread * torch.randn(n, dim, generator=g)
    return x, y


def mlp3(dim: int = 4, hidden: int = 16, n_out: int = 3) -> nn.Sequential:
    """Three top-level children with parameters -> three layer groups by default; BatchNorm in the first two."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU()),
        nn.Sequential(nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU()),
        nn.Linear(hidden, n_out),
    )


def mlp2(dim: int = 4, hidden: int = 16, n_out: int = 3) -> nn.Sequential:
    """Two layer groups (body, head)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU()),
                         nn.Linear(hidden, n_out))


@pytest.fixture
def dls_5_batches():
    """5 training batches of 8 per epoch (40 items), 24 validation items."""
    x, y = blobs(40)
    xv, yv = blobs(24, seed=1)
    return DataLoaders.from_tensors(x, y, xv, yv, bs=8, seed=0)
