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
* appearance:  ``L = mean_b d(R_bᵀ x_b, x_b)``, the symmetric Chamfer distance (mean squared distance to the
  nearest point, both ways, over a farthest-point subsample, divided by the mean squared radius) between the
  canonical cloud and the input cloud, both centred at the input's centroid: zero at R = I *and at every
  rotation that maps the upright shape onto itself*. For upright data of symmetric shapes (a box, a
  regular polyhedron) the identity prior prefers one of several poses that look the same, which no
  invariant scorer can tell apart; this one accepts them all. Needs the input clouds.

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
from .nn.neighbors import farthest_point_sampling

__all__ = ["identity_prior", "axis_prior", "appearance_prior", "CanonicalizationPrior", "fraction_within", "mean_angle_to_identity"]


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


def _appearance_distance(rotation: Tensor, pos: Tensor, num_points: int) -> Tensor:
    """Scale-free Chamfer distance between each canonical cloud and its input: rotation [B, 3, 3] or
    [B, K, 3, 3], pos [B, N, 3] -> [B] or [B, K] (module docstring)."""
    if pos.ndim != 3 or pos.shape[0] != rotation.shape[0] or pos.shape[-1] != 3:
        raise ValueError(f"pos must be [B, N, 3] with B = {rotation.shape[0]}, got {list(pos.shape)}")
    if not bool(torch.isfinite(pos).all()):
        raise ValueError("pos holds NaN or Inf: the appearance prior compares real clouds")
    pos = pos - pos.mean(1, keepdim=True)
    points = torch.gather(pos, 1, farthest_point_sampling(pos, min(num_points, pos.shape[1]))[..., None].expand(-1, -1, 3))
    frames = rotation if rotation.ndim == 4 else rotation[:, None]  # [B, K, 3, 3]
    canonical = torch.einsum("bsd,bkde->bkse", points, frames.to(points.dtype))  # rows x R = (Rᵀ x)ᵀ
    sq = torch.cdist(canonical, points[:, None].expand_as(canonical)) ** 2  # [B, K, S, S]
    chamfer = 0.5 * (sq.amin(-1).mean(-1) + sq.amin(-2).mean(-1))  # [B, K]
    distance = chamfer / (points**2).sum(-1).mean(-1, keepdim=True).clamp_min(torch.finfo(pos.dtype).tiny)
    return distance if rotation.ndim == 4 else distance[:, 0]


def appearance_prior(rotation: Tensor, pos: Tensor, num_points: int = 64) -> Tensor:
    """``mean_b d(R_bᵀ x_b, x_b)`` (module docstring): rotation [B, 3, 3], pos [B, N, 3] -> scalar."""
    return _appearance_distance(rotation, pos, num_points).mean()


class CanonicalizationPrior(nn.Module):
    """A prior chosen by name: "identity", "axis", "appearance" or "none", weighted by ``beta``.

    Args:
        kind: "identity" (towards I or ``reference``), "axis" (keep ``axis`` fixed), "appearance" (the
            canonical cloud should look like the input: needs ``pos`` in the calls) or "none".
        beta: weight of the prior in the loss.
        axis: the "up" axis for kind="axis".
        reference: [3, 3] reference rotation for kind="identity" (default I).
        appearance_points: farthest-point subsample of each input cloud that kind="appearance" compares.
    """

    #: default τ of :meth:`choice_loss` per kind: about the distance of a 7° turn (identity: 4(1 − cos θ);
    #: appearance: measured on SyntheticShapes, 0.006 at 5°, 0.022 at 10°, 0.05 at 20°)
    TEMPERATURES = {"identity": 0.1, "axis": 0.1, "appearance": 0.02}

    def __init__(
        self,
        kind: Literal["identity", "axis", "appearance", "none"] = "identity",
        beta: float = 1.0,
        axis: tuple[float, float, float] = (0.0, 0.0, 1.0),
        reference: Tensor | None = None,
        appearance_points: int = 64,
    ) -> None:
        super().__init__()
        if kind not in ("identity", "axis", "appearance", "none"):
            raise ValueError(f"prior kind must be 'identity', 'axis', 'appearance' or 'none', got {kind!r}")
        self.kind = kind
        self.beta = beta
        self.axis = axis
        self.appearance_points = appearance_points
        self.register_buffer("reference", reference, persistent=False)

    def _pos(self, pos: Tensor | None) -> Tensor:
        if pos is None:
            raise ValueError("the appearance prior compares canonical and input clouds: pass pos [B, N, 3]")
        return pos

    def forward(self, rotation: Tensor, pos: Tensor | None = None) -> Tensor:
        """beta × prior for rotations [B, 3, 3] (of the input clouds ``pos`` [B, N, 3], which kind="appearance"
        needs) -> scalar (0 for kind="none")."""
        if self.kind == "none":
            return rotation.new_zeros(())
        if self.kind == "axis":
            return self.beta * axis_prior(rotation, self.axis)
        if self.kind == "appearance":
            return self.beta * appearance_prior(rotation, self._pos(pos), self.appearance_points)
        return self.beta * identity_prior(rotation, self.reference)

    def choice_loss(self, base_rotation: Tensor, logits: Tensor, candidates: Tensor, temperature: float | None = None,
                    pos: Tensor | None = None) -> Tensor:  # fmt: skip
        """beta × cross-entropy of a candidate choice against the prior's preference (0 for kind="none").

        Args:
            base_rotation: [B, 3, 3] base frames R0 (no gradient flows into them from this loss).
            logits: [B, K] the choice head's scores of the candidates.
            candidates: [K, 3, 3] the rotations P_k (frames R0 P_k), or [B, K, 3, 3] for each frame its own.
            temperature: τ of the target ``softmax(−prior(R0 P_k)/τ)`` (default :attr:`TEMPERATURES` of the
                kind); prior values are squared distances in [0, 8] (identity) or [0, 4] (axis).
            pos: [B, N, 3] the input clouds (kind="appearance" only).
        """
        if self.kind == "none":
            return logits.new_zeros(())
        temperature = self.TEMPERATURES[self.kind] if temperature is None else temperature
        frames = base_rotation.detach()[:, None] @ candidates.to(base_rotation.dtype)  # [B, K, 3, 3]
        if self.kind == "axis":
            distance = _axis_distance(frames, self.axis)
        elif self.kind == "appearance":
            with torch.no_grad():
                distance = _appearance_distance(frames, self._pos(pos).detach(), self.appearance_points)
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
