"""Neighbourhoods computed with dense torch operations.

``torch_geometric.nn.knn_graph`` needs pyg-lib or torch-cluster, neither of which is on PyPI for every
platform; the clouds geocanon builds graphs on are small (a canonicalizer subsamples first), so a
dense ``cdist`` + ``topk`` per batch is exact, dependency-free and fast enough.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["knn_graph", "fully_connected_graph", "farthest_point_sampling"]


def _dense_index(batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor, int]:
    """Position of every flat node inside its graph.

    Args:
        batch: [M] sorted graph index of each node.
        num_graphs: B.

    Returns:
        (counts [B], slot [M] index of each node inside its graph, max nodes per graph).
    """
    counts = torch.bincount(batch, minlength=num_graphs)
    ptr = torch.cumsum(counts, 0) - counts
    slot = torch.arange(batch.numel(), device=batch.device) - ptr[batch]
    return counts, slot, int(counts.max()) if counts.numel() else 0


def knn_graph(pos: Tensor, k: int, batch: Tensor | None = None, loop: bool = False) -> Tensor:
    """k-nearest-neighbour graph inside each cloud of a flat batch.

    Args:
        pos: [M, 3] flat points.
        k: neighbours per node (fewer when a cloud has fewer than ``k + 1`` points).
        batch: [M] sorted cloud index of each point, or None for a single cloud.
        loop: include each node as its own neighbour.

    Returns:
        edge_index [2, E] as (source = neighbour, target = centre), the PyG message-passing order.
    """
    if batch is None:
        batch = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
    num_graphs = int(batch.max()) + 1 if batch.numel() else 0
    counts, slot, n_max = _dense_index(batch, num_graphs)
    dense = pos.new_zeros(num_graphs, n_max, pos.shape[-1])
    dense[batch, slot] = pos.detach()
    valid = torch.zeros(num_graphs, n_max, dtype=torch.bool, device=pos.device)
    valid[batch, slot] = True
    dist = torch.cdist(dense, dense)
    dist = dist.masked_fill(~valid[:, None, :], float("inf"))
    if not loop:
        dist.diagonal(dim1=1, dim2=2).fill_(float("inf"))
    k_eff = min(k, n_max - (0 if loop else 1))
    if k_eff <= 0:
        return torch.empty(2, 0, dtype=torch.long, device=pos.device)
    nbr_dist, nbr_slot = dist.topk(k_eff, dim=-1, largest=False)  # [B, n_max, k]
    ptr = torch.cumsum(counts, 0) - counts
    centre = torch.arange(batch.numel(), device=pos.device)
    nbr_dist = nbr_dist[batch, slot]  # [M, k]
    source = (nbr_slot[batch, slot] + ptr[batch, None])  # [M, k]
    keep = torch.isfinite(nbr_dist)
    target = centre[:, None].expand_as(source)
    return torch.stack([source[keep], target[keep]])


def fully_connected_graph(batch: Tensor, loop: bool = False) -> Tensor:
    """All ordered pairs of nodes inside each graph.

    Args:
        batch: [M] sorted graph index of each node.
        loop: include self-pairs.

    Returns:
        edge_index [2, E] (source, target).
    """
    same = batch[:, None] == batch[None, :]
    if not loop:
        same.fill_diagonal_(False)
    target, source = same.nonzero(as_tuple=True)
    return torch.stack([source, target])


def farthest_point_sampling(pos: Tensor, num_samples: int, mask: Tensor | None = None) -> Tensor:
    """Equivariant farthest-point sampling on dense clouds.

    The first point is the one farthest from the cloud's centroid, so the choice depends only on
    distances: rotating, reflecting or translating the cloud selects the same points (up to exact
    distance ties, which have probability zero on generic clouds).

    Args:
        pos: [B, N, 3] dense points.
        num_samples: S, points to keep per cloud (clouds with fewer real points repeat their last pick).
        mask: [B, N] True for real points, or None.

    Returns:
        index [B, S] of the chosen points in ``pos``.
    """
    b, n, _ = pos.shape
    pos = pos.detach()
    if mask is None:
        mask = torch.ones(b, n, dtype=torch.bool, device=pos.device)
    real = mask[..., None]
    pos = torch.where(real, pos, torch.zeros_like(pos))  # padding may hold anything: put it at 0
    centroid = pos.sum(1) / mask.sum(1, keepdim=True).clamp_min(1).to(pos.dtype)
    pos = torch.where(real, pos - centroid[:, None], torch.zeros_like(pos))
    sq_norm = (pos**2).sum(-1, keepdim=True)  # [B, N, 1], also the squared distance to the centroid
    ones = torch.ones_like(sq_norm)
    # |p - c|² = [p, 1, |p|²] · [-2c, |c|², 1]: one gather and one batched mat-vec per step. The loop is
    # sequential by nature, and on a GPU every operation in it is a kernel launch, so it keeps them few.
    keys = torch.cat([pos, ones, sq_norm], -1)  # [B, N, 5]
    queries = torch.cat([-2 * pos, sq_norm, ones], -1)  # [B, N, 5]
    # padding starts at -1 and stays there (distances are >= 0): never picked while a real point is left
    from_centroid = sq_norm[..., 0].masked_fill(~mask, -1.0)  # [B, N]
    current = from_centroid.argmax(1)
    chosen = [current]
    min_dist = torch.full_like(from_centroid, float("inf")).masked_fill(~mask, -1.0)
    rows = torch.arange(b, device=pos.device)
    for _ in range(num_samples - 1):
        d = torch.bmm(keys, queries[rows, current][:, :, None])[..., 0]  # [B, N] squared distances to the pick
        min_dist = torch.minimum(min_dist, d)
        current = min_dist.argmax(1)
        chosen.append(current)
    return torch.stack(chosen, 1)
