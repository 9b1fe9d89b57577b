"""Molecular energies and conservative forces: energy backbones and the potential wrapping any of them.

* :class:`EnergyGNN` — a plain (non-equivariant) continuous-filter network over *absolute* atom
  coordinates and relative vectors: the backbone a canonicalizer makes E(3)-invariant. Dense over all
  atom pairs (molecules are small), with a smooth cosine cutoff so the energy is smooth in the positions.
  Continuous filters were chosen by measurement: on 200 ethanol xTB frames, 150 Adam steps of batch 8
  without canonicalizer, the training force MAE reached 0.27 eV/Å (lr 3e-3; 0.36 at 1e-3) against
  0.39 (0.70) for the same network with MLP messages on concatenated ``[h_i, h_j, x_j - x_i, rbf]``
  (SchNet, for reference: 0.21 at 1e-3).
* :class:`EnergyMLP` — an MLP over the flattened coordinates and one-hot types of a fixed-size,
  fixed-order molecule (the simplest "global descriptor" backbone, for comparison).
* :class:`MolecularPotential` — atomic numbers in, ``(energy, forces)`` out, with ``forces = -dE/dx``
  by autograd through the whole energy model (canonicalizer included), so the forces are conservative
  and, for an invariant energy, exactly equivariant.

Energy models are called as ``model(pos [B, N, 3], species=[B, N, T] one-hot, mask=[B, N]) -> [B]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..validation import check_dense_batch
from .flat_input import accepts_flat_batches
from .gnn import initialise_, mlp, pair_mask

__all__ = ["EnergyGNN", "EnergyMLP", "MolecularPotential", "cosine_cutoff", "gaussian_rbf"]


def cosine_cutoff(distance: Tensor, cutoff: float) -> Tensor:
    """``0.5 (cos(π d / cutoff) + 1)`` for d < cutoff, else 0: smooth weights of pairs, same shape as ``distance``."""
    return torch.where(distance < cutoff, 0.5 * (torch.cos(math.pi * distance / cutoff) + 1), torch.zeros_like(distance))


#: exponent below which a Gaussian feature is set to 0 (e^-80 < 2e-35): on CPU, exp of arguments that underflow
#: float32 takes a slow path, and with 64 narrow Gaussians most of a molecule's pair features are there
RBF_FLOOR = -80.0


def gaussian_rbf(distance: Tensor, num: int, cutoff: float) -> Tensor:
    """Gaussians on ``num`` centres in [0, cutoff] (width = spacing): distance [...] -> [..., num].

    Values below ``exp(RBF_FLOOR)`` are returned as exactly 0 (see :data:`RBF_FLOOR`).
    """
    centres = torch.linspace(0.0, cutoff, num, dtype=distance.dtype, device=distance.device)
    width = cutoff / (num - 1)
    exponent = -0.5 * ((distance[..., None] - centres) / width) ** 2
    return torch.exp(exponent.clamp_min(RBF_FLOOR)) * (exponent > RBF_FLOOR)


def _mask(pos: Tensor, mask: Tensor | None) -> Tensor:
    if pos.ndim != 3 or pos.shape[-1] != 3:
        raise ValueError(f"pos must be [B, N, 3], got {list(pos.shape)}")
    if mask is None:
        return torch.ones(pos.shape[:2], dtype=torch.bool, device=pos.device)
    if mask.shape != pos.shape[:2]:
        raise ValueError(f"mask must be [B, N] = {list(pos.shape[:2])}, got {list(mask.shape)}")
    return mask


class EnergyGNN(nn.Module):
    """Continuous-filter message passing over all atom pairs within ``cutoff`` Å; energy = sum of atomic energies.

    Node input: type embedding (linear map of the one-hot) plus a linear map of the atom's absolute
    coordinates. Each layer (SchNet-like, but the filter also sees the relative *vector*, which is
    what makes the network not invariant on its own): ``W_ij = fc(r_ij) φ_w(x_j - x_i, rbf(r_ij))``,
    ``h_i ← h_i + φ_h(Σ_j W_ij ⊙ V h_j)``, with a smooth cosine cutoff ``fc`` so the energy is smooth.

    Args:
        num_species: T, length of the one-hot type vector.
        hidden: feature width.
        layers: message-passing layers.
        num_rbf: Gaussian distance features.
        cutoff: pair cutoff in Å.
        activation: key of :data:`geocanon.nn.gnn.ACTIVATIONS` (smooth ones give smooth forces).
        coordinate_unit: length (Å) the absolute and relative coordinates are divided by before entering
            the network. The cutoff is a good choice (inputs in [-1, 1]): on ethanol (12 epochs, one seed,
            weighted PCA frames, 64 RBFs) it gave a test force MAE of 89.5 meV/Å against 132.4 in Å.
        init: one of :data:`geocanon.nn.gnn.INITS`: "xavier" (Xavier-uniform weights, zero biases, as PyG's
            SchNet) or "torch" (PyTorch's default Linear initialisation). Same ethanol runs without coordinate inputs: 85.7 against 112.6 meV/Å.
        pair_vectors: whether the filters see the relative vector ``x_j - x_i`` beside the distance features.
            Without it the filters are invariant and the coordinates enter through the node inputs only: frame
            averaging on malonaldehyde (36 epochs, seed 0) then reached 78.6 meV/Å against 73.2 with the vector
            (benchmarks/results/molecules_invariant_filters.md).

    Shapes: ``pos`` [B, N, 3], ``species`` [B, N, T], ``mask`` [B, N] -> energy [B]; or flat (PyG) ``pos`` [M, 3],
    ``species`` [M, T] with ``batch=`` [M] (see :mod:`geocanon.nn.flat_input`).
    """

    def __init__(self, num_species: int, hidden: int = 64, layers: int = 3, num_rbf: int = 16, cutoff: float = 5.0, activation: str = "silu",
                 coordinate_unit: float = 1.0, init: str = "xavier", pair_vectors: bool = True) -> None:
        super().__init__()
        if not coordinate_unit > 0:
            raise ValueError(f"coordinate_unit must be a positive length, got {coordinate_unit!r}")
        self.coordinate_unit = float(coordinate_unit)
        if num_species < 1 or hidden < 1 or layers < 1 or num_rbf < 2:
            raise ValueError(f"need num_species, hidden, layers >= 1 and num_rbf >= 2, got {num_species}, {hidden}, {layers}, {num_rbf}")
        self.num_species, self.num_rbf, self.cutoff = num_species, num_rbf, cutoff
        self.pair_vectors = pair_vectors
        self.embed = nn.Linear(num_species, hidden)
        self.coords = nn.Linear(3, hidden, bias=False)
        self.filters = nn.ModuleList([mlp([3 * pair_vectors + num_rbf, hidden, hidden], activation, False) for _ in range(layers)])
        self.values = nn.ModuleList([nn.Linear(hidden, hidden, bias=False) for _ in range(layers)])
        self.updates = nn.ModuleList([mlp([hidden, hidden, hidden], activation, False) for _ in range(layers)])
        self.readout = mlp([hidden, hidden, 1], activation, False)
        initialise_(self, init)

    @accepts_flat_batches(per_point=False)
    def forward(self, pos: Tensor, species: Tensor, mask: Tensor | None = None) -> Tensor:
        """Energy [B] of each molecule (see class docstring)."""
        mask = _mask(pos, mask)
        if species.shape != (*pos.shape[:2], self.num_species):
            raise ValueError(f"species must be [B, N, {self.num_species}], got {list(species.shape)}")
        pos = pos.masked_fill(~mask[..., None], 0.0)  # padding may hold anything (NaN times a zero weight is NaN)
        pairs = pair_mask(mask)  # [B, N, N]
        diff = pos[:, None, :] - pos[:, :, None]  # [B, i, j, 3] = x_j - x_i
        sq = (diff**2).sum(-1)
        dist = torch.where(pairs, sq, torch.ones_like(sq)).sqrt()  # no sqrt'(0) on the diagonal / padding
        weight = (cosine_cutoff(dist, self.cutoff) * pairs)[..., None]
        unit = self.coordinate_unit
        edge = gaussian_rbf(dist, self.num_rbf, self.cutoff)
        if self.pair_vectors:
            edge = torch.cat([diff / unit, edge], -1)
        h = self.embed(species) + self.coords(pos / unit)
        for filt, value, update in zip(self.filters, self.values, self.updates):
            msg = (filt(edge) * weight * value(h)[:, None, :, :]).sum(2)  # Σ_j W_ij ⊙ V h_j
            h = h + update(msg)
        return (self.readout(h)[..., 0] * mask).sum(1)


class EnergyMLP(nn.Module):
    """An MLP of the flattened coordinates and one-hot types of a molecule with ``num_atoms`` atoms in a fixed order.

    Shapes: ``pos`` [B, num_atoms, 3], ``species`` [B, num_atoms, T] -> energy [B] (flat input with ``batch=``: clouds
    of num_atoms each). Not permutation invariant and not for padded batches: a per-molecule baseline.
    """

    def __init__(self, num_atoms: int, num_species: int, hidden: int = 256, layers: int = 3, activation: str = "silu") -> None:
        super().__init__()
        self.num_atoms, self.num_species = num_atoms, num_species
        self.net = mlp([num_atoms * (3 + num_species)] + [hidden] * layers + [1], activation, False)

    @accepts_flat_batches(per_point=False)
    def forward(self, pos: Tensor, species: Tensor, mask: Tensor | None = None) -> Tensor:
        """Energy [B] (see class docstring)."""
        if pos.shape[1:] != (self.num_atoms, 3) or species.shape[1:] != (self.num_atoms, self.num_species):
            raise ValueError(f"EnergyMLP needs pos [B, {self.num_atoms}, 3] and species [B, {self.num_atoms}, {self.num_species}], got {list(pos.shape)}, {list(species.shape)}")
        if mask is not None and not bool(mask.all()):
            raise ValueError("EnergyMLP does not accept padded molecules (mask has False entries)")
        return self.net(torch.cat([pos, species], -1).flatten(1))[:, 0]


class MolecularPotential(nn.Module):
    """Energy and conservative forces of molecules from any energy model spec.

    ``energy = energy_shift * n_atoms + energy_scale * model(pos, species=one_hot(numbers), mask=mask)`` and
    ``forces = -∂energy/∂pos`` by autograd (through the canonicalizer too). Second derivatives for
    training on forces are kept whenever autograd is on at call time.

    Args:
        species: atomic numbers the model knows, in one-hot order (e.g. [1, 6, 8]).
        model: the energy model, ``model(pos, species=one-hot [B, N, T], mask=[B, N]) -> [B]``: a module (e.g.
            your network inside :class:`~geocanon.wrap.FrameAveraged` with ``scalar_features=["species"]``) or
            its checkpoint spec (see :mod:`geocanon.checkpoint`; only a potential built from specs can be saved).
        energy_shift: per-atom energy offset in eV (mean training energy / atoms).
        energy_scale: eV per model unit (e.g. the std of the training force components).
        inference_pairs: at inference (when no graph is kept for training), a batch is evaluated in chunks of
            whole molecules with at most this many atom pairs ``B_chunk · N²`` each (at least one molecule per
            chunk); None evaluates it in one pass. The dense pair tensors of energy networks such as
            :class:`EnergyGNN` hold ``B · N² · hidden`` numbers (8 times that under frame averaging), so chunks
            bound the memory of scoring a large data set in one call; each molecule's result is unchanged
            (timings: docs/benchmarks.md, Molecules).

    Shapes: ``pos`` [B, N, 3] Å, ``numbers`` [B, N] int (0 = padding), optional ``mask`` [B, N] ->
    ``(energy [B] eV, forces [B, N, 3] eV/Å)`` (forces of padding atoms are 0); or flat (PyG) ``pos`` [M, 3],
    ``numbers`` [M] with ``batch=`` [M] -> ``(energy [B], forces [M, 3])``.
    """

    def __init__(self, species: Sequence[int], model: nn.Module | dict[str, Any], energy_shift: float = 0.0, energy_scale: float = 1.0,
                 inference_pairs: int | None = 4096) -> None:
        super().__init__()
        from ..checkpoint import build  # checkpoint resolves this module by name: import lazily

        if len(species) == 0 or len(set(species)) != len(species):
            raise ValueError(f"species must be distinct atomic numbers, got {list(species)}")
        self.species = [int(z) for z in species]
        self.model = model if isinstance(model, nn.Module) else build(model)
        self.energy_shift = float(energy_shift)
        self.energy_scale = float(energy_scale)
        if inference_pairs is not None and inference_pairs < 1:
            raise ValueError(f"inference_pairs must be a positive number of atom pairs or None, got {inference_pairs!r}")
        self.inference_pairs = inference_pairs

    @accepts_flat_batches(per_point=(False, True))
    def forward(self, pos: Tensor, numbers: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(energy [B], forces [B, N, 3])`` for ``pos`` [B, N, 3] and ``numbers`` [B, N]; flat PyG input ``pos`` [M, 3],
        ``numbers`` [M] with ``batch=`` [M] gives ``(energy [B], forces [M, 3])``."""
        if numbers.shape != pos.shape[:2]:
            raise ValueError(f"numbers must be [B, N] = {list(pos.shape[:2])}, got {list(numbers.shape)}")
        if mask is None:
            mask = numbers > 0
        check_dense_batch(pos, mask, "pos")  # shape, empty molecules, NaN/Inf on real atoms: whatever the model checks
        keep_graph = torch.is_grad_enabled()
        chunk = len(pos) if keep_graph or self.inference_pairs is None else max(1, self.inference_pairs // max(1, pos.shape[1]) ** 2)
        if chunk < len(pos):
            parts = [self._energy_and_forces(pos[i:i + chunk], numbers[i:i + chunk], mask[i:i + chunk], False) for i in range(0, len(pos), chunk)]
            return torch.cat([e for e, _ in parts]), torch.cat([f for _, f in parts])
        return self._energy_and_forces(pos, numbers, mask, keep_graph)

    def _energy_and_forces(self, pos: Tensor, numbers: Tensor, mask: Tensor, keep_graph: bool) -> tuple[Tensor, Tensor]:
        from ..data.molecules import one_hot_species

        species = one_hot_species(numbers, self.species, pos.dtype)
        with torch.enable_grad():
            x = pos if pos.requires_grad else pos.detach().requires_grad_(True)
            raw = self.model(x, species=species, mask=mask)
            energy = self.energy_shift * mask.sum(1).to(pos.dtype) + self.energy_scale * raw
            (grad,) = torch.autograd.grad(energy.sum(), x, create_graph=keep_graph)
        forces = -grad.masked_fill(~mask[..., None], 0.0)
        return (energy, forces) if keep_graph else (energy.detach(), forces.detach())
