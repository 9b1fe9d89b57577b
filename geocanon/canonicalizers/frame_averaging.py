"""The PCA frames of frame averaging (Puny et al. 2022), the peer method to canonicalization, and their
smooth weighting (Dym et al. 2024).

Instead of choosing one sign per principal axis, frame averaging keeps every sign choice: 8 frames
for O3/E3, the 4 with det = +1 for SO3/SE3, and averages the model's (mapped-back) outputs over
them. This is exactly invariant/equivariant even where the sign rule of PCA canonicalization is
discontinuous, at the price of running the backbone K times, and also for coplanar clouds (a planar or
triatomic molecule), which single O3/E3 frames reject: the two signs of the plane's normal are both in
the set. (Degenerate eigenvalues still break it — collinear clouds are rejected; the original paper
accepts that too.)

Weighted frames sit between the two: frame ``k`` with axes ``e_a`` gets the weight
``w_k = Π_a h(μ_a(e_a) / τ)``, where ``μ_a`` is the standardized third moment (skewness) of the points'
projections on ``e_a`` and ``h`` a C¹ smooth step with ``h(z) = 0`` for z ≤ -1, ``h(z) = 1`` for
z ≥ 1 and ``h(z) + h(-z) = 1``. The weights of a cloud sum to 1, and an axis whose skewness is clearly
positive or negative (|μ| ≥ τ) keeps only its canonical sign: a clearly skewed cloud costs one backbone
call (PCA canonicalization), an axis near a mirror symmetry two, and τ → ∞ gives frame averaging.
Unlike PCA canonicalization the weighted average is continuous (and C¹) across the sign flips, and the
weights only depend on the frame and the cloud, so it is exactly as equivariant as frame averaging.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from ..frames import Frame, Group, has_reflections, has_translations
from ..validation import check_points
from ..layout import to_dense
from .pca import principal_axes, skewness

__all__ = ["pca_frames", "smooth_step", "weighted_pca_frames"]


def _sign_patterns(group: Group, dtype: torch.dtype, device: torch.device) -> Tensor:
    signs = torch.tensor(list(itertools.product((1.0, -1.0), repeat=3)), dtype=dtype, device=device)  # [8, 3]
    if not has_reflections(group):
        signs = signs[signs.prod(-1) > 0]  # 4 proper patterns (det of the axes fixed below)
    return signs


def smooth_step(z: Tensor) -> Tensor:
    """``h(z) = 1/2 + (3z - z³)/4`` on [-1, 1], 0 below, 1 above: C¹, with ``h(z) + h(-z) = 1``. Shape of ``z``."""
    z = z.clamp(-1.0, 1.0)
    return 0.5 + 0.25 * (3 * z - z**3)


def _frames_and_weights(pos: Tensor, mask: Tensor | None, batch: Tensor | None, group: Group, sign_tolerance: float,
                        point_weights: Tensor | None) -> tuple[Frame, Tensor]:
    # rank 2 for every group: a coplanar cloud is its own mirror image through its plane, which no single O3/E3
    # frame can respect, but the frame set holds both signs of the plane's normal, with equal weights (its
    # skewness is 0), so the average is exact. Collinear clouds stay rejected: their two minor axes are arbitrary.
    check_points(pos, mask=mask, batch=batch, min_rank=2)
    if point_weights is not None and point_weights.shape != pos.shape[:-1]:
        raise ValueError(f"point_weights must have the points' shape {list(pos.shape[:-1])}, got {list(point_weights.shape)}")
    if batch is not None:
        if point_weights is not None:
            point_weights = to_dense(point_weights[:, None], batch)[0][..., 0]
        pos, mask = to_dense(pos, batch)
    if mask is None:
        mask = torch.ones(pos.shape[:2], dtype=torch.bool, device=pos.device)
    else:  # padding may hold anything: zero it so no reduction sees it
        pos = pos.masked_fill(~mask[..., None], 0.0)
    if point_weights is not None:
        real = point_weights[mask]
        if not bool(torch.isfinite(real).all()) or not bool((real >= 0).all()):
            raise ValueError(f"point_weights must be finite and non-negative on every real point (e.g. atomic masses), got min {real.min().item():g}")
        if not bool((real > 0).all()):  # points of weight 0 take no part in the frames: the others must determine them
            check_points(pos, mask=mask & (point_weights > 0), name="pos (its points of positive weight)", min_rank=2)
    centroid, axes, variances = principal_axes(pos, mask, point_weights)
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
    frames = Frame(rotation, translation)
    skew = skewness(pos, mask, centroid, axes, variances, point_weights)  # [B, 3], along the unsigned axes
    per_axis = smooth_step(signs[None] * skew[:, None] / sign_tolerance)  # [B, K, 3]
    # proper groups: the third sign follows from the first two (det +1), so only those two are weighed
    weights = per_axis.prod(-1) if has_reflections(group) else per_axis[..., :2].prod(-1)
    return frames, weights


def pca_frames(pos: Tensor, mask: Tensor | None = None, batch: Tensor | None = None, group: Group = "O3",
               point_weights: Tensor | None = None) -> Frame:
    """All PCA sign frames of each cloud, flattened cloud-major.

    Args:
        pos: [B, N, 3] (with ``mask`` [B, N]) or flat [M, 3] with ``batch`` [M].
        group: "SO3"/"SE3" give K = 4 frames of det +1, "O3"/"E3" give K = 8.
        point_weights: optional weight per point, [B, N] or [M], non-negative on real points (padding is ignored), e.g.
            atomic masses: the principal axes of the mass distribution about the centre of mass (which is then the
            translation). Points of weight 0 take no part in the frames (e.g. hydrogens: the frames of the heavy-atom
            skeleton); those of positive weight must span at least a plane. Weights that are invariant per-point
            scalars keep the frames equivariant.

    Returns:
        A Frame of length B * K (frames of cloud b at rows b*K ... b*K + K - 1); translation is the
        centroid (weighted by ``point_weights`` when given) for SE3/E3, zero otherwise.
    """
    return _frames_and_weights(pos, mask, batch, group, math.inf, point_weights)[0]


def weighted_pca_frames(
    pos: Tensor, mask: Tensor | None = None, batch: Tensor | None = None, group: Group = "O3", sign_tolerance: float = 0.1,
    point_weights: Tensor | None = None,
) -> tuple[Frame, Tensor]:
    """The frames of :func:`pca_frames` and their smooth weights (module docstring).

    Args:
        pos, mask, batch, group, point_weights: as for :func:`pca_frames` (the skewness is weighted alike).
        sign_tolerance: τ > 0, the skewness below which an axis' two signs are blended.

    Returns:
        ``(frames, weights)``: a Frame of length B * K (cloud-major) and weights [B, K] (non-negative,
        each row sums to 1; most are exactly 0).
    """
    if not sign_tolerance > 0:
        raise ValueError(f"sign_tolerance must be a positive number, got {sign_tolerance!r}")
    return _frames_and_weights(pos, mask, batch, group, float(sign_tolerance), point_weights)
