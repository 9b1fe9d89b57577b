"""A base frame followed by a learned, invariant rotation regressed from the base-canonical cloud.

The continuous counterpart of :class:`~geocanon.canonicalizers.choice.OctahedralChoice`, for adapting
backbones pretrained on upright data (Mondal et al. 2023): a stable base frame ``R0`` (e.g. an
:class:`~geocanon.E3nnCanonicalizer` with covariance power iterations) is upright only up to a
rotation that depends on the shape — principal axes of upright objects are often tilted from "up".
:class:`RegressedOrientation` reads the base-canonical cloud with a small PointNet, which outputs two
vectors (the 6-D rotation representation of Zhou et al. 2019); Gram–Schmidt makes them a rotation
``C``, and the frame is ``R = R0 C``. The canonical cloud is invariant, so ``C`` is invariant and ``R``
exactly equivariant. ``C`` starts as the identity and is trained by the canonicalization prior on the
final frame (towards identity on upright data: the head learns to put each shape back upright).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..frames import gram_schmidt
from ..nn.pointnet import CloudHead
from .base import Canonicalizer, CorrectedCanonicalizer

__all__ = ["RegressedOrientation"]


class RegressedOrientation(CorrectedCanonicalizer):
    """``R = R0 · C``: a base frame times a proper rotation ``C`` regressed from the base-canonical cloud.

    Args:
        base: the canonicalizer giving ``R0`` (its group is this one's; its translation is kept). Any
            canonicalizer, including an :class:`~geocanon.OctahedralChoice` (coarse choice, then a
            continuous correction).
        hidden: width of the head (per-point MLP 3 → hidden → 2·hidden, max-pool, MLP → 6).

    Shapes: as every :class:`~geocanon.canonicalizers.base.Canonicalizer` (dense [B, N, 3] with
    optional mask, or flat with ``batch``); returns a Frame with ``rotation`` [B, 3, 3].
    ``C`` has det +1, so ``det R = det R0`` (reflections are the base's to handle).

    Attributes set by each call: ``last_correction`` [B, 3, 3] (``C``).
    """

    def __init__(self, base: Canonicalizer, hidden: int = 64) -> None:
        super().__init__(base)
        self.regressor = CloudHead(6, hidden)
        last = self.regressor.head[-1]
        with torch.no_grad():  # start at C = I: the two vectors are the canonical x and y axes
            last.weight.zero_()
            last.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
        self.last_correction: Tensor | None = None

    def correction(self, canonical: Tensor, mask: Tensor) -> Tensor:
        """Gram–Schmidt of the two regressed vectors [B, 3, 3] (columns in base-canonical coordinates)."""
        two_vectors = self.regressor(canonical, mask).unflatten(-1, (2, 3))  # [B, 2, 3]
        self.last_correction = gram_schmidt(two_vectors, "SO3")
        return self.last_correction
