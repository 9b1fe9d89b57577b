"""The interface every canonicalizer shares: ``forward(pos, ...) -> Frame``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..frames import Frame, Group, has_reflections, has_translations
from ..layout import dense_inputs
from ..validation import check_features, check_points

__all__ = ["Canonicalizer", "CorrectedCanonicalizer"]


class Canonicalizer(nn.Module):
    """Base class: maps a batch of clouds to one :class:`~geocanon.frames.Frame` per cloud.

    Subclasses implement :meth:`frame` on validated dense input. Callers use ``forward`` with
    either layout:

    * dense: ``pos`` [B, N, 3], optional ``mask`` [B, N] (True = real point),
      ``scalars`` [B, N, S], ``vectors`` [B, N, V, 3];
    * flat (PyG): ``pos`` [M, 3] with ``batch`` [M], ``scalars`` [M, S], ``vectors`` [M, V, 3].

    Attributes:
        group: "SO3", "O3", "SE3" or "E3".
        num_scalar_features / num_vector_features: per-point features the canonicalizer reads
            (0 = it ignores them).
    """

    num_scalar_features: int = 0
    num_vector_features: int = 0

    def __init__(self, group: Group) -> None:
        super().__init__()
        has_reflections(group)  # validates the name
        self.group = group

    @property
    def min_rank(self) -> int:
        """Geometric rank a cloud needs for this canonicalizer's frame to be defined."""
        return 3 if has_reflections(self.group) else 2

    def forward(
        self,
        pos: Tensor,
        batch: Tensor | None = None,
        mask: Tensor | None = None,
        scalars: Tensor | None = None,
        vectors: Tensor | None = None,
    ) -> Frame:
        """Validate the input, bring it to dense layout, and return a Frame with B clouds."""
        # Per-point vectors can fix a frame that positions alone leave undetermined (e.g. collinear
        # particles with non-collinear velocities): then only coincident clouds are rejected upfront
        # and Gram–Schmidt reports any remaining degeneracy.
        uses_vectors = self.num_vector_features > 0
        check_points(pos, mask=mask, batch=batch, min_rank=1 if uses_vectors else self.min_rank)
        leading = tuple(pos.shape[:-1])
        if self.num_scalar_features:
            if scalars is None:
                raise ValueError(f"{type(self).__name__} needs scalars with {self.num_scalar_features} features per point")
            check_features(scalars, leading, self.num_scalar_features, "scalars")
        if uses_vectors:
            if vectors is None:
                raise ValueError(f"{type(self).__name__} needs vectors with {self.num_vector_features} vectors per point")
            check_features(vectors.flatten(-2), leading, 3 * self.num_vector_features, "vectors")
        if batch is not None:
            pos, mask, scalars, vectors = dense_inputs(pos, batch, scalars, vectors)
        if mask is None:
            mask = torch.ones(pos.shape[:2], dtype=torch.bool, device=pos.device)
        else:  # padding may hold anything (NaN included): zero it so no reduction sees it
            pos = pos.masked_fill(~mask[..., None], 0.0)
            scalars = None if scalars is None else scalars.masked_fill(~mask[..., None], 0.0)
            vectors = None if vectors is None else vectors.masked_fill(~mask[..., None, None], 0.0)
        return self.frame(pos, mask, scalars if self.num_scalar_features else None, vectors if uses_vectors else None)

    def frame(self, pos: Tensor, mask: Tensor, scalars: Tensor | None, vectors: Tensor | None) -> Frame:
        """Frame for validated dense input: pos [B, N, 3], mask [B, N], scalars [B, N, S], vectors [B, N, V, 3]."""
        raise NotImplementedError

    @staticmethod
    def centroid(pos: Tensor, mask: Tensor) -> Tensor:
        """Mean of the real points of each cloud: pos [B, N, 3], mask [B, N] -> [B, 3]."""
        w = mask.to(pos.dtype)[..., None]
        return (pos * w).sum(1) / w.sum(1)

    def _translation(self, pos: Tensor, mask: Tensor) -> Tensor:
        """Centroid for SE3/E3, zeros for SO3/O3: [B, 3]."""
        if has_translations(self.group):
            return self.centroid(pos, mask)
        return pos.new_zeros(pos.shape[0], 3)


class CorrectedCanonicalizer(Canonicalizer):
    """``R = R0 · C``: a base canonicalizer's frame times a rotation read from the base-canonical cloud.

    The base-canonical cloud is invariant, so ``C`` (computed by the subclass's :meth:`correction`) is
    invariant and ``R`` exactly equivariant. The group, the features read and the translation are the
    base's. Attributes set by each call: ``last_base_rotation`` [B, 3, 3] (``R0``).
    """

    def __init__(self, base: Canonicalizer) -> None:
        super().__init__(base.group)
        self.base = base
        self.num_scalar_features = base.num_scalar_features
        self.num_vector_features = base.num_vector_features
        self.last_base_rotation: Tensor | None = None

    @property
    def min_rank(self) -> int:
        return self.base.min_rank

    def correction(self, canonical: Tensor, mask: Tensor) -> Tensor:
        """``C`` [B, 3, 3] from the base-canonical cloud [B, N, 3] (mask [B, N])."""
        raise NotImplementedError

    def frame(self, pos: Tensor, mask: Tensor, scalars: Tensor | None, vectors: Tensor | None) -> Frame:
        base = self.base.frame(pos, mask, scalars, vectors)
        self.last_base_rotation = base.rotation
        return Frame(base.rotation @ self.correction(base.to_canonical_points(pos), mask), base.translation)
