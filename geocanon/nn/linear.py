"""The constant-velocity baseline of the N-body benchmark."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .flat_input import accepts_flat_batches

__all__ = ["ConstantVelocity"]


class ConstantVelocity(nn.Module):
    """Predicts ``pos + α · vel`` with one fitted scalar α (the published "Linear" baseline).

    Exactly E(3)-equivariant. ``forward(pos [B, N, 3], vel [B, N, 3], charge [B, N, 1], mask=None) -> [B, N, 3]``
    (charge and mask are accepted for a uniform call signature and not used); flat PyG input ``pos``, ``vel`` [M, 3]
    with ``batch=`` [M] -> [M, 3] (see :mod:`geocanon.nn.flat_input`).
    """

    def __init__(self, initial_step: float = 1.0) -> None:
        super().__init__()
        self.step = nn.Parameter(torch.tensor(float(initial_step)))

    @accepts_flat_batches(per_point=True)
    def forward(self, pos: Tensor, vel: Tensor, charge: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        return pos + self.step * vel
