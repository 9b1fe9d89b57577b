"""Input checks shared by every entry point: bad input gets a ``ValueError`` naming the problem.

Checked per cloud: shape, dtype, NaN/Inf, empty, a single point, all points coincident, and (on
request) all points collinear or coplanar. Degeneracy is measured by the singular values of the
centred cloud relative to its largest one, so it is scale-free.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .layout import to_dense

__all__ = ["check_points", "check_features", "check_dense_batch", "check_flat_batch", "check_one_layout"]


def _clouds(indices: Tensor) -> str:
    idx = indices.flatten().tolist()
    more = f" and {len(idx) - 10} more" if len(idx) > 10 else ""
    return f"{idx[:10]}{more}"


def check_dense_batch(pos: Tensor, mask: Tensor | None = None, name: str = "pos") -> tuple[Tensor, Tensor]:
    """Validate a dense, optionally padded batch and list its real points.

    Checks the shape [B, N, 3], the mask (bool [B, N]), that every cloud has a real point and that
    real points are finite (padding may hold anything).

    Returns:
        (mask [B, N] bool, batch [M] int64 cloud index of every real point, in ``pos[mask]`` order).
    """
    if not isinstance(pos, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(pos).__name__}")
    if not pos.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {pos.dtype}")
    if pos.ndim != 3 or pos.shape[-1] != 3:
        raise ValueError(f"{name} must have shape [B, N, 3] (or [M, 3] with batch=), got {list(pos.shape)}")
    if pos.shape[0] == 0:
        raise ValueError(f"{name} holds no clouds (batch size 0)")
    if mask is None:
        mask = torch.ones(pos.shape[:2], dtype=torch.bool, device=pos.device)
    elif mask.dtype != torch.bool or mask.shape != pos.shape[:2]:
        raise ValueError(
            f"mask must be a bool tensor of shape {list(pos.shape[:2])} matching {name}, "
            f"got dtype {mask.dtype} and shape {list(mask.shape)}"
        )
    counts = mask.sum(1)
    if (counts == 0).any():
        raise ValueError(f"{name} has empty cloud(s) {_clouds((counts == 0).nonzero())}")
    finite = torch.isfinite(pos).all(-1) | ~mask
    if not finite.all():
        raise ValueError(f"{name} contains NaN or Inf in cloud(s) {_clouds((~finite).any(1).nonzero())}")
    return mask, torch.nonzero(mask)[:, 0]


def check_one_layout(batch: Tensor | None, mask: Tensor | None) -> None:
    """Raise ``ValueError`` when both ``batch`` (flat input) and ``mask`` (dense input) are given."""
    if batch is not None and mask is not None:
        raise ValueError("pass either batch= (flat input [M, 3]) or mask= (dense input [B, N, 3]), not both")


def check_flat_batch(pos: Tensor, batch: Tensor, name: str = "pos") -> None:
    """Raise ``ValueError`` unless ``pos`` [M, 3] with ``batch`` [M] is a flat (PyG-style) batch: M > 0 points,
    one integer cloud index each, sorted (the points of cloud 0 first, then cloud 1, ...), every cloud from 0 to
    the largest index holding a point."""
    if not isinstance(pos, Tensor) or pos.ndim != 2 or pos.shape[-1] != 3:
        got = list(pos.shape) if isinstance(pos, Tensor) else type(pos).__name__
        raise ValueError(f"{name} with a batch vector must have shape [M, 3], got {got}")
    if not isinstance(batch, Tensor) or batch.shape != pos.shape[:1] or batch.is_floating_point() or batch.is_complex():
        got = f"dtype {batch.dtype} and shape {list(batch.shape)}" if isinstance(batch, Tensor) else type(batch).__name__
        raise ValueError(f"batch must be an integer tensor of shape [M] = [{pos.shape[0]}], got {got}")
    if pos.shape[0] == 0:
        raise ValueError(f"{name} is empty: no points in the batch")
    if batch.numel() > 1 and (batch[1:] < batch[:-1]).any():
        raise ValueError("batch must be sorted (PyG convention: points of cloud 0 first, then cloud 1, ...)")
    if batch[0] < 0:
        raise ValueError(f"batch holds negative cloud indices, e.g. {int(batch[0])}")
    counts = torch.bincount(batch)
    if (counts == 0).any():
        raise ValueError(f"{name} has empty cloud(s) {_clouds((counts == 0).nonzero())}: no point carries their index in batch")


def check_points(
    pos: Tensor,
    mask: Tensor | None = None,
    batch: Tensor | None = None,
    name: str = "pos",
    min_rank: int = 1,
    rel_tol: float | None = None,
) -> None:
    """Raise ``ValueError`` unless ``pos`` is a usable batch of point clouds.

    Args:
        pos: dense [B, N, 3] (with optional ``mask`` [B, N]) or flat [M, 3] with ``batch`` [M].
        mask: padding mask of a dense batch, True for real points.
        batch: cloud index of each flat point (sorted).
        name: the argument's name, used in messages.
        min_rank: geometric rank each cloud must reach: 1 rejects coincident points, 2 also collinear
            clouds, 3 also coplanar clouds. A cloud must have at least 2 points whatever the rank.
        rel_tol: a singular value counts as zero below ``rel_tol`` times the largest one
            (default 1e-4 for float32, 1e-8 for float64).
    """
    check_one_layout(batch, mask)
    if batch is not None:
        check_flat_batch(pos, batch, name)
        pos, mask = to_dense(pos, batch)
    mask, _ = check_dense_batch(pos, mask, name)
    counts = mask.sum(1)
    if (counts == 1).any():
        raise ValueError(
            f"{name} has single-point cloud(s) {_clouds((counts == 1).nonzero())}: a frame needs at least 2 points"
        )
    if rel_tol is None:
        rel_tol = 1e-8 if pos.dtype == torch.float64 else 1e-4
    pos = torch.where(mask[..., None], pos, torch.zeros_like(pos))
    w = mask.to(pos.dtype)[..., None]
    centred = (pos - (pos * w).sum(1, keepdim=True) / counts[:, None, None].to(pos.dtype)) * w
    sv = torch.linalg.svdvals(centred.detach())  # [B, 3]
    largest = sv[:, 0]
    scale = pos.detach().abs().mul(w).amax(dim=(1, 2)).clamp_min(torch.finfo(pos.dtype).tiny)
    coincident = largest <= rel_tol * scale * counts.to(pos.dtype).sqrt()
    if coincident.any():
        raise ValueError(f"{name}: all points coincide in cloud(s) {_clouds(coincident.nonzero())}")
    for rank, shape in ((2, "collinear"), (3, "coplanar")):
        if min_rank >= rank:
            flat = sv[:, rank - 1] <= rel_tol * largest
            if flat.any():
                raise ValueError(
                    f"{name}: points are {shape} in cloud(s) {_clouds(flat.nonzero())}; a frame is not "
                    f"determined by such a cloud"
                )


def check_features(x: Tensor, expected_leading: tuple[int, ...], last_dim: int | None, name: str) -> None:
    """Raise ``ValueError`` unless ``x`` is finite with leading shape ``expected_leading`` (and last dim).

    Args:
        x: a per-point feature tensor, [B, N, F] or [M, F].
        expected_leading: the shape of ``pos`` without its last axis.
        last_dim: required size of the last axis (3 for vectors), or None for any.
        name: the argument's name, used in messages.
    """
    if x.shape[: len(expected_leading)] != expected_leading or x.ndim != len(expected_leading) + 1:
        want = list(expected_leading) + ["F" if last_dim is None else last_dim]
        raise ValueError(f"{name} must have shape {want}, got {list(x.shape)}")
    if last_dim is not None and x.shape[-1] != last_dim:
        raise ValueError(f"{name} must have last dimension {last_dim}, got {list(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
