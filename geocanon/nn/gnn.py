"""Plain (non-equivariant) message-passing GNN for N-body trajectory prediction.

Each system is a fully connected graph of its particles. Message passing is dense over the
``[B, N, N]`` pairs, which is exact and fast for the small N of N-body systems and works for any N.
The model is deliberately not equivariant: absolute positions and velocities are node inputs, so
it is the backbone that a canonicalizer makes E(3)-equivariant.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..validation import check_dense_batch
from .flat_input import accepts_flat_batches

__all__ = [
    "ACTIVATIONS", "COULOMB_SOFTENING", "INITS", "NBodyGNN", "check_nbody_inputs", "closest_approach", "initialise_", "mlp",
    "pair_mask",
]  # fmt: skip

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}


#: weight initialisations of the GNNs: Xavier-uniform weights with zero biases (as PyG's SchNet), or PyTorch's
#: default ``nn.Linear`` initialisation
INITS = ("xavier", "torch")


def initialise_(module: nn.Module, init: str) -> None:
    """Re-initialise every ``nn.Linear`` in ``module`` in place by ``init`` (one of :data:`INITS`; "torch" keeps them)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "xavier":
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)


def mlp(sizes: list[int], activation: str, final_activation: bool) -> nn.Sequential:
    """Fully connected network ``sizes[0] -> ... -> sizes[-1]``.

    Args:
        sizes: layer widths, at least two.
        activation: key of :data:`ACTIVATIONS`.
        final_activation: apply the activation after the last layer too.

    Returns:
        module mapping [..., sizes[0]] -> [..., sizes[-1]].
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(c_in, c_out))
        if final_activation or i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def check_nbody_inputs(
    pos: Tensor, vel: Tensor, charge: Tensor, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Validate N-body inputs and zero the padding particles.

    Args:
        pos: [B, N, 3] positions.
        vel: [B, N, 3] velocities.
        charge: [B, N, 1] charges.
        mask: [B, N] bool, True for real particles, or None.

    Returns:
        (pos, vel, charge, mask) with padding rows set to 0, so that whatever the caller put there
        cannot reach the real particles (not even as NaN times a zero weight).

    Raises:
        ValueError: wrong shapes, non-finite values of real particles, or a system without particles.
    """
    mask, _ = check_dense_batch(pos, mask, "pos")
    if vel.shape != pos.shape:
        raise ValueError(f"vel must have the shape of pos {tuple(pos.shape)}, got {tuple(vel.shape)}")
    if charge.shape != (*pos.shape[:2], 1):
        raise ValueError(f"charge must have shape {(*pos.shape[:2], 1)}, got {tuple(charge.shape)}")
    pad = ~mask[..., None]
    for name, value in (("vel", vel), ("charge", charge)):
        bad = ~(torch.isfinite(value) | pad).all(-1).all(-1)
        if bool(bad.any()):
            raise ValueError(f"{name}: systems {torch.nonzero(bad).flatten().tolist()} contain NaN or Inf")
    return pos.masked_fill(pad, 0.0), vel.masked_fill(pad, 0.0), charge.masked_fill(pad, 0.0), mask


def pair_mask(mask: Tensor) -> Tensor:
    """Ordered pairs (i, j), i != j, of real particles.

    Args:
        mask: [B, N] True for real particles.

    Returns:
        [B, N, N] bool, entry (b, i, j) True when both are real and i != j.
    """
    eye = torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
    return mask[:, :, None] & mask[:, None, :] & ~eye


def closest_approach(diff: Tensor, dvel: Tensor, window: float) -> tuple[Tensor, Tensor]:
    """Closest approach of pairs moving at constant velocity within ``[0, window]``.

    Args:
        diff: [..., 3] separations ``x_i - x_j``.
        dvel: [..., 3] relative velocities ``v_i - v_j``.
        window: length of the time window, in the units of the velocities.

    Returns:
        ``(t, d2)``, each [..., 1]: the time ``t* = clamp(-r·Δv / |Δv|², 0, window)`` and the squared distance
        ``|r + t* Δv|²`` then. A pair at rest relative to each other (Δv = 0) gets ``t* = 0``.
    """
    radial = (diff * dvel).sum(-1, keepdim=True)
    t = (-radial / (dvel**2).sum(-1, keepdim=True).clamp_min(1e-12)).clamp(0.0, window)
    return t, ((diff + t * dvel) ** 2).sum(-1, keepdim=True)


COULOMB_SOFTENING = 0.1
"""Softening length s of the Coulomb edge features: |q_i q_j (x_i - x_j)| / (r² + s²)^{3/2} ≤ 2/(3√3 s²) ≈ 38.5,
the order of the simulator's clipping of each force component at ±100."""


class NBodyGNN(nn.Module):
    """Message-passing GNN predicting the positions of every particle at the target frame.

    Node inputs: position, velocity, speed |v| and charge (8 numbers; 7 without ``node_charges``). Edge
    inputs: ``q_i q_j`` and ``|x_i - x_j|^2``. Each layer: ``m_ij = phi_e(h_i, h_j, e_ij)``, ``h_i <- h_i + phi_h(h_i, sum_j
    m_ij)`` (then LayerNorm if enabled). Output ``pos + decoder(h)`` (or ``decoder(h)`` without the
    position residual).

    Args:
        hidden: width of node features and messages.
        layers: number of message-passing layers.
        activation: key of :data:`ACTIVATIONS`.
        layer_norm: apply LayerNorm to the node features after every layer.
        position_residual: predict a displacement added to the input positions.
        relative_positions: add the displacement ``x_i - x_j`` (3 numbers, frame-dependent) to the
            edge inputs; meaningful in a canonical frame, where it is invariant.
        velocity_residual: also add ``α · vel`` with a learned scalar α (initialised to 1): the
            constant-velocity guess, which the network then corrects.
        coulomb_edges: add the softened Coulomb interaction of every pair to the edge inputs:
            ``q_i q_j / (r² + s²)`` and, with ``relative_positions``, the pair force
            ``q_i q_j (x_i - x_j) / (r² + s²)^{3/2}`` (s = ``COULOMB_SOFTENING``): the physics of the
            charged-particle system as a feature, which the network still has to integrate over time.
        node_charges: give every node its own charge. Without, charges enter only through the products
            ``q_i q_j`` on the edges, so the model is invariant to flipping the sign of all charges, as
            the dynamics are (the forces depend on the charges only through ``q_i q_j``).
        approach_edges: add the pair's constant-velocity encounter to the edge inputs: the radial velocity
            ``(x_i - x_j)·(v_i - v_j)``, ``|v_i - v_j|^2``, the time of closest approach ``t*`` (clamped to the
            step's window [0, 1/K] of the horizon) and the squared distance then, ``|x_i - x_j + t* (v_i - v_j)|^2``;
            with ``relative_positions`` also ``v_i - v_j`` (frame-dependent), with ``coulomb_edges`` also the
            softened ``q_i q_j / (d*^2 + s^2)`` at closest approach. Close encounters within the horizon carry
            most of the error (see the N-body results' ``worst5_share``); these features say which pairs meet.
        pair_vector_output: add to the output the sum over the other particles j of ``a_ij (x_i - x_j) +
            b_ij (v_i - v_j)``, with scalars a_ij, b_ij read off the last layer's messages by a linear head: the
            shape of the two-body problem's answer (a pair moves in the plane of its separation and relative
            velocity). The coefficients still come from the canonical, frame-dependent inputs, so the network
            stays non-equivariant on its own. The head is initialised to zero.
        substeps: apply the network K times with shared weights, as a learned integrator: each step
            predicts the particles' mean velocity over 1/K of the horizon, ``v' = α · v + decoder(h)``
            (``v' = decoder(h)`` without the velocity residual), and moves them by ``v' / K``; the next
            step recomputes the node and edge inputs (Coulomb features included) from the positions
            reached, with ``v'`` as velocity. K = 1 is the one-shot model. Needs ``position_residual``.
    """

    def __init__(
        self,
        hidden: int = 64,
        layers: int = 4,
        activation: str = "silu",
        layer_norm: bool = False,
        position_residual: bool = True,
        velocity_residual: bool = False,
        relative_positions: bool = False,
        coulomb_edges: bool = False,
        node_charges: bool = True,
        substeps: int = 1,
        approach_edges: bool = False,
        pair_vector_output: bool = False,
    ) -> None:
        super().__init__()
        if hidden < 1 or layers < 1:
            raise ValueError(f"hidden and layers must be >= 1, got hidden={hidden}, layers={layers}")
        if substeps < 1:
            raise ValueError(f"substeps must be >= 1, got {substeps}")
        if substeps > 1 and not position_residual:
            raise ValueError("substeps > 1 integrates displacements: it needs position_residual=True")
        self.substeps = substeps
        self.position_residual = position_residual
        self.relative_positions = relative_positions
        self.coulomb_edges = coulomb_edges
        self.node_charges = node_charges
        self.approach_edges = approach_edges
        self.velocity_step = nn.Parameter(torch.ones(())) if velocity_residual else None
        self.encoder = mlp([7 + node_charges, hidden, hidden], activation, final_activation=True)
        self.edge_mlps = nn.ModuleList(
            [mlp([2 * hidden + self.edge_inputs, hidden, hidden], activation, True) for _ in range(layers)]
        )
        self.node_mlps = nn.ModuleList(
            [mlp([2 * hidden, hidden, hidden], activation, False) for _ in range(layers)]
        )
        self.norms = nn.ModuleList(
            [nn.LayerNorm(hidden) if layer_norm else nn.Identity() for _ in range(layers)]
        )
        self.decoder = mlp([hidden, hidden, 3], activation, final_activation=False)
        self.pair_head = nn.Linear(hidden, 2) if pair_vector_output else None
        if self.pair_head is not None:  # starts silent: the model begins as the one without the head
            nn.init.zeros_(self.pair_head.weight)
            nn.init.zeros_(self.pair_head.bias)

    @property
    def edge_inputs(self) -> int:
        """Number of edge input features (see the class docstring)."""
        base = 2 + 3 * self.relative_positions + self.coulomb_edges * (1 + 3 * self.relative_positions)
        return base + self.approach_edges * (4 + 3 * self.relative_positions + self.coulomb_edges)

    @accepts_flat_batches(per_point=True)
    def forward(self, pos: Tensor, vel: Tensor, charge: Tensor, mask: Tensor | None = None) -> Tensor:
        """Predict target positions.

        Args:
            pos: [B, N, 3] positions.
            vel: [B, N, 3] velocities.
            charge: [B, N, 1] charges.
            mask: [B, N] bool, True for real particles, or None.
            Flat PyG input instead: ``pos``, ``vel``, ``charge`` [M, ...] with ``batch=`` [M] (see
            :mod:`geocanon.nn.flat_input`); the output is then [M, 3].

        Returns:
            [B, N, 3] predicted positions; padding rows are returned as the input ``pos``.
        """
        pos_in = pos
        pos, vel, charge, mask = check_nbody_inputs(pos, vel, charge, mask)
        qq = (charge * charge.transpose(1, 2))[..., None]  # [B, N, N, 1]
        pairs = pair_mask(mask)[..., None]
        real = mask[..., None]
        for _ in range(self.substeps):
            vel = self._step_velocity(pos, vel, charge, qq, pairs).masked_fill(~real, 0.0)
            if not self.position_residual:
                return torch.where(real, vel, pos_in)  # K = 1: the decoder's output is the position itself
            pos = pos + vel / self.substeps
        return torch.where(real, pos, pos_in)

    def _step_velocity(self, pos: Tensor, vel: Tensor, charge: Tensor, qq: Tensor, pairs: Tensor) -> Tensor:
        """One application of the network: [B, N, 3] mean velocity over the next 1/K of the horizon, in
        units of displacement per horizon (absolute positions without ``position_residual``).
        ``qq`` [B, N, N, 1], ``pairs`` [B, N, N, 1] bool."""
        n = pos.shape[1]
        speed = vel.norm(dim=-1, keepdim=True)
        h = self.encoder(torch.cat([pos, vel, speed, *([charge] if self.node_charges else [])], -1))  # [B, N, H]
        diff = pos[:, :, None] - pos[:, None, :]  # [B, N, N, 3]
        dvel = vel[:, :, None] - vel[:, None, :]  # [B, N, N, 3]
        dist2 = (diff**2).sum(-1, keepdim=True)
        edge_parts = [qq, dist2]
        if self.relative_positions:
            edge_parts.append(diff)
        if self.coulomb_edges:
            softened = dist2 + COULOMB_SOFTENING**2
            edge_parts.append(qq / softened)
            if self.relative_positions:
                edge_parts.append(qq * diff / softened**1.5)
        if self.approach_edges:
            edge_parts.extend(self._approach_features(diff, dvel, qq))
        edge = torch.cat(edge_parts, -1)  # [B, N, N, edge_inputs]
        for edge_mlp, node_mlp, norm in zip(self.edge_mlps, self.node_mlps, self.norms):
            h_i = h[:, :, None].expand(-1, -1, n, -1)
            h_j = h[:, None, :].expand(-1, n, -1, -1)
            msg = edge_mlp(torch.cat([h_i, h_j, edge], -1)).masked_fill(~pairs, 0.0)
            h = norm(h + node_mlp(torch.cat([h, msg.sum(2)], -1)))
        out = self.decoder(h)
        if self.pair_head is not None:
            coef = self.pair_head(msg).masked_fill(~pairs, 0.0)  # [B, N, N, 2]; msg: the last layer's messages
            out = out + (coef[..., :1] * diff + coef[..., 1:] * dvel).sum(2)
        if self.velocity_step is not None:
            out = out + self.velocity_step * vel
        return out

    def _approach_features(self, diff: Tensor, dvel: Tensor, qq: Tensor) -> list[Tensor]:
        """Constant-velocity encounter of every pair within this step's window (see ``approach_edges``):
        ``diff`` [B, N, N, 3] = x_i - x_j, ``dvel`` [B, N, N, 3] = v_i - v_j, ``qq`` [B, N, N, 1] -> list of [B, N, N, c]."""
        t_closest, closest2 = closest_approach(diff, dvel, 1.0 / self.substeps)
        parts = [(diff * dvel).sum(-1, keepdim=True), (dvel**2).sum(-1, keepdim=True), t_closest, closest2]
        if self.relative_positions:
            parts.append(dvel)
        if self.coulomb_edges:
            parts.append(qq / (closest2 + COULOMB_SOFTENING**2))
        return parts
