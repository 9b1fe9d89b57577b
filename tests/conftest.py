"""Shared fixtures: dtype contexts (e3nn modules must be *built* in the dtype they run in)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from geocanon.testing import default_tolerance

# Tests use tiny tensors: one intra-op thread avoids OpenMP spin contention (100x slowdowns were
# measured with two threads on a loaded 2-core machine) and keeps timings stable.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build modules under ``dtype`` (e3nn bakes Clebsch–Gordan constants at construction)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@pytest.fixture(params=[torch.float64, torch.float32], ids=["float64", "float32"])
def dtype(request) -> Iterator[torch.dtype]:
    """Runs a test in float64 and float32 with the default dtype set accordingly."""
    with default_dtype(request.param):
        yield request.param


tolerance = default_tolerance  # relative equivariance tolerance of a dtype: 1e-10 in float64, 2e-5 in float32


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
