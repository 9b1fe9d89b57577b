"""PointNet classifier (Qi et al. 2017) on dense, optionally padded point clouds.

The shared per-point MLP runs on the flat list of real points (``pos[mask]``), so padding points never
enter the BatchNorm statistics nor the max pool: a padded batch gives the same logits as its clouds
would without padding, in training mode as well as in eval mode.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from ..validation import check_dense_batch
from .flat_input import accepts_flat_batches

__all__ = ["CloudHead", "PointNet", "TNet", "transform_regularizer"]


def transform_regularizer(transform: Tensor) -> Tensor:
    """PointNet orthogonality penalty ``mean_b ||I - T_b T_b^T||_F^2``.

    Args:
        transform: [B, K, K] predicted transforms.

    Returns:
        scalar tensor.
    """
    eye = torch.eye(transform.shape[-1], dtype=transform.dtype, device=transform.device)
    gram = transform @ transform.transpose(1, 2)
    return ((gram - eye) ** 2).sum((1, 2)).mean()


def _point_mlp(widths: list[int]) -> nn.Sequential:
    """Shared per-point MLP (Conv1d kernel 1 == Linear on flat points) with BatchNorm and ReLU."""
    layers: list[nn.Module] = []
    for c_in, c_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(c_in, c_out, bias=False), nn.BatchNorm1d(c_out), nn.ReLU()]
    return nn.Sequential(*layers)


class CloudHead(nn.Module):
    """A small PointNet reading whole clouds: per-point MLP d → hidden → 2·hidden, masked max-pool, MLP → out.

    Used by the canonicalizers that refine a base frame from the (invariant) base-canonical cloud.
    No BatchNorm, so padded batches and single clouds give the same output in train and eval mode.

    Args:
        out_features: size of the output per cloud.
        hidden: width (the pooled feature has 2·hidden channels).
        in_features: per-point input size d.

    Shapes: ``x`` [B, N, d], ``mask`` [B, N] bool (True: real point) → [B, out_features].
    """

    def __init__(self, out_features: int, hidden: int = 64, in_features: int = 3) -> None:
        super().__init__()
        self.point_mlp = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, 2 * hidden), nn.ReLU()
        )
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_features))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """[B, N, d] points (+ [B, N] mask) -> [B, out_features]."""
        features = self.point_mlp(x).masked_fill(~mask[..., None], float("-inf"))
        return self.head(features.amax(1))


class TNet(nn.Module):
    """Spatial transformer predicting a K x K matrix per cloud, initialised to the identity.

    Args:
        k: size of the predicted matrix (3 for the input transform).
        width_scale: multiplies every hidden width (64, 128, 1024, 512, 256).
    """

    def __init__(self, k: int = 3, width_scale: float = 1.0) -> None:
        super().__init__()
        w = [max(1, round(c * width_scale)) for c in (64, 128, 1024, 512, 256)]
        self.k = k
        self.point_mlp = _point_mlp([k, w[0], w[1], w[2]])
        self.head = nn.Sequential(
            nn.Linear(w[2], w[3], bias=False), nn.BatchNorm1d(w[3]), nn.ReLU(),
            nn.Linear(w[3], w[4], bias=False), nn.BatchNorm1d(w[4]), nn.ReLU(),
        )
        self.out = nn.Linear(w[4], k * k)
        nn.init.zeros_(self.out.weight)
        with torch.no_grad():
            self.out.bias.copy_(torch.eye(k).flatten())

    def forward(self, x: Tensor, batch: Tensor, num_clouds: int) -> Tensor:
        """Predict one transform per cloud.

        Args:
            x: [M, K] features of the real points of all clouds.
            batch: [M] cloud index of each point.
            num_clouds: B.

        Returns:
            transform [B, K, K]; points map as ``x @ transform``.
        """
        feat = scatter(self.point_mlp(x), batch, dim=0, dim_size=num_clouds, reduce="max")
        return self.out(self.head(feat)).view(num_clouds, self.k, self.k)


class PointNet(nn.Module):
    """Classic PointNet classifier.

    Shared MLP 3-64-64-64-128-1024 with BatchNorm and ReLU, global max pool, then
    512-256-``num_classes`` with dropout before the last layer.

    Args:
        num_classes: C, number of output logits.
        input_transform: apply a 3x3 T-Net (identity at init) to the input points; the last predicted
            transform is kept in ``last_transform`` for :func:`transform_regularizer`.
        dropout: dropout probability before the final linear layer.
        width_scale: multiplies every hidden width (use < 1 for small tests).
    """

    def __init__(
        self,
        num_classes: int,
        input_transform: bool = False,
        dropout: float = 0.4,
        width_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if width_scale <= 0:
            raise ValueError(f"width_scale must be > 0, got {width_scale}")
        w = [max(1, round(c * width_scale)) for c in (64, 64, 64, 128, 1024, 512, 256)]
        self.tnet = TNet(3, width_scale) if input_transform else None
        self.point_mlp = _point_mlp([3, *w[:5]])
        self.head = nn.Sequential(
            nn.Linear(w[4], w[5], bias=False), nn.BatchNorm1d(w[5]), nn.ReLU(),
            nn.Linear(w[5], w[6], bias=False), nn.Dropout(dropout), nn.BatchNorm1d(w[6]), nn.ReLU(),
            nn.Linear(w[6], num_classes),
        )
        self.last_transform: Tensor | None = None

    @accepts_flat_batches(per_point=False)
    def forward(self, pos: Tensor, mask: Tensor | None = None) -> Tensor:
        """Classify clouds.

        Args:
            pos: [B, N, 3] points (canonical coordinates when wrapped by a canonicalizer).
            mask: [B, N] bool, True for real points, or None.
            Flat PyG input instead: ``pos`` [M, 3] with ``batch=`` [M] (see :mod:`geocanon.nn.flat_input`).

        Returns:
            logits [B, C]. With ``input_transform`` the T-Net output [B, 3, 3] is stored in
            ``self.last_transform``.
        """
        mask, batch = check_dense_batch(pos, mask)
        num_clouds = pos.shape[0]
        x = pos[mask]  # [M, 3]
        if self.tnet is not None:
            self.last_transform = self.tnet(x, batch, num_clouds)
            x = torch.bmm(x[:, None, :], self.last_transform[batch]).squeeze(1)
        feat = scatter(self.point_mlp(x), batch, dim=0, dim_size=num_clouds, reduce="max")
        return self.head(feat)
