"""The e3nn canonicalization network: a point cloud in, a few equivariant vectors (``1o``) out.

Architecture (all E(3)-equivariant, biases only on scalars):

1. centre each cloud on its centroid and divide by its RMS radius (so the frame is invariant to
   translation and scale);
2. optionally subsample ``num_points`` points per cloud by farthest-point sampling started from
   the point farthest from the centroid (an equivariant choice);
3. node features: a constant scalar, the user's per-point scalars (``0e``), the centred position
   and the user's per-point vectors (``1o``);
4. ``layers`` tensor-product convolutions on a k-nearest-neighbour graph: messages
   ``TP(x_j, Y(r_ij); w(|r_ij|))`` with spherical harmonics ``Y`` up to ``lmax`` and weights from an
   MLP of a radial basis, mean-aggregated, plus a linear self-interaction, then a gated
   nonlinearity (``e3nn.nn.Gate``);
5. a linear map to ``num_vectors`` ``1o`` channels, averaged over each cloud.

float64: e3nn bakes its Clebsch–Gordan constants in the default dtype when a module is built, so a
module built in float32 and cast with ``.double()`` is only equivariant to ~1e-8. Build under
``torch.set_default_dtype(torch.float64)`` for float64 work.
"""

from __future__ import annotations

import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from e3nn.nn import FullyConnectedNet, Gate
from torch import Tensor, nn
from torch_geometric.utils import scatter

from ..layout import dense_inputs, to_flat
from .neighbors import farthest_point_sampling, knn_graph

__all__ = ["EquivariantVectorNetwork"]


class _Convolution(nn.Module):
    """One depthwise ("uvu") tensor-product convolution + self-interaction + gate.

    Messages ``TP(x_j, Y(r_ij); w(|r_ij|))`` keep each input channel separate (weights per channel
    and path, as in NequIP), so the per-edge weights stay small; linear maps mix channels.
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, hidden_mul: int, num_basis: int, radial_hidden: int) -> None:
        super().__init__()
        scalars = o3.Irreps(f"{hidden_mul}x0e + {hidden_mul}x0o")
        gated = o3.Irreps(f"{hidden_mul}x1o + {hidden_mul}x1e")
        gates = o3.Irreps(f"{gated.num_irreps}x0e")
        self.gate = Gate(scalars, [torch.nn.functional.silu, torch.tanh], gates, [torch.sigmoid], gated)
        wanted = {ir for _, ir in self.gate.irreps_in}
        irreps_msg, instructions = [], []
        for i, (mul, ir_in) in enumerate(irreps_in):
            for j, (_, ir_sh) in enumerate(irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out in wanted:
                        instructions.append((i, j, len(irreps_msg), "uvu", True))
                        irreps_msg.append((mul, ir_out))
        irreps_msg = o3.Irreps(irreps_msg)
        self.tp = o3.TensorProduct(irreps_in, irreps_sh, irreps_msg, instructions, shared_weights=False, internal_weights=False)
        self.radial = FullyConnectedNet([num_basis, radial_hidden, self.tp.weight_numel], torch.nn.functional.silu)
        self.mix = o3.Linear(irreps_msg, self.gate.irreps_in)
        self.self_interaction = o3.Linear(irreps_in, self.gate.irreps_in)
        self.irreps_out = self.gate.irreps_out

    def forward(self, x: Tensor, edge_index: Tensor, edge_sh: Tensor, edge_basis: Tensor) -> Tensor:
        """x: [M, irreps_in.dim]; edge_index [2, E]; edge_sh [E, sh dim]; edge_basis [E, num_basis]."""
        src, dst = edge_index
        messages = self.tp(x[src], edge_sh, self.radial(edge_basis))
        aggregated = scatter(messages, dst, dim=0, dim_size=x.shape[0], reduce="mean")
        return self.gate(self.mix(aggregated) + self.self_interaction(x))


class EquivariantVectorNetwork(nn.Module):
    """Predicts ``num_vectors`` E(3)-equivariant vectors per cloud (irreps ``num_vectors x 1o``).

    Args:
        num_vectors: vectors to output per cloud.
        num_scalar_features: per-point invariant inputs (irreps ``0e``), e.g. charges or atom types.
        num_vector_features: per-point vector inputs (irreps ``1o``), e.g. velocities or normals.
        hidden_mul: multiplicity of each hidden irrep (0e, 0o, 1o, 1e).
        layers: number of convolutions.
        lmax: highest spherical-harmonic degree on edges.
        k: neighbours per point.
        num_points: subsample clouds larger than this by farthest-point sampling (None: never).
        num_basis: radial basis functions on normalised edge lengths in [0, max_radius].
        max_radius: edge lengths are in units of the cloud's RMS radius.
        pseudovector_outputs: add a ``1e`` (pseudovector) readout to each ``1o`` output. The sum
            rotates like a vector but is no longer odd under inversion, so the network is SO(3)- but
            not O(3)-equivariant. Why: an O(3)-equivariant ``1o`` output obeys f(-x) = -f(x), so on
            (nearly) centrally symmetric clouds (boxes, cylinders, tables) it is (nearly) zero and the
            frame is noise. Only for SO3/SE3 canonicalizers.

    Shapes (dense): ``pos`` [B, N, 3], ``mask`` [B, N], ``scalars`` [B, N, S], ``vectors`` [B, N, V, 3].
    Shapes (flat):  ``pos`` [M, 3], ``batch`` [M], ``scalars`` [M, S], ``vectors`` [M, V, 3].
    Output: [B, num_vectors, 3], each vector in input units relative to the centroid.
    """

    def __init__(
        self,
        num_vectors: int,
        num_scalar_features: int = 0,
        num_vector_features: int = 0,
        hidden_mul: int = 8,
        layers: int = 2,
        lmax: int = 2,
        k: int = 8,
        num_points: int | None = 64,
        num_basis: int = 8,
        max_radius: float = 2.5,
        radial_hidden: int = 32,
        pseudovector_outputs: bool = False,
    ) -> None:
        super().__init__()
        if hidden_mul < num_vectors:
            # the pooled outputs are linear maps of hidden_mul vector channels: fewer channels than
            # outputs would make the predicted vectors linearly dependent (no frame)
            raise ValueError(f"hidden_mul ({hidden_mul}) must be >= num_vectors ({num_vectors})")
        self.num_vectors = num_vectors
        self.num_scalar_features = num_scalar_features
        self.num_vector_features = num_vector_features
        self.k = k
        self.num_points = num_points
        self.num_basis = num_basis
        self.max_radius = max_radius
        self.irreps_in = o3.Irreps(f"{1 + num_scalar_features}x0e + {1 + num_vector_features}x1o")
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        convs = []
        irreps = self.irreps_in
        for _ in range(layers):
            conv = _Convolution(irreps, self.irreps_sh, hidden_mul, num_basis, radial_hidden)
            convs.append(conv)
            irreps = conv.irreps_out
        self.convolutions = nn.ModuleList(convs)
        self.pseudovector_outputs = pseudovector_outputs
        self.irreps_out = o3.Irreps(f"{num_vectors}x1o" + (f" + {num_vectors}x1e" if pseudovector_outputs else ""))
        self.readout = o3.Linear(irreps, self.irreps_out)

    def forward(
        self,
        pos: Tensor,
        batch: Tensor | None = None,
        mask: Tensor | None = None,
        scalars: Tensor | None = None,
        vectors: Tensor | None = None,
    ) -> Tensor:
        """Equivariant vectors [B, num_vectors, 3] for a dense or flat batch (see class docstring)."""
        if batch is not None:
            pos, mask, scalars, vectors = dense_inputs(pos, batch, scalars, vectors)
        b, n, _ = pos.shape
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.bool, device=pos.device)
        weight = mask.to(pos.dtype)[..., None]
        count = weight.sum(1)  # [B, 1]
        centroid = (pos * weight).sum(1) / count  # [B, 3]
        centred = (pos - centroid[:, None]) * weight
        radius = ((centred**2).sum((1, 2)) / count[:, 0]).sqrt()  # [B] RMS radius
        centred = centred / radius[:, None, None]

        features = [torch.ones(b, n, 1, dtype=pos.dtype, device=pos.device)]
        if self.num_scalar_features:
            features.append(self._checked(scalars, (b, n, self.num_scalar_features), "scalars"))
        features.append(centred)
        if self.num_vector_features:
            features.append(self._checked(vectors, (b, n, self.num_vector_features, 3), "vectors").flatten(2))
        x = torch.cat(features, dim=-1)

        if self.num_points is not None and n > self.num_points:
            index = farthest_point_sampling(centred, self.num_points, mask)  # [B, S]
            rows = torch.arange(b, device=pos.device)[:, None]
            centred, x = centred[rows, index], x[rows, index]
            mask = mask[rows, index] & _first_occurrence(index)

        flat_pos, flat_batch = to_flat(centred, mask)
        flat_x, _ = to_flat(x, mask)
        edge_index = knn_graph(flat_pos, self.k, flat_batch)
        edge_vec = flat_pos[edge_index[0]] - flat_pos[edge_index[1]]
        length = edge_vec.norm(dim=-1)
        keep = length > 1e-6  # coincident points have no edge direction (equivariant: depends on |r| only)
        edge_index, edge_vec, length = edge_index[:, keep], edge_vec[keep], length[keep]
        edge_sh = o3.spherical_harmonics(self.irreps_sh, edge_vec, normalize=True, normalization="component")
        edge_basis = soft_one_hot_linspace(
            length, 0.0, self.max_radius, self.num_basis, basis="smooth_finite", cutoff=True
        ) * self.num_basis**0.5
        for conv in self.convolutions:
            flat_x = conv(flat_x, edge_index, edge_sh, edge_basis)
        out = scatter(self.readout(flat_x), flat_batch, dim=0, dim_size=b, reduce="mean")  # [B, V*3 (x2)]
        out = out.view(b, -1, self.num_vectors, 3).sum(1)  # 1o (+ 1e) channels of each output vector
        return out * radius[:, None, None]

    @staticmethod
    def _checked(x: Tensor | None, shape: tuple[int, ...], name: str) -> Tensor:
        if x is None or tuple(x.shape) != shape:
            got = None if x is None else list(x.shape)
            raise ValueError(f"{name} must have shape {list(shape)} for this network, got {got}")
        return x


def _first_occurrence(index: Tensor) -> Tensor:
    """[B, S] True where ``index[b, s]`` did not appear earlier in row b (FPS repeats on small clouds)."""
    same = index[:, :, None] == index[:, None, :]  # [B, S, S]
    earlier = torch.tril(same, diagonal=-1).any(-1)
    return ~earlier
