"""DGCNN classifier (Wang et al. 2019) on dense, optionally padded point clouds.

Every EdgeConv recomputes a k-NN graph in its input feature space with a dense ``[B, N, N]`` distance
matrix (padding points get infinite distance, so they are never neighbours). Per-point and per-edge
layers run on the real points only, so padding never enters BatchNorm statistics nor the pooling.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from ..validation import check_dense_batch
from .flat_input import accepts_flat_batches

__all__ = ["DGCNN", "EdgeConv"]


def _dense_knn(x: Tensor, mask: Tensor, k: int) -> Tensor:
    """Indices of the k nearest real points (self included, as in DGCNN) in feature space.

    Args:
        x: [B, N, F] dense features.
        mask: [B, N] True for real points.
        k: neighbours per point.

    Returns:
        index [B, N, min(k, N)]; where a cloud has fewer than k real points the missing slots repeat
        the centre point itself, which leaves the max over neighbours unchanged.
    """
    x = x.detach()  # only the neighbour indices are used, no gradient flows through distances
    dist = torch.cdist(x, x).masked_fill(~mask[:, None, :], float("inf"))
    nbr_dist, nbr = dist.topk(min(k, x.shape[1]), dim=-1, largest=False)
    centre = torch.arange(x.shape[1], device=x.device)[None, :, None].expand_as(nbr)
    return torch.where(torch.isfinite(nbr_dist), nbr, centre)


class EdgeConv(nn.Module):
    """EdgeConv: ``x_i' = max_j LeakyReLU(BN(W [x_j - x_i, x_i]))`` over the k-NN graph of ``x``.

    The linear map of the concatenated edge feature is applied as ``W_1 x_j + (W_2 - W_1) x_i`` on the
    points before gathering (the same function, k times fewer multiply-adds than on every edge).

    Args:
        in_channels: F, input feature size.
        out_channels: output feature size.
        k: neighbours per point.
    """

    def __init__(self, in_channels: int, out_channels: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.linear = nn.Linear(2 * in_channels, out_channels, bias=False)
        self.norm = nn.BatchNorm1d(out_channels)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: Tensor, mask: Tensor, batch: Tensor) -> Tensor:
        """Apply the layer.

        Args:
            x: [M, F] features of the real points (``dense[mask]`` order).
            mask: [B, N] True for real points.
            batch: [M] cloud index of each real point.

        Returns:
            [M, out_channels].
        """
        f = x.shape[-1]
        dense = x.new_zeros(*mask.shape, f)
        dense[mask] = x
        nbr = _dense_knn(dense, mask, self.k)[mask]  # [M, k]
        w_nbr, w_centre = self.linear.weight[:, :f], self.linear.weight[:, f:]
        proj_nbr = dense @ w_nbr.T  # [B, N, out]
        proj_centre = x @ (w_centre - w_nbr).T  # [M, out]
        edge = proj_nbr[batch[:, None], nbr] + proj_centre[:, None, :]  # [M, k, out]
        edge = self.act(self.norm(edge.flatten(0, 1))).view_as(edge)
        return edge.max(1).values


class DGCNN(nn.Module):
    """Classic DGCNN classifier.

    Four EdgeConvs (64, 64, 128, 256) on dynamic k-NN graphs, concatenation, per-point linear layer to
    ``emb_dims``, max + mean pooling, then MLP 512-256-``num_classes`` with dropout.

    Args:
        num_classes: C, number of output logits.
        k: neighbours per EdgeConv (self included).
        emb_dims: size of the per-point embedding before pooling.
        dropout: dropout probability in the classifier head.
        width_scale: multiplies every hidden width except ``emb_dims`` (use < 1 for small tests).
    """

    def __init__(
        self,
        num_classes: int,
        k: int = 20,
        emb_dims: int = 1024,
        dropout: float = 0.5,
        width_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if emb_dims < 1 or width_scale <= 0:
            raise ValueError(f"emb_dims must be >= 1 and width_scale > 0, got {emb_dims}, {width_scale}")
        w = [max(1, round(c * width_scale)) for c in (64, 64, 128, 256, 512, 256)]
        self.convs = nn.ModuleList(
            [EdgeConv(c_in, c_out, k) for c_in, c_out in zip([3, *w[:3]], w[:4])]
        )
        self.embed = nn.Sequential(
            nn.Linear(sum(w[:4]), emb_dims, bias=False), nn.BatchNorm1d(emb_dims), nn.LeakyReLU(0.2)
        )
        self.head = nn.Sequential(
            nn.Linear(2 * emb_dims, w[4], bias=False), nn.BatchNorm1d(w[4]), nn.LeakyReLU(0.2),
            nn.Dropout(dropout),
            nn.Linear(w[4], w[5], bias=False), nn.BatchNorm1d(w[5]), nn.LeakyReLU(0.2),
            nn.Dropout(dropout),
            nn.Linear(w[5], num_classes),
        )

    @accepts_flat_batches(per_point=False)
    def forward(self, pos: Tensor, mask: Tensor | None = None) -> Tensor:
        """Classify clouds.

        Args:
            pos: [B, N, 3] points (canonical coordinates when wrapped by a canonicalizer).
            mask: [B, N] bool, True for real points, or None.
            Flat PyG input instead: ``pos`` [M, 3] with ``batch=`` [M] (see :mod:`geocanon.nn.flat_input`).

        Returns:
            logits [B, C].
        """
        mask, batch = check_dense_batch(pos, mask)
        x = pos[mask]  # [M, 3]
        feats = []
        for conv in self.convs:
            x = conv(x, mask, batch)
            feats.append(x)
        emb = self.embed(torch.cat(feats, -1))  # [M, emb_dims]
        num_clouds = pos.shape[0]
        pooled = torch.cat(
            [
                scatter(emb, batch, dim=0, dim_size=num_clouds, reduce="max"),
                scatter(emb, batch, dim=0, dim_size=num_clouds, reduce="mean"),
            ],
            -1,
        )
        return self.head(pooled)
