"""Conversions between the two point-cloud layouts geocanon accepts.

* dense: ``pos`` [B, N, 3] with an optional boolean padding ``mask`` [B, N] (True = real point);
* flat (PyG-style): ``pos`` [M, 3] with ``batch`` [M], the sorted cloud index of each point.

``torch_geometric.utils.to_dense_batch`` does flat -> dense; the way back is a boolean index.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.utils import scatter, to_dense_batch

__all__ = ["to_dense", "to_flat", "num_clouds", "cloud_mean", "dense_inputs"]


def num_clouds(batch: Tensor) -> int:
    """B for a sorted flat ``batch`` vector [M] (0 when empty)."""
    return int(batch.max()) + 1 if batch.numel() else 0


def to_dense(x: Tensor, batch: Tensor, batch_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Flat [M, F] + batch [M] -> dense [B, N_max, F] and mask [B, N_max]."""
    return to_dense_batch(x, batch, batch_size=batch_size)


def to_flat(x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Dense [B, N, F] (+ mask [B, N]) -> flat [M, F] and batch [M]."""
    b, n = x.shape[:2]
    if mask is None:
        mask = torch.ones(b, n, dtype=torch.bool, device=x.device)
    batch = torch.arange(b, device=x.device)[:, None].expand(b, n)
    return x[mask], batch[mask]


def cloud_mean(x: Tensor, batch: Tensor, batch_size: int) -> Tensor:
    """Mean of flat rows [M, F] per cloud -> [B, F]."""
    return scatter(x, batch, dim=0, dim_size=batch_size, reduce="mean")


def dense_inputs(
    pos: Tensor, batch: Tensor, scalars: Tensor | None = None, vectors: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Flat points [M, 3], scalars [M, S] and vectors [M, V, 3] with ``batch`` [M] -> dense
    pos [B, N, 3], mask [B, N], scalars [B, N, S], vectors [B, N, V, 3] (None stays None)."""
    dense_pos, mask = to_dense(pos, batch)
    if scalars is not None:
        scalars = to_dense(scalars, batch)[0]
    if vectors is not None:
        vectors = to_dense(vectors.flatten(1), batch)[0].unflatten(-1, (-1, 3))
    return dense_pos, mask, scalars, vectors
