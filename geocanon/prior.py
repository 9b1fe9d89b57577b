"""Canonicalization priors and frame diagnostics (Mondal et al. 2023).

With a backbone pretrained on upright data, the canonicalizer should not only be equivariant but
also map upright inputs to (near) the identity frame, so the backbone sees what it was trained on.
The priors are squared Frobenius/Euclidean distances, averaged over the batch:

* identity / reference:  ``L = mean_b ‖R_b − R_ref‖_F²`` (R_ref = I by default). For proper
  rotations ``‖R − R_ref‖_F² = 6 − 2 tr(R_refᵀR) = 4 (1 − cos θ_b)``, θ_b the geodesic angle to the
  reference; a reflected frame (det −1) is at least ``‖R − I‖_F² ≥ 4`` away;
* axis only:  ``L = mean_b ‖R_b u − u‖²`` for a unit "up" axis u: the canonical frame keeps u fixed
  (so the canonical "up" is the input "up") and leaves the rotation about u free — for data that
  are upright but freely rotated about u.

A discrete form for :class:`~geocanon.canonicalizers.choice.OctahedralChoice`:
:meth:`CanonicalizationPrior.choice_loss` is the cross-entropy between the head's logits over the
candidate rotations ``P_k`` and the distribution ``softmax(−prior(R0 P_k)/τ)`` (one-hot on the
candidate closest to the identity, or spread over the candidates that tie for the axis prior).

Diagnostics: the geodesic angle ``θ_b = arccos((tr(R_b) − 1)/2)`` to the identity, its mean, and the
fraction of frames with ``θ_b`` below a tolerance (10° by default).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from .frames import geodesic_angle

__all__ = ["identity_prior", "axis_prior", "CanonicalizationPrior", "fraction_within", "mean_angle_to_identity"]


def _identity_distance(rotation: Tensor, reference: Tensor | None = None) -> Tensor:
    """``‖R − R_ref‖_F²`` per frame: rotation [..., 3, 3] -> [...]."""
    if reference is None:
        reference = torch.eye(3, dtype=rotation.dtype, device=rotation.device)
    return ((rotation - reference) ** 2).sum((-1, -2))


def _axis_distance(rotation: Tensor, axis: Tensor | tuple[float, float, float]) -> Tensor:
    """``‖R u − u‖²`` per frame: rotation [..., 3, 3] -> [...]."""
    u = torch.as_tensor(axis, dtype=rotation.dtype, device=rotation.device)
    u = u / u.norm()
    return ((rotation @ u - u) ** 2).sum(-1)


def identity_prior(rotation: Tensor, reference: Tensor | None = None) -> Tensor:
    """``mean_b ‖R_b − R_ref‖_F²``: rotation [B, 3, 3], reference [3, 3] or [B, 3, 3] (default I) -> scalar."""
    return _identity_distance(rotation, reference).mean()


def axis_prior(rotation: Tensor, axis: Tensor | tuple[float, float, float] = (0.0, 0.0, 1.0)) -> Tensor:
    """``mean_b ‖R_b u − u‖²`` for a unit axis u: rotation [B, 3, 3] -> scalar."""
    return _axis_distance(rotation, axis).mean()


class CanonicalizationPrior(nn.Module):
    """A prior chosen by name: "identity", "axis" or "none", weighted by ``beta``.

    Args:
        kind: "identity" (towards I or ``reference``), "axis" (keep ``axis`` fixed) or "none".
        beta: weight of the prior in the loss.
        axis: the "up" axis for kind="axis".
        reference: [3, 3] reference rotation for kind="identity" (default I).
    """

    def __init__(
        self,
        kind: Literal["identity", "axis", "none"] = "identity",
        beta: float = 1.0,
        axis: tuple[float, float, float] = (0.0, 0.0, 1.0),
        reference: Tensor | None = None,
    ) -> None:
        super().__init__()
        if kind not in ("identity", "axis", "none"):
            raise ValueError(f"prior kind must be 'identity', 'axis' or 'none', got {kind!r}")
        self.kind = kind
        self.beta = beta
        self.axis = axis
        self.register_buffer("reference", reference, persistent=False)

    def forward(self, rotation: Tensor) -> Tensor:
        """beta × prior for rotations [B, 3, 3] -> scalar (0 for kind="none")."""
        if self.kind == "none":
            return rotation.new_zeros(())
        if self.kind == "axis":
            return self.beta * axis_prior(rotation, self.axis)
        return self.beta * identity_prior(rotation, self.reference)

    def choice_loss(self, base_rotation: Tensor, logits: Tensor, candidates: Tensor, temperature: float = 0.1) -> Tensor:
        """beta × cross-entropy of a candidate choice against the prior's preference (0 for kind="none").

        Args:
            base_rotation: [B, 3, 3] base frames R0 (no gradient flows into them from this loss).
            logits: [B, K] the choice head's scores of the candidates.
            candidates: [K, 3, 3] the rotations P_k (frames R0 P_k), or [B, K, 3, 3] for each frame its own.
            temperature: τ of the target ``softmax(−prior(R0 P_k)/τ)``; prior values are squared
                distances in [0, 8] (identity) or [0, 4] (axis).
        """
        if self.kind == "none":
            return logits.new_zeros(())
        frames = base_rotation.detach()[:, None] @ candidates.to(base_rotation.dtype)  # [B, K, 3, 3]
        if self.kind == "axis":
            distance = _axis_distance(frames, self.axis)
        else:
            reference = self.reference
            if reference is not None and reference.ndim == 3:  # one reference per frame
                reference = reference[:, None]
            distance = _identity_distance(frames, reference)
        target = torch.softmax(-distance / temperature, dim=-1)
        return self.beta * torch.nn.functional.cross_entropy(logits, target)


def fraction_within(rotation: Tensor, degrees: float = 10.0, reference: Tensor | None = None) -> float:
    """Fraction of frames [B, 3, 3] within ``degrees`` (geodesic) of the reference (default identity)."""
    ref = None if reference is None else reference.expand_as(rotation)
    angle = geodesic_angle(rotation) if ref is None else geodesic_angle(ref, rotation)
    return (angle <= math.radians(degrees)).to(torch.float64).mean().item()


def mean_angle_to_identity(rotation: Tensor) -> float:
    """Mean geodesic angle in degrees between frames [B, 3, 3] and the identity."""
    return math.degrees(geodesic_angle(rotation).mean().item())
