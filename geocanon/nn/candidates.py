"""Averaging an invariant output over the candidate frames of an E(3) canonicalization.

An O3/E3 canonicalizer builds ``e1, e2`` from two predicted vectors and the third axis as
``e3 = s · (e1 × e2)`` with the handedness ``s = sign(v3 · (e1 × e2))`` of a third predicted vector
(:func:`~geocanon.frames.gram_schmidt`). ``s`` flips where the triple product — one number, so on a
codimension-one set of geometries, e.g. near mirror-symmetric molecules, where an equivariant network's
vectors all lie near the mirror plane — crosses zero. A model that reads
canonical coordinates is then discontinuous there (Dym et al. 2024). Averaging the output over the
frame ``R`` and its flipped copy ``R · diag(1, 1, -1)`` removes that jump: both candidates are
equivariant frames (a reflection of the input maps the pair onto itself), so the average is still
exactly invariant, and for an E(3)-invariant target nothing is lost, since the two canonical clouds
are mirror images. The price is two backbone calls. (The codimension-two degeneracies — ``v2⊥ = 0``
or ``v1 = 0`` — rotate the frame continuously and cannot be fixed by a finite average.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..frames import Frame, has_reflections
from ..validation import check_one_layout

__all__ = ["ThirdAxisAveraged"]


class ThirdAxisAveraged(nn.Module):
    """Invariant backbone output averaged over the canonical frame and its third-axis flip.

    Args:
        backbone: a module, or its spec (see :mod:`geocanon.checkpoint`; only a model built from specs can be
            saved), called as ``backbone(pos_canonical, **scalars, mask=mask)`` on dense input and
            ``backbone(pos_canonical, **scalars, batch=batch)`` on flat input -> [clouds, ...].
        canonicalizer: an O3/E3 canonicalizer, or its spec.
        scalar_features: names of per-point invariant keyword inputs, concatenated for the canonicalizer.

    Shapes: dense ``pos`` [B, N, 3], scalars [B, N, F], optional ``mask`` [B, N]; or flat (PyG-style) ``pos``
    [M, 3], scalars [M, F], ``batch`` [M] -> the backbone's invariant output [B, ...]. On flat input the backbone
    gets the 2·M canonical points of both candidate frames with ``batch`` numbering the 2·B copies (the flipped
    copy of cloud b is cloud B + b).
    """

    def __init__(self, backbone: nn.Module | dict[str, Any], canonicalizer: nn.Module | dict[str, Any], scalar_features: Sequence[str] = ()) -> None:
        super().__init__()
        from ..checkpoint import build  # checkpoint resolves this module by name: import lazily

        self.backbone = backbone if isinstance(backbone, nn.Module) else build(backbone)
        self.canonicalizer = canonicalizer if isinstance(canonicalizer, nn.Module) else build(canonicalizer)
        if not has_reflections(self.canonicalizer.group):
            raise ValueError(f"third-axis averaging needs an O3/E3 canonicalizer, got group {self.canonicalizer.group}")
        self.scalar_features = tuple(scalar_features)

    def forward(self, pos: Tensor, mask: Tensor | None = None, batch: Tensor | None = None, **scalars: Tensor) -> Tensor:
        """Mean of the backbone output in the two candidate frames (see class docstring)."""
        if set(scalars) != set(self.scalar_features):
            raise ValueError(f"expected scalar features {sorted(self.scalar_features)}, got {sorted(scalars)}")
        check_one_layout(batch, mask)
        can = self.canonicalizer
        features = torch.cat([scalars[k] for k in self.scalar_features], -1) if can.num_scalar_features else None
        frame = can(pos, batch=batch, mask=mask, scalars=features)
        clouds = len(frame.rotation)
        flip = torch.tensor([1.0, 1.0, -1.0], dtype=pos.dtype, device=pos.device)
        both = Frame(torch.cat([frame.rotation, frame.rotation * flip]), frame.translation.repeat(2, 1))
        repeated = {k: v.repeat(2, *([1] * (v.ndim - 1))) for k, v in scalars.items()}  # dense [2B, N, F] or flat [2M, F]
        if batch is None:
            pos_c = both.to_canonical_points(pos.repeat(2, 1, 1))
            extra = {} if mask is None else {"mask": mask.repeat(2, 1)}
        else:
            copies = torch.cat([batch, batch + clouds])  # still sorted: the flipped copies come after all originals
            pos_c = both.to_canonical_points(pos.repeat(2, 1), copies)
            extra = {"batch": copies}
        out = self.backbone(pos_c, **repeated, **extra)
        return out.unflatten(0, (2, clouds)).mean(0)
