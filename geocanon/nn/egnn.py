"""E(n)-equivariant graph neural network (Satorras, Hoogeboom & Welling 2021), N-body variant.

The equivariant baseline that canonicalized plain GNNs are compared with. Each system is a fully
connected graph of its particles, processed densely over ``[B, N, N]`` pairs for any N. Node
features only see invariants (speed, charge, squared distances, charge products) and coordinates
are only updated by linear combinations of relative positions and the velocity, so the predicted
positions are exactly E(3)-equivariant (rotations, reflections, translations).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from geocanon.nn.gnn import check_nbody_inputs, mlp, pair_mask
from .flat_input import accepts_flat_batches

__all__ = ["EGNN", "EquivariantLayer"]


class EquivariantLayer(nn.Module):
    """One velocity-aware E(n)-equivariant layer (EGCL with velocity, paper eq. 7).

    ``m_ij = phi_e(h_i, h_j, |x_i - x_j|^2, a_ij)``,
    ``x_i <- x_i + sum_j (x_i - x_j) phi_x(m_ij) / (n - 1) + phi_v(h_i) v_i``,
    ``h_i <- h_i + phi_h(h_i, sum_j m_ij)``.

    Args:
        hidden: width of node features and messages.
        activation: key of :data:`geocanon.nn.gnn.ACTIVATIONS`.
        use_velocity: add the ``phi_v(h_i) v_i`` term.
        update_features: compute the new ``h`` (the last layer skips it: only ``x`` is read out).
    """

    def __init__(
        self, hidden: int, activation: str, use_velocity: bool, update_features: bool = True
    ) -> None:
        super().__init__()
        self.edge_mlp = mlp([2 * hidden + 2, hidden, hidden], activation, final_activation=True)
        self.coord_mlp = mlp([hidden, hidden, 1], activation, final_activation=False)
        # Small initial coordinate updates, as in the reference implementation (xavier gain 0.001).
        nn.init.xavier_uniform_(self.coord_mlp[-1].weight, gain=0.001)
        nn.init.zeros_(self.coord_mlp[-1].bias)
        self.vel_mlp = mlp([hidden, hidden, 1], activation, False) if use_velocity else None
        self.node_mlp = (
            mlp([2 * hidden, hidden, hidden], activation, final_activation=False)
            if update_features
            else None
        )

    def forward(
        self, h: Tensor, x: Tensor, vel: Tensor, charge_prod: Tensor, pairs: Tensor, degree: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Update node features and coordinates.

        Args:
            h: [B, N, H] invariant node features.
            x: [B, N, 3] coordinates.
            vel: [B, N, 3] input velocities.
            charge_prod: [B, N, N, 1] ``q_i q_j``.
            pairs: [B, N, N, 1] True for message-carrying pairs (real, i != j).
            degree: [B, 1, 1] number of neighbours ``n - 1`` of each system (at least 1).

        Returns:
            (h [B, N, H], x [B, N, 3]); ``h`` is returned unchanged without ``update_features``.
        """
        n = x.shape[1]
        diff = x[:, :, None] - x[:, None, :]  # [B, N, N, 3]
        radial = (diff**2).sum(-1, keepdim=True)
        h_i = h[:, :, None].expand(-1, -1, n, -1)
        h_j = h[:, None, :].expand(-1, n, -1, -1)
        msg = self.edge_mlp(torch.cat([h_i, h_j, radial, charge_prod], -1)).masked_fill(~pairs, 0.0)
        shift = (diff * self.coord_mlp(msg)).masked_fill(~pairs, 0.0).sum(2) / degree
        x = x + shift
        if self.vel_mlp is not None:
            x = x + self.vel_mlp(h) * vel
        if self.node_mlp is not None:
            h = h + self.node_mlp(torch.cat([h, msg.sum(2)], -1))
        return h, x


class EGNN(nn.Module):
    """EGNN for N-body prediction: E(3)-equivariant map to the positions at the target frame.

    Initial node features embed the invariants ``|v|`` and charge; edges carry ``q_i q_j``.

    Args:
        hidden: width of node features and messages.
        layers: number of equivariant layers.
        activation: key of :data:`geocanon.nn.gnn.ACTIVATIONS`.
        use_velocity: velocity-aware layers as in the paper's N-body experiment.
    """

    def __init__(
        self, hidden: int = 64, layers: int = 4, activation: str = "silu", use_velocity: bool = True
    ) -> None:
        super().__init__()
        if hidden < 1 or layers < 1:
            raise ValueError(f"hidden and layers must be >= 1, got hidden={hidden}, layers={layers}")
        self.embed = nn.Linear(2, hidden)
        self.layers = nn.ModuleList(
            [
                EquivariantLayer(hidden, activation, use_velocity, update_features=i < layers - 1)
                for i in range(layers)
            ]
        )

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
        h = self.embed(torch.cat([vel.norm(dim=-1, keepdim=True), charge], -1))
        charge_prod = (charge * charge.transpose(1, 2))[..., None]
        pairs = pair_mask(mask)[..., None]
        degree = (mask.sum(1) - 1).clamp_min(1).to(pos.dtype)[:, None, None]
        x = pos
        for layer in self.layers:
            h, x = layer(h, x, vel, charge_prod, pairs, degree)
        return torch.where(mask[..., None], x, pos_in)
