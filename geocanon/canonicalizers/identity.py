"""The identity canonicalizer: the baseline that changes nothing."""

from __future__ import annotations

from torch import Tensor

from ..frames import Frame, Group
from .base import Canonicalizer

__all__ = ["IdentityCanonicalizer"]


class IdentityCanonicalizer(Canonicalizer):
    """Returns the identity frame (R = I, t = 0) for every cloud, whatever the group.

    A wrapped model with this canonicalizer is exactly the bare backbone: the baseline for
    "plain" and "augmentation" runs. Input is still validated like every canonicalizer's.
    """

    def __init__(self, group: Group = "SO3") -> None:
        super().__init__(group)

    @property
    def min_rank(self) -> int:
        return 1

    def frame(self, pos: Tensor, mask: Tensor, scalars: Tensor | None, vectors: Tensor | None) -> Frame:
        return Frame.identity(pos.shape[0], dtype=pos.dtype, device=pos.device)
