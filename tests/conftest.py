"""Shared fixtures: dtype contexts (e3nn modules must be *built* in the dtype they run in)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

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


class PointMLP(nn.Module):
    """A deliberately non-equivariant backbone: per-point MLP on raw coordinates (+ features).

    output "invariant": pooled logits [B, 4]; "vector"/"position": per-point [B, N, 3] or flat [M, 3].
    """

    def __init__(self, per_point: bool, vel: bool = False, charge: bool = False) -> None:
        super().__init__()
        self.per_point = per_point
        d = 3 + 3 * vel + charge
        self.net = nn.Sequential(nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, 3 if per_point else 4))

    def forward(self, pos, vel=None, charge=None, batch=None, mask=None):
        x = torch.cat([t for t in (pos, vel, charge) if t is not None], -1)
        h = self.net(x)
        if self.per_point:
            return h
        if batch is not None:
            from torch_geometric.utils import scatter

            return scatter(h, batch, dim=0, reduce="sum")
        if mask is not None:
            h = h * mask[..., None]
        return h.sum(1)


def charged_clouds(sizes: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clouds of the given sizes (anisotropic Gaussian points) with positive charges, alone and as a flat PyG batch:
    (clouds [n_i, 3], charges [n_i, 1], pos [M, 3], charge [M, 1], batch [M])."""
    clouds = [torch.randn(n, 3) * torch.tensor([3.0, 2.0, 1.0]) for n in sizes]
    charges = [torch.rand(n, 1) + 0.5 for n in sizes]
    batch = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    return clouds, charges, torch.cat(clouds), torch.cat(charges), batch


tolerance = default_tolerance  # relative equivariance tolerance of a dtype: 1e-10 in float64, 2e-5 in float32


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
