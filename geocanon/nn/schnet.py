"""PyG's SchNet as a geocanon energy model, with a dense radius graph (no torch-cluster needed).

``torch_geometric.nn.models.SchNet`` builds its graph with ``radius_graph``, which needs torch-cluster
(not installed); it accepts any ``interaction_graph(pos, batch) -> (edge_index, edge_weight)``, so
:func:`dense_radius_graph` supplies one computed with dense pairwise distances (exact; molecules are small).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn.models import SchNet

from ..layout import to_flat
from .flat_input import check_flat_call

__all__ = ["DenseRadiusGraph", "SchNetEnergy"]


class DenseRadiusGraph(nn.Module):
    """All ordered pairs (i ≠ j) of one molecule closer than ``cutoff``: ``(pos [M, 3], batch [M]) -> (edge_index [2, E], length [E])``.

    Lengths keep their autograd history (forces flow through them).
    """

    def __init__(self, cutoff: float) -> None:
        super().__init__()
        self.cutoff = cutoff

    def forward(self, pos: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
        same = batch[:, None] == batch[None, :]
        same.fill_diagonal_(False)
        close = same & (torch.cdist(pos.detach(), pos.detach()) < self.cutoff)
        edge_index = close.nonzero().t()  # rows (source j, target i): symmetric, so order is immaterial
        length = (pos[edge_index[0]] - pos[edge_index[1]]).norm(dim=-1)
        return edge_index, length


class SchNetEnergy(nn.Module):
    """SchNet (Schütt et al. 2017, PyG implementation) on geocanon's dense molecule batches.

    The atom type fed to SchNet's embedding is the index of the one-hot ``species`` entry plus one.

    Args:
        hidden, filters, interactions, gaussians, cutoff: SchNet's hidden_channels, num_filters,
            num_interactions, num_gaussians and cutoff (Å).

    Shapes: ``pos`` [B, N, 3], ``species`` [B, N, T], ``mask`` [B, N] -> energy [B]; or flat (PyG) ``pos`` [M, 3],
    ``species`` [M, T] with ``batch=`` [M] (see :mod:`geocanon.nn.flat_input`).
    """

    def __init__(self, hidden: int = 64, filters: int = 64, interactions: int = 3, gaussians: int = 25, cutoff: float = 5.0) -> None:
        super().__init__()
        self.net = SchNet(hidden_channels=hidden, num_filters=filters, num_interactions=interactions, num_gaussians=gaussians,
                          cutoff=cutoff, interaction_graph=DenseRadiusGraph(cutoff))

    def forward(self, pos: Tensor, species: Tensor, mask: Tensor | None = None, batch: Tensor | None = None) -> Tensor:
        """Energy [B] (see class docstring). PyG's SchNet computes on flat input: a dense batch is flattened, a flat one
        used as it is (validated as :func:`~geocanon.nn.flat_input.accepts_flat_batches` validates the others)."""
        if batch is None:
            if pos.ndim != 3 or species.shape[:2] != pos.shape[:2]:
                raise ValueError(f"SchNetEnergy needs pos [B, N, 3] and species [B, N, T], got {list(pos.shape)}, {list(species.shape)}")
            pos, batch = to_flat(pos, mask)
            species, _ = to_flat(species, mask)
        else:
            check_flat_call(pos, batch, mask, species=species)
        return self.net(species.argmax(-1) + 1, pos, batch)[:, 0]
