"""A base frame followed by a learned, invariant choice among the rotations of the cube.

For adapting a backbone pretrained on upright data (Mondal et al. 2023) the canonical frame of an
upright cloud must be (near) the identity. An equivariant network cannot output that for
symmetric shapes (the outputs of an E(3)-equivariant function are fixed by the input's symmetries,
so its vectors vanish on a box), and a stable frame such as the principal axes is upright only up
to an axis permutation and signs. :class:`OctahedralChoice` keeps a base frame ``R0`` (stable:
e.g. an :class:`~geocanon.E3nnCanonicalizer` with covariance power iterations) and multiplies it by
one of the K = 24 rotations of the cube (48 signed permutations for O3/E3), chosen by a small
PointNet that reads the base-canonical cloud. That cloud is invariant, so the choice is invariant and
``R = R0 P`` stays exactly equivariant (ties between two logits are the only, measure-zero,
exception). The head is trained with :meth:`~geocanon.CanonicalizationPrior.choice_loss`: its target
is the candidate that minimises the prior, so on upright training data it learns to put each shape
back upright.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from ..frames import has_reflections
from ..nn.pointnet import CloudHead
from .base import Canonicalizer, CorrectedCanonicalizer

__all__ = ["OctahedralChoice", "cube_rotations"]


def cube_rotations(reflections: bool = False, dtype: torch.dtype | None = None) -> Tensor:
    """The signed permutation matrices [K, 3, 3]: K = 24 rotations (det +1), or all 48 with reflections.

    The identity comes first.
    """
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = torch.zeros(3, 3, dtype=dtype)
            m[torch.arange(3), torch.tensor(perm)] = torch.tensor(signs, dtype=dtype)
            if reflections or torch.linalg.det(m) > 0:
                mats.append(m)
    return torch.stack(mats)


class OctahedralChoice(CorrectedCanonicalizer):
    """``R = R0 · P_k``: a base frame times the cube rotation a PointNet head picks from the base-canonical cloud.

    Args:
        base: the canonicalizer giving ``R0`` (its group is this one's; its translation is kept).
        hidden: width of the head (per-point MLP 3 → hidden → 2·hidden, max-pool, MLP → K logits).

    Shapes: as every :class:`~geocanon.canonicalizers.base.Canonicalizer` (dense [B, N, 3] with
    optional mask, or flat with ``batch``); returns a Frame with ``rotation`` [B, 3, 3].

    Attributes set by each call (for the prior's choice loss): ``last_base_rotation`` [B, 3, 3] and
    ``last_logits`` [B, K]; ``candidates`` [K, 3, 3] is a buffer, also read as ``last_candidates`` (the
    rotations the logits score, as for :class:`~geocanon.canonicalizers.search.PoseSearch`).
    """

    def __init__(self, base: Canonicalizer, hidden: int = 64) -> None:
        super().__init__(base)
        self.register_buffer("candidates", cube_rotations(has_reflections(base.group)), persistent=False)
        self.chooser = CloudHead(self.candidates.shape[0], hidden)
        self.last_logits: Tensor | None = None

    @property
    def last_candidates(self) -> Tensor:
        """The rotations [K, 3, 3] scored by ``last_logits``: always all the candidates."""
        return self.candidates

    def correction(self, canonical: Tensor, mask: Tensor) -> Tensor:
        """The candidate with the highest logit [B, 3, 3]; the logits [B, K] are kept in ``last_logits``."""
        self.last_logits = self.chooser(canonical, mask)
        return self.candidates.to(canonical.dtype)[self.last_logits.argmax(-1)]
