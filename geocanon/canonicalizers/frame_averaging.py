"""The PCA frames of frame averaging (Puny et al. 2022), the peer method to canonicalization.

Instead of choosing one sign per principal axis, frame averaging keeps every sign choice: 8 frames
for O3/E3, the 4 with det = +1 for SO3/SE3, and averages the model's (mapped-back) outputs over
them. This is exactly invariant/equivariant even where the sign rule of PCA canonicalization is
discontinuous, at the price of running the backbone K times. (Degenerate eigenvalues still break it;
the original paper accepts that too.)
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from ..frames import Frame, Group, has_reflections, has_translations
from ..validation import check_points
from ..layout import to_dense
from .pca import principal_axes

__all__ = ["pca_frames"]


def _sign_patterns(group: Group, dtype: torch.dtype, device: torch.device) -> Tensor:
    signs = torch.tensor(list(itertools.product((1.0, -1.0), repeat=3)), dtype=dtype, device=device)  # [8, 3]
    if not has_reflections(group):
        signs = signs[signs.prod(-1) > 0]  # 4 proper patterns (det of the axes fixed below)
    return signs


def pca_frames(pos: Tensor, mask: Tensor | None = None, batch: Tensor | None = None, group: Group = "O3") -> Frame:
    """All PCA sign frames of each cloud, flattened cloud-major.

    Args:
        pos: [B, N, 3] (with ``mask`` [B, N]) or flat [M, 3] with ``batch`` [M].
        group: "SO3"/"SE3" give K = 4 frames of det +1, "O3"/"E3" give K = 8.

    Returns:
        A Frame of length B * K (frames of cloud b at rows b*K ... b*K + K - 1); translation is the
        centroid for SE3/E3, zero otherwise.
    """
    check_points(pos, mask=mask, batch=batch, min_rank=3 if has_reflections(group) else 2)
    if batch is not None:
        pos, mask = to_dense(pos, batch)
    if mask is None:
        mask = torch.ones(pos.shape[:2], dtype=torch.bool, device=pos.device)
    centroid, axes, _ = principal_axes(pos, mask)
    if not has_reflections(group):
        # make the eigenvector basis proper so that the 4 even sign patterns all have det +1
        det = torch.linalg.det(axes)
        axes = torch.cat([axes[..., :2], axes[..., 2:] * det[:, None, None]], dim=-1)
    signs = _sign_patterns(group, pos.dtype, pos.device)  # [K, 3]
    k = signs.shape[0]
    rotation = (axes[:, None] * signs[None, :, None, :]).flatten(0, 1)  # [B*K, 3, 3]
    if has_translations(group):
        translation = centroid.repeat_interleave(k, 0)
    else:
        translation = pos.new_zeros(rotation.shape[0], 3)
    return Frame(rotation, translation)
