"""Frames, Gram–Schmidt and group sampling.

A :class:`Frame` is an element of E(3) per cloud: ``rotation`` R [B, 3, 3] whose **columns** are the
canonical axes written in input coordinates, and ``translation`` t [B, 3], the canonical origin.
For row-vector points P [N, 3] the canonical coordinates are ``(P - t) @ R``; vectors (velocities,
normals, forces) map as ``V @ R``. A canonicalizer is equivariant when the transformed input
``P @ Q.T + s`` yields ``R' = Q @ R`` and ``t' = Q @ t + s``: the canonical coordinates are then
exactly invariant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "Group",
    "GROUPS",
    "Frame",
    "gram_schmidt",
    "orthogonal_iteration",
    "DegenerateFrameError",
    "random_rotation",
    "random_translation",
    "geodesic_angle",
    "has_reflections",
    "has_translations",
    "random_group_element",
]

Group = Literal["SO3", "O3", "SE3", "E3"]
GROUPS: tuple[str, ...] = ("SO3", "O3", "SE3", "E3")


def _check_group(group: str) -> None:
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}")


def has_reflections(group: str) -> bool:
    """True for O3 and E3, whose frames may have determinant -1."""
    _check_group(group)
    return group in ("O3", "E3")


def has_translations(group: str) -> bool:
    """True for SE3 and E3, whose frames carry a translation."""
    _check_group(group)
    return group in ("SE3", "E3")


def _per_point(x: Tensor, batch: Tensor | None) -> Tensor:
    """Broadcast a per-cloud tensor [B, ...] to dense [B, 1, ...] or flat [M, ...] layout."""
    return x[:, None] if batch is None else x[batch]


@dataclass
class Frame:
    """A rotation (or roto-reflection) and a translation per cloud.

    Attributes:
        rotation: [B, 3, 3], orthogonal; columns are the canonical axes in input coordinates.
        translation: [B, 3], the canonical origin in input coordinates.

    Point/vector methods take dense tensors [B, N, 3] (``batch=None``) or flat PyG-style tensors
    [M, 3] with ``batch`` [M] giving each row's cloud.
    """

    rotation: Tensor
    translation: Tensor

    def __post_init__(self) -> None:
        if self.rotation.ndim != 3 or self.rotation.shape[-2:] != (3, 3):
            raise ValueError(f"Frame.rotation must have shape [B, 3, 3], got {list(self.rotation.shape)}")
        b = self.rotation.shape[0]
        if self.translation.shape != (b, 3):
            raise ValueError(
                f"Frame.translation must have shape [B, 3] = [{b}, 3], got {list(self.translation.shape)}"
            )

    @classmethod
    def identity(cls, batch_size: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Frame:
        """The identity frame for ``batch_size`` clouds."""
        eye = torch.eye(3, dtype=dtype, device=device).expand(batch_size, 3, 3).clone()
        return cls(eye, torch.zeros(batch_size, 3, dtype=eye.dtype, device=device))

    def __len__(self) -> int:
        return self.rotation.shape[0]

    @property
    def determinant(self) -> Tensor:
        """[B] determinant of each rotation (+1 proper, -1 with a reflection)."""
        return torch.linalg.det(self.rotation)

    def to(self, *args, **kwargs) -> Frame:
        """Move/cast like :meth:`torch.Tensor.to` (dtype and/or device)."""
        return Frame(self.rotation.to(*args, **kwargs), self.translation.to(*args, **kwargs))

    def detach(self) -> Frame:
        """The same frame without autograd history."""
        return Frame(self.rotation.detach(), self.translation.detach())

    def __getitem__(self, index) -> Frame:
        """Select clouds: ``frame[idx]`` with an int tensor, slice or boolean mask."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Frame(self.rotation[index], self.translation[index])

    # -- points and vectors ------------------------------------------------------------------------

    def to_canonical_points(self, pos: Tensor, batch: Tensor | None = None) -> Tensor:
        """``(P - t) @ R``: input points [B, N, 3] (or [M, 3] with batch [M]) -> canonical points."""
        return self.to_canonical_vectors(pos - _per_point(self.translation, batch), batch)

    def from_canonical_points(self, pos: Tensor, batch: Tensor | None = None) -> Tensor:
        """``P_c @ R.T + t``: canonical points [B, N, 3] (or [M, 3] with batch) -> input coordinates."""
        return self.from_canonical_vectors(pos, batch) + _per_point(self.translation, batch)

    def to_canonical_vectors(self, vec: Tensor, batch: Tensor | None = None) -> Tensor:
        """``V @ R``: vectors [B, N, 3] (or [M, 3] with batch [M]) -> canonical components."""
        if batch is None:
            return vec @ self.rotation
        return torch.einsum("mi,mij->mj", vec, self.rotation[batch])

    def from_canonical_vectors(self, vec: Tensor, batch: Tensor | None = None) -> Tensor:
        """``V_c @ R.T``: canonical vectors [B, N, 3] (or [M, 3] with batch) -> input coordinates."""
        if batch is None:
            return vec @ self.rotation.transpose(-1, -2)
        return torch.einsum("mj,mij->mi", vec, self.rotation[batch])

    # -- group operations --------------------------------------------------------------------------

    def inverse(self) -> Frame:
        """The frame g^{-1}: ``R.T`` and ``-R.T t``, so ``f.compose(f.inverse())`` is the identity."""
        rot_t = self.rotation.transpose(-1, -2)
        return Frame(rot_t, -torch.einsum("bij,bj->bi", rot_t, self.translation))

    def compose(self, other: Frame) -> Frame:
        """The E(3) product ``self ∘ other``: ``x ↦ R_s (R_o x + t_o) + t_s``.

        With this, transforming a cloud by a group element ``g = (Q, s)`` maps an equivariant frame
        ``f`` to ``g.compose(f)``.
        """
        rotation = self.rotation @ other.rotation
        translation = torch.einsum("bij,bj->bi", self.rotation, other.translation) + self.translation
        return Frame(rotation, translation)

    def apply_points(self, pos: Tensor, batch: Tensor | None = None) -> Tensor:
        """Act on points as a group element: ``P @ R.T + t`` ([B, N, 3] or [M, 3] with batch)."""
        return self.from_canonical_points(pos, batch)


class DegenerateFrameError(ValueError):
    """Gram–Schmidt met vectors that are (nearly) zero or linearly dependent."""


def gram_schmidt(vectors: Tensor, group: Group = "SO3", eps: float | None = None) -> Tensor:
    """Orthonormalise predicted vectors into rotation matrices, equivariantly.

    Each row of ``vectors[b]`` is a vector in input coordinates; the orthonormalised axes become the
    **columns** of the result, so rotating the vectors by Q rotates the frame to ``Q @ R``.

    * SO3/SE3: 2 vectors; ``e1 = v1/|v1|``, ``e2 ∝ v2 - (v2·e1) e1``, ``e3 = e1 × e2``: det = +1 always.
    * O3/E3: 3 vectors; ``e1, e2`` as above and ``e3 = s · (e1 × e2)`` with the handedness
      ``s = sign(v3 · (e1 × e2))``. Since ``e1 × e2`` is a pseudovector and the triple product a
      pseudoscalar, ``e3`` is a true vector: reflections of the input reflect the frame (det = ±1).
      This equals classical Gram–Schmidt on ``(v1, v2, v3)`` but is always exactly orthonormal,
      however close ``v3`` comes to the plane of ``v1, v2`` (a trained network has no reason to
      keep it away: only its side of the plane matters).

    Degenerate input (documented, tested behaviour): when ``v1`` is (nearly) zero or ``v2`` is
    (nearly) parallel to it — residual norm below ``eps * scale`` with ``scale`` the largest input
    norm of that cloud and ``eps`` 1e-6 (float32) or 1e-12 (float64) — no direction is defined and
    :class:`DegenerateFrameError` (a ``ValueError``) names the clouds instead of returning NaN. For
    O3/E3, a triple product of exactly zero (``v3`` in the plane) picks ``s = +1``; a tiny one makes
    the handedness numerically arbitrary for that input (the frame stays orthonormal and finite).
    Gradients are finite whenever no error is raised; ``v3`` receives no gradient (only its sign matters).

    Args:
        vectors: [B, k, 3] with k = 2 (SO3/SE3) or k = 3 (O3/E3).
        group: one of ``"SO3", "O3", "SE3", "E3"``.
        eps: relative degeneracy threshold.

    Returns:
        rotation: [B, 3, 3] with orthonormal columns.
    """
    _check_group(group)
    needed = 3 if has_reflections(group) else 2
    if vectors.ndim != 3 or vectors.shape[1:] != (needed, 3):
        raise ValueError(f"gram_schmidt for {group} needs vectors of shape [B, {needed}, 3], got {list(vectors.shape)}")
    if not torch.isfinite(vectors).all():
        bad = (~torch.isfinite(vectors)).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"gram_schmidt got NaN/Inf vectors for cloud(s) {bad[:10]}")
    if eps is None:
        eps = 1e-12 if vectors.dtype == torch.float64 else 1e-6
    scale = vectors.norm(dim=-1).amax(dim=1)  # [B]
    axes: list[Tensor] = []
    for i in range(2):
        v = vectors[:, i]
        for e in axes:
            v = v - (v * e).sum(-1, keepdim=True) * e
        norm = v.norm(dim=-1)
        bad = norm <= eps * scale
        if bad.any():
            raise DegenerateFrameError(
                f"cannot build a {group} frame: predicted vector {i + 1} is zero or parallel to the previous "
                f"one for cloud(s) {bad.nonzero().flatten().tolist()[:10]} (residual norm "
                f"{norm[bad].min().item():.3g} <= {eps:g} x scale); the input is probably degenerate "
                f"(coincident, collinear, or symmetric)"
            )
        axes.append(v / norm[:, None])
    normal = torch.linalg.cross(axes[0], axes[1])
    if needed == 3:
        triple = (vectors[:, 2] * normal).sum(-1, keepdim=True).detach()
        normal = torch.where(triple < 0, -normal, normal)
    axes.append(normal)
    return torch.stack(axes, dim=-1)


def orthogonal_iteration(matrix: Tensor, vectors: Tensor, steps: int) -> Tensor:
    """Pull vectors towards the leading eigenvectors of a symmetric matrix, smoothly and equivariantly.

    ``steps`` rounds of orthogonal (block power) iteration: multiply every vector by ``matrix``, then
    orthonormalise them in order (each loses its components along the earlier ones). The k-th vector
    converges to ± the k-th eigenvector (by decreasing eigenvalue) at the rate
    ``(λ_{k+1}/λ_k)^steps``, with its **sign taken from the starting vector**, so the result stays a
    continuous function of the inputs where two eigenvalues are (nearly) equal — where the
    eigenvectors themselves (PCA) jump. Equivariant: ``Q M Qᵀ`` and ``v Qᵀ`` give ``result Qᵀ`` for
    any orthogonal Q (rotations and reflections).

    Why by hand: ``torch.linalg.eigh`` returns eigenvectors with arbitrary signs and discontinuous
    order; neither e3nn nor PyG has a sign-preserving, differentiable power iteration.

    Args:
        matrix: [B, 3, 3] symmetric positive semi-definite (e.g. a covariance).
        vectors: [B, k, 3] starting vectors (rows), k <= 3.
        steps: number of iterations (0 returns ``vectors`` unchanged).

    Returns:
        [B, k, 3] orthonormal rows; a vector that vanishes (zero start, or orthogonal to the
        matrix's range) stays exactly zero, and :func:`gram_schmidt` then reports the degeneracy.
    """
    if matrix.ndim != 3 or matrix.shape[1:] != (3, 3):
        raise ValueError(f"orthogonal_iteration needs matrices of shape [B, 3, 3], got {list(matrix.shape)}")
    if vectors.ndim != 3 or vectors.shape[0] != matrix.shape[0] or vectors.shape[2] != 3 or vectors.shape[1] > 3:
        raise ValueError(f"orthogonal_iteration needs vectors of shape [{matrix.shape[0]}, k<=3, 3], got {list(vectors.shape)}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    tiny = torch.finfo(vectors.dtype).tiny
    # normalise by the trace so that repeated products neither overflow nor underflow
    matrix = matrix / matrix.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(tiny)[:, None, None]
    for _ in range(steps):
        product = vectors @ matrix  # rows times a symmetric matrix
        rows: list[Tensor] = []
        for i in range(product.shape[1]):
            v = product[:, i]
            for e in rows:
                v = v - (v * e).sum(-1, keepdim=True) * e
            rows.append(v / v.norm(dim=-1, keepdim=True).clamp_min(tiny))
        vectors = torch.stack(rows, dim=1)
    return vectors


def random_rotation(
    batch_size: int,
    reflections: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Haar-random elements of SO(3), or of O(3) when ``reflections`` (det = -1 with probability 1/2).

    Sampled as the Q factor of a Gaussian matrix with the sign convention that makes it Haar
    (Mezzadri 2007), so an explicit ``generator`` gives reproducible draws (``e3nn.o3.rand_matrix``
    has no generator argument).

    Returns:
        [batch_size, 3, 3] orthogonal matrices.
    """
    dtype = dtype or torch.get_default_dtype()
    gauss = torch.randn(batch_size, 3, 3, dtype=dtype, device=device, generator=generator)
    q, r = torch.linalg.qr(gauss)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    det = torch.linalg.det(q)
    if reflections:
        flip = torch.randint(0, 2, (batch_size,), device=device, generator=generator).to(dtype) * 2 - 1
        target = flip
    else:
        target = torch.ones_like(det)
    # Multiply the last column by det*target: proper where target=+1, improper where target=-1.
    q = torch.cat([q[..., :2], q[..., 2:] * (det * target)[:, None, None]], dim=-1)
    return q


def random_translation(
    batch_size: int,
    scale: float = 1.0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Gaussian translations with standard deviation ``scale``: [batch_size, 3]."""
    dtype = dtype or torch.get_default_dtype()
    return scale * torch.randn(batch_size, 3, dtype=dtype, device=device, generator=generator)


def random_group_element(
    group: Group,
    batch_size: int,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    translation_scale: float = 1.0,
) -> Frame:
    """A random element of ``group`` per cloud, as a :class:`Frame` (zero translation for SO3/O3)."""
    _check_group(group)
    rot = random_rotation(batch_size, has_reflections(group), dtype, device, generator)
    if has_translations(group):
        shift = random_translation(batch_size, translation_scale, rot.dtype, device, generator)
    else:
        shift = torch.zeros(batch_size, 3, dtype=rot.dtype, device=device)
    return Frame(rot, shift)


def geodesic_angle(r1: Tensor, r2: Tensor | None = None) -> Tensor:
    """Geodesic distance on SO(3) in radians, ``arccos((tr(R1ᵀ R2) - 1) / 2)``.

    Args:
        r1: [..., 3, 3].
        r2: [..., 3, 3], or None for the identity.

    Returns:
        [...] angles in [0, π]. For matrices of different determinant the angle of ``R1ᵀ R2`` as a
        roto-reflection is not a rotation angle; the trace formula is still applied (clamped), which
        gives π or more-than-identity distances, so such pairs never count as "close".
    """
    rel = r1 if r2 is None else r1.transpose(-1, -2) @ r2
    cos = (torch.diagonal(rel, dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.arccos(cos.clamp(-1.0, 1.0))
