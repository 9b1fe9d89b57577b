"""PCA canonicalization: the hand-made heuristic the learned canonicalizer is compared with.

Axes are the eigenvectors of each cloud's covariance, sorted by decreasing variance. Each axis' sign
is chosen so that the third moment of the points' projections on it is positive; for SO3/SE3 the
third axis is instead ``e1 × e2`` (det = +1).

Known discontinuities (why learned canonicalization exists): when two variances are (nearly)
equal the axes swap or spin abruptly, and when a projection's third moment is (nearly) zero — any
cloud symmetric under a reflection across that axis' plane — its sign flips under arbitrarily small
perturbations. The frame is then still exactly equivariant on generic input, but not continuous.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..frames import Frame, Group, has_reflections
from .base import Canonicalizer

__all__ = ["PCACanonicalizer", "covariance", "moment_weights", "principal_axes", "skewness"]


def moment_weights(pos: Tensor, mask: Tensor, weights: Tensor | None = None) -> Tensor:
    """The weight [B, N] of each point in the moments below: ``weights`` [B, N] (e.g. atomic masses) on the real
    points, 1 when None; 0 on padding, whatever ``weights`` holds there (NaN included)."""
    if weights is None:
        return mask.to(pos.dtype)
    return torch.where(mask, weights.to(pos.dtype), torch.zeros((), dtype=pos.dtype, device=pos.device))


def covariance(pos: Tensor, mask: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Centroid [B, 3] and covariance [B, 3, 3] of each cloud (pos [B, N, 3], mask [B, N]).

    With ``weights`` [B, N] (positive on real points) they are the weighted mean and covariance: atomic masses
    give the centre of mass and the inertia ellipsoid's axes (see :func:`moment_weights`).
    """
    w = moment_weights(pos, mask, weights)[..., None]
    count = w.sum(1)
    centroid = (pos * w).sum(1) / count
    centred = (pos - centroid[:, None]) * w
    return centroid, centred.transpose(1, 2) @ centred / count[..., None]


def principal_axes(pos: Tensor, mask: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Centroid, principal axes and variances of each cloud.

    Args:
        pos: [B, N, 3]; mask: [B, N]; weights: optional [B, N] point weights (:func:`covariance`).

    Returns:
        centroid [B, 3], axes [B, 3, 3] (columns, by decreasing variance, signs arbitrary),
        variances [B, 3] (decreasing).
    """
    centroid, cov = covariance(pos, mask, weights)
    variances, axes = torch.linalg.eigh(cov)  # ascending
    return centroid, axes.flip(-1), variances.flip(-1)


def _third_moment_sums(pos: Tensor, mask: Tensor, centroid: Tensor, axes: Tensor, weights: Tensor | None = None) -> Tensor:
    """``Σ_n w_n p³`` over the real points of the projections ``p`` on each axis: [B, K] for axes [B, 3, K]."""
    proj = (pos - centroid[:, None]) @ axes  # [B, N, K]
    return (proj**3 * moment_weights(pos, mask, weights)[..., None]).sum(1)


#: relative variance added in :func:`skewness`, far below any real spread and far above float rounding
FLAT_VARIANCE = 1e-9


def skewness(pos: Tensor, mask: Tensor, centroid: Tensor, axes: Tensor, variances: Tensor, weights: Tensor | None = None) -> Tensor:
    """Standardized third moment of the projections on each axis, ``mean(p³) / (var + ε var_max)^{3/2}``: [B, 3].

    Args: pos [B, N, 3] with padding zeroed, mask [B, N], centroid [B, 3], axes [B, 3, 3] (columns),
    variances [B, 3] (of the projections on those axes), optional point weights [B, N] (weighted mean and
    moments, as in :func:`covariance`). ``ε`` = :data:`FLAT_VARIANCE` makes a flat direction
    (the normal of a coplanar cloud, whose variance is rounding noise) have skewness ~0 instead of a ratio
    of rounding errors, smoothly: it changes the skewness of any real spread by a relative ~1e-9.
    """
    count = moment_weights(pos, mask, weights).sum(1, keepdim=True)
    floor = FLAT_VARIANCE * variances.amax(-1, keepdim=True).clamp_min(torch.finfo(pos.dtype).tiny)
    return _third_moment_sums(pos, mask, centroid, axes, weights) / count / (variances.clamp_min(0.0) + floor) ** 1.5


def third_moment_signs(pos: Tensor, mask: Tensor, centroid: Tensor, axes: Tensor) -> Tensor:
    """+1/-1 per axis making the third moment of the projections non-negative: [B, 3]."""
    moment = _third_moment_sums(pos, mask, centroid, axes)
    return torch.where(moment < 0, -torch.ones_like(moment), torch.ones_like(moment))


class PCACanonicalizer(Canonicalizer):
    """Principal axes with the third-moment sign rule (see the module docstring for its limits).

    Translation: the centroid for SE3/E3, zero for SO3/O3.
    """

    def __init__(self, group: Group = "SO3") -> None:
        super().__init__(group)

    def frame(self, pos: Tensor, mask: Tensor, scalars: Tensor | None, vectors: Tensor | None) -> Frame:
        centroid, axes, _ = principal_axes(pos, mask)
        axes = axes * third_moment_signs(pos, mask, centroid, axes)[:, None, :]
        if not has_reflections(self.group):
            third = torch.linalg.cross(axes[..., 0], axes[..., 1])
            axes = torch.stack([axes[..., 0], axes[..., 1], third], dim=-1)
        return Frame(axes, self._translation(pos, mask))
