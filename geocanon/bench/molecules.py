"""The molecules benchmark: energies and forces of small molecules from GFN2-xTB molecular dynamics.

Methods, all :class:`~geocanon.nn.energy.MolecularPotential` models (forces = -∂E/∂x by autograd)
trained by the shared harness on the same frames with the same budget:

* ``canonicalized``: :class:`~geocanon.nn.energy.EnergyGNN` in a learned E(3) frame (e3nn
  canonicalizer, atom-type one-hots as ``0e`` inputs, translation = centroid);
* ``canonicalized-avg``: the same, energy averaged over the frame and its third-axis flip
  (:class:`~geocanon.nn.candidates.ThirdAxisAveraged`: continuous where the E(3) frame's e3 flips);
* ``canonicalized-se3``: the same with an SE(3) frame (no reflections: ``e3 = e1 × e2``);
* ``canonicalized-mlp``: :class:`~geocanon.nn.energy.EnergyMLP` (flattened coordinates) in the E(3) frame;
* ``frame-averaging``: the bare EnergyGNN averaged over the 8 PCA frames of the atomic positions
  (:class:`~geocanon.FrameAveraged`, Puny et al. 2022): continuous wherever the principal variances are
  distinct, the averaging over the few candidate frames that the impossibility result calls for;
* ``weighted-frames``: the bare EnergyGNN over the PCA frames with smooth skewness weights
  (``sign_tolerance=fa_sign_tolerance``, see :func:`~geocanon.canonicalizers.frame_averaging.weighted_pca_frames`):
  one frame where the sign rule of PCA is clear-cut, a C¹ blend of the two signs of an axis near a mirror
  symmetry; ``weighted-frames-mlp``: the same around an EnergyMLP over the canonical coordinates (atoms in
  the data's fixed order), the cheap backbone;
* ``augment``: the bare EnergyGNN with random E(3) augmentation (rotations, reflections, translations);
* ``augment-fa`` / ``augment-wf``: the ``augment`` run's backbone (the same weights, trained once in its run
  folder) inside the frames of ``frame-averaging`` / ``weighted-frames`` at inference, without retraining:
  the equivariant adaptation of a model trained without frames (Mondal et al. 2023), exact where the
  augmented backbone is only approximately invariant, at the training cost of augmentation;
* ``schnet``: PyG's SchNet (invariant by construction) on a dense radius graph;
* ``nequip`` (the equivariant anchor; optional, ``pip install 'geocanon[nequip]'``, not run by default):
  NequIP trained from scratch by its own ``nequip-train`` on the same frames with the same epochs, batch
  size, learning rate and loss weights (:mod:`geocanon.bench.nequip_anchor`).

Reported per method: energy and force MAE (meV, meV/Å) on the test split (mean ± std over seeds),
the measured E(3) equivariance error of the forces, parameters, training time, inference time per
structure, and, for canonicalized methods, the force error against the conditioning of the frame
(Dym et al. 2024: a canonicalization cannot be continuous near symmetric inputs).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .. import checkpoint
from ..canonicalizers.frame_averaging import weighted_pca_frames
from ..canonicalizers.learned import E3nnCanonicalizer
from ..data.molecules import MoleculeDataset, file_sha256, one_hot_species, read_molecules
from ..frames import random_group_element
from ..nn.candidates import ThirdAxisAveraged
from ..wrap import FrameAveraged, check_orientations, check_train_frames
from .. import testing
from .common import CanonicalizerSettings, count_parameters, mean_std, time_alternating, time_per_call
from .harness import HardwareSettings, fit, train_config
from .nequip_anchor import NequIPConfig, compiled_for_timing, train_and_measure
from .results import markdown_table, provenance, write_results

__all__ = [
    "ANCHOR_METHODS",
    "AUGMENT_IN_FRAMES",
    "METHODS",
    "SAVED_METHODS",
    "MoleculeObjective",
    "MoleculesBenchConfig",
    "chosen_run",
    "evaluate",
    "evaluate_checkpoint",
    "find_split",
    "frame_conditioning",
    "interleaved_timing",
    "model_spec",
    "nequip_settings",
    "run",
    "validation_loss",
]

METHODS = ("canonicalized", "canonicalized-avg", "canonicalized-se3", "canonicalized-mlp", "frame-averaging", "weighted-frames",
           "weighted-frames-mlp", "augment", "augment-fa", "augment-wf", "schnet")
#: the methods whose model may become the molecule's checkpoint (see chosen_run): geocanon's wrappers
SAVED_METHODS = ("canonicalized", "canonicalized-avg", "canonicalized-se3", "canonicalized-mlp", "frame-averaging", "weighted-frames",
                 "weighted-frames-mlp", "augment-fa", "augment-wf")
#: methods that put the ``augment`` run's trained backbone inside another method's frames at inference
AUGMENT_IN_FRAMES = {"augment-fa": "frame-averaging", "augment-wf": "weighted-frames"}
#: methods from other packages (optional dependencies): run when named in ``methods``, never by default
ANCHOR_METHODS = ("nequip",)
#: structures timed one at a time per round for the batch-1 latency (the ASE calculator's case)
LATENCY_STRUCTURES = 20


#: ``fa_point_weights``: how the atoms are weighed in the PCA of the frames (see :func:`atom_weights`)
POINT_WEIGHTS = ("uniform", "mass", "heavy")


def atom_weights(kind: str, species: list[int]) -> list[float]:
    """The PCA weight of each element of ``species`` for ``fa_point_weights=kind``: 1 for "uniform", the atomic
    mass for "mass", 0 for hydrogen and 1 otherwise for "heavy"."""
    if kind == "mass":
        from ase.data import atomic_masses

        return [float(atomic_masses[z]) for z in species]
    if kind == "heavy":
        return [0.0 if z == 1 else 1.0 for z in species]
    if kind == "uniform":
        return [1.0] * len(species)
    raise ValueError(f"fa_point_weights must be one of {POINT_WEIGHTS}, got {kind!r}")


@dataclass
class MoleculesBenchConfig(HardwareSettings, CanonicalizerSettings):
    """Everything a run depends on (YAML keys of ``benchmarks/molecules*.yaml``)."""

    molecule: str = "ethanol"
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    data_root: str = "data/molecules"
    train_file: str | None = None  # default: the single <data_root>/<molecule>_*_train.extxyz
    valid_file: str | None = None
    test_file: str | None = None
    n_train: int = 1000
    n_valid: int = 1000
    n_test: int = 2000
    # energy backbones
    hidden: int = 64
    layers: int = 3
    num_rbf: int = 64
    cutoff: float = 5.0
    gnn_coordinate_unit: float | None = None  # Å, EnergyGNN's coordinate inputs are divided by it; None: the cutoff
    gnn_init: str = "xavier"  # EnergyGNN's initialisation ("xavier" or "torch")
    gnn_pair_vectors: bool = True  # EnergyGNN's filters see x_j - x_i (False: invariant filters)
    mlp_hidden: int = 256
    mlp_layers: int = 3
    # canonicalizer: the canon_* fields of CanonicalizerSettings
    # SchNet
    schnet_hidden: int = 64
    schnet_interactions: int = 3
    # frame averaging: "all" 8 frames per training step, or one "sampled" frame (see FrameAveraged)
    fa_train_frames: str = "all"
    # weighted-frames*: skewness below which an axis' two signs are blended (see weighted_pca_frames)
    fa_sign_tolerance: float = 0.1
    # frame-averaging / weighted-frames*: "uniform" PCA of the atoms, "mass"-weighted (inertia axes, centre of mass) or
    # "heavy" (the PCA of the atoms other than hydrogen: frames of the heavy-atom skeleton)
    fa_point_weights: str = "uniform"
    # frame-averaging / weighted-frames*: fixed orientations per frame wherever all frames are averaged (evaluation;
    # training too with fa_train_frames "all"): M times the backbone calls (see FrameAveraged's ``orientations``)
    fa_orientations: int = 1
    # NequIP anchor (cutoff = cutoff; see geocanon.bench.nequip_anchor.NequIPConfig)
    nequip_lmax: int = 1
    nequip_layers: int = 3
    nequip_features: int = 24
    # optimisation
    energy_weight: float = 0.01  # loss = energy_weight * MSE(E)/σ² + MSE(F)/σ², σ = force std
    max_epochs: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    patience: int | None = None
    check_val_every_n_epoch: int = 5
    # exponential moving average of the weights (see TrainConfig) for geocanon's methods and SchNet; NequIP always
    # keeps one (nequip-train's practice: decay 0.999 ramped up as in ema_warmup), with this decay when set
    ema_decay: float | None = None
    ema_warmup: bool = True  # ramp the decay up as NequIP does (see WarmupEMA): without it 36 epochs end far worse
    # time NequIP also as deployed (compiled ahead of time by nequip-compile, AOTInductor; needs a C++ compiler): the
    # timing tables gain a "nequip-compiled" row, the first seed's model compiled (see nequip_anchor.compile_model)
    time_compiled_nequip: bool = False
    # outputs
    run_dir: str = "runs/molecules"
    results: str = "benchmarks/results/molecules"
    checkpoint_dir: str = "benchmarks/checkpoints"
    label: str = "full"

    def __post_init__(self) -> None:
        unknown = set(self.methods) - set(METHODS) - set(ANCHOR_METHODS)
        if unknown:
            raise ValueError(f"unknown molecule methods {sorted(unknown)}; choose from {METHODS + ANCHOR_METHODS}")
        check_train_frames(self.fa_train_frames, "fa_train_frames")
        if self.fa_point_weights not in POINT_WEIGHTS:
            raise ValueError(f"fa_point_weights must be one of {POINT_WEIGHTS}, got {self.fa_point_weights!r}")
        check_orientations(self.fa_orientations, "fa_orientations")


def find_split(cfg: MoleculesBenchConfig, split: str) -> Path:
    """The file of ``split`` ("train", "valid", "test"): the config's ``<split>_file`` or the one generated file."""
    explicit = getattr(cfg, f"{split}_file")
    if explicit is not None:
        return Path(explicit)
    found = sorted(Path(cfg.data_root).glob(f"{cfg.molecule}_*_{split}.extxyz"))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(p.name for p in found)})"
        raise FileNotFoundError(
            f"{what} {split} files for {cfg.molecule} in {cfg.data_root}: generate them with "
            f"`python datasets/molecules/generate.py --root {cfg.data_root} --molecules {cfg.molecule}` or set {split}_file"
        )
    return found[0]


def _datasets(cfg: MoleculesBenchConfig) -> dict[str, MoleculeDataset]:
    sizes = {"train": cfg.n_train, "valid": cfg.n_valid, "test": cfg.n_test}
    out = {}
    for split, n in sizes.items():
        data = read_molecules(find_split(cfg, split), require_labels=True)
        if len(data) < n:
            raise ValueError(f"{data.source} has {len(data)} frames, the config asks for n_{split}={n}")
        out[split] = data.subset(range(n)).to(torch.float32)
    return out


def model_spec(method: str, cfg: MoleculesBenchConfig, species: list[int], num_atoms: int, energy_shift: float, energy_scale: float) -> dict[str, Any]:
    """The checkpoint spec of ``method``'s :class:`~geocanon.nn.energy.MolecularPotential`."""
    if method in AUGMENT_IN_FRAMES:
        return model_spec(AUGMENT_IN_FRAMES[method], cfg, species, num_atoms, energy_shift, energy_scale)
    t = len(species)
    gnn = {"name": "energy_gnn", "config": {"num_species": t, "hidden": cfg.hidden, "layers": cfg.layers, "num_rbf": cfg.num_rbf, "cutoff": cfg.cutoff,
                                            "coordinate_unit": cfg.gnn_coordinate_unit or cfg.cutoff, "init": cfg.gnn_init,
                                            "pair_vectors": cfg.gnn_pair_vectors}}
    flat_mlp = {"name": "energy_mlp", "config": {"num_atoms": num_atoms, "num_species": t, "hidden": cfg.mlp_hidden, "layers": cfg.mlp_layers}}
    if method == "augment":
        energy = gnn
    elif method in ("frame-averaging", "weighted-frames", "weighted-frames-mlp"):
        energy = {"name": "frame_averaged", "config": {"backbone": flat_mlp if method == "weighted-frames-mlp" else gnn, "group": "E3",
                                                       "output": "invariant", "scalar_features": ["species"], "train_frames": cfg.fa_train_frames}}
        if method != "frame-averaging":
            energy["config"]["sign_tolerance"] = cfg.fa_sign_tolerance
        if cfg.fa_point_weights != "uniform":
            energy["config"].update(point_weights="species", point_weight_values=atom_weights(cfg.fa_point_weights, species))
        if cfg.fa_orientations > 1:  # only then: the specs of earlier runs stay as they were, so they resume
            energy["config"]["orientations"] = cfg.fa_orientations
    elif method == "schnet":
        energy = {"name": "schnet", "config": {"hidden": cfg.schnet_hidden, "filters": cfg.schnet_hidden,
                                               "interactions": cfg.schnet_interactions, "cutoff": cfg.cutoff}}
    else:
        backbone = gnn
        if method == "canonicalized-mlp":
            backbone = flat_mlp
        canon = cfg.e3nn_spec(
            group="SE3" if method == "canonicalized-se3" else "E3", num_scalar_features=t,
            k=64, num_points=None,  # complete graphs: no kNN switching, so the energy is smooth
        )
        if method == "canonicalized-avg":
            energy = {"name": "third_axis_averaged", "config": {"backbone": backbone, "canonicalizer": canon, "scalar_features": ["species"]}}
        else:
            energy = {"name": "canonicalized", "config": {"backbone": backbone, "canonicalizer": canon, "output": "invariant", "scalar_features": ["species"]}}
    return {"name": "molecular_potential", "config": {"species": species, "model": energy, "energy_shift": energy_shift, "energy_scale": energy_scale}}


class MoleculeObjective:
    """``energy_weight · MSE(E)/σ² + MSE(F)/σ²`` (σ = the model's energy_scale); logs energy / force MAE.

    With ``augment``, training batches are moved by a random E(3) element (forces rotate with it).
    """

    def __init__(self, energy_weight: float, augment: bool = False) -> None:
        self.energy_weight = energy_weight
        self.augment = augment

    def __call__(self, model: nn.Module, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        pos, forces, mask = batch["pos"], batch["forces"], batch["mask"]
        if self.augment and stage == "train":
            g = random_group_element("E3", pos.shape[0], dtype=pos.dtype, device=pos.device)
            pos, forces = g.apply_points(pos), g.from_canonical_vectors(forces)  # P Qᵀ + s, F Qᵀ
        energy, pred = model(pos, batch["numbers"], mask)
        scale = model.energy_scale
        e_err = energy - batch["energy"]
        f_err = (pred - forces)[mask]
        loss = self.energy_weight * (e_err / scale).pow(2).mean() + (f_err / scale).pow(2).mean()
        return {"loss": loss, "energy_mae": e_err.abs().mean(), "force_mae": f_err.abs().mean()}


def _predict(model: nn.Module, data: MoleculeDataset, batch_size: int = 100) -> tuple[Tensor, Tensor]:
    """Predicted energies [F] and forces [F, N, 3] of every frame (model in eval mode)."""
    model.eval()
    energies, forces = [], []
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            s = slice(i, i + batch_size)
            e, f = model(data.pos[s], data.numbers[s], data.mask[s])
            energies.append(e)
            forces.append(f)
    return torch.cat(energies), torch.cat(forces)


def evaluate(model: nn.Module, data: MoleculeDataset, batch_size: int = 100) -> dict[str, Any]:
    """Energy MAE (meV), force MAE (meV/Å, over all real force components) and ``n`` frames of ``data``;
    also ``per_structure_force_mae`` [F] (meV/Å) for the conditioning analysis."""
    data.require_labels()
    energy, forces = _predict(model, data.to(next(model.parameters()).dtype), batch_size)
    err = (forces - data.forces.to(forces.dtype)).abs() * data.mask[..., None]
    per_structure = err.sum((1, 2)) / (3 * data.mask.sum(1))
    return {
        "energy_mae_mev": 1000 * (energy - data.energy.to(energy.dtype)).abs().mean().item(),
        "force_mae_mev_per_a": 1000 * err.sum().item() / (3 * data.mask.sum().item()),
        "n": len(data),
        "per_structure_force_mae": 1000 * per_structure,
    }


def frame_conditioning(model: nn.Module, data: MoleculeDataset) -> Tensor | None:
    """How close each geometry is to one where the learned frame is undefined: [F], or None without an e3nn canonicalizer.

    ``min_i |v_i^⊥| / max_j |v_j|`` over the Gram–Schmidt steps of the canonicalizer's predicted
    vectors (``v_1^⊥ = v_1``; for O3/E3 ``|v_3^⊥|`` is the triple product that fixes the handedness):
    near 0 the frame, and so the energy, can jump (Dym et al. 2024).
    """
    canon = getattr(model.model, "canonicalizer", None)
    if not isinstance(canon, E3nnCanonicalizer):
        return None
    species = one_hot_species(data.numbers, model.species, data.pos.dtype)
    with torch.no_grad():
        vectors = canon.network(data.pos, mask=data.mask, scalars=species)[:, : canon.num_axes]  # [F, k, 3]
    scale = vectors.norm(dim=-1).amax(1)
    axes, ratios = [], []
    for i in range(vectors.shape[1]):
        v = vectors[:, i]
        for e in axes:
            v = v - (v * e).sum(-1, keepdim=True) * e
        ratios.append(v.norm(dim=-1) / scale)
        axes.append(v / v.norm(dim=-1, keepdim=True))
    return torch.stack(ratios, -1).amin(-1)


def frame_sensitivity(model: nn.Module, data: MoleculeDataset, jitter: float = 0.01, seed: int = 0) -> Tensor | None:
    """Angle (degrees) between the learned frame of each geometry and that of a copy with N(0, jitter²) Å noise
    on every atom: [F], or None without an e3nn canonicalizer. Forces differentiate through the frame, so
    a frame that turns by degrees for a 0.01 Å jitter feeds large spurious terms into them."""
    canon = getattr(model.model, "canonicalizer", None)
    if not isinstance(canon, E3nnCanonicalizer):
        return None
    species = one_hot_species(data.numbers, model.species, data.pos.dtype)
    return testing.frame_sensitivity(canon, data.pos, jitter, mask=data.mask, seed=seed, scalars=species)


def frames_per_structure(model: nn.Module, data: MoleculeDataset) -> float:
    """Mean number of backbone calls per structure at evaluation: the frames of non-zero weight of a FrameAveraged
    energy (8 without sign tolerance) times its orientations per frame, 2 for ThirdAxisAveraged, otherwise 1."""
    energy = model.model
    if isinstance(energy, ThirdAxisAveraged):
        return 2.0
    if not isinstance(energy, FrameAveraged):
        return 1.0
    tolerance = math.inf if energy.sign_tolerance is None else energy.sign_tolerance  # inf: every frame, equal weights
    point_weights = None
    if energy.point_weights is not None:
        point_weights = energy.point_weights_of({energy.point_weights: one_hot_species(data.numbers, model.species, data.pos.dtype)}, data.pos)
    _, weights = weighted_pca_frames(data.pos, mask=data.mask, group=energy.group, sign_tolerance=tolerance, point_weights=point_weights)
    return (weights > 0).sum(1).double().mean().item() * len(energy.turns)


def skewness_gap(data: MoleculeDataset) -> Tensor:
    """Smallest |skewness| of the atoms along a principal axis: [F] (0 = PCA's sign rule flips there, e.g. at a
    mirror-symmetric geometry; weighted frames blend the two signs of axes below their sign tolerance)."""
    from ..canonicalizers.pca import principal_axes, skewness

    pos = data.pos.masked_fill(~data.mask[..., None], 0.0)
    centroid, axes, variances = principal_axes(pos, data.mask)
    return skewness(pos, data.mask, centroid, axes, variances).abs().amin(1)


def pca_gap(data: MoleculeDataset) -> Tensor:
    """Smallest relative gap between the principal variances, ``min(λ1-λ2, λ2-λ3)/λ1``: [F] (0 = PCA frame undefined)."""
    from ..canonicalizers.pca import principal_axes

    _, _, var = principal_axes(data.pos, data.mask)
    return torch.minimum(var[:, 0] - var[:, 1], var[:, 1] - var[:, 2]) / var[:, 0]


def _rank_correlation(x: Tensor, y: Tensor) -> float:
    rx, ry = x.argsort().argsort().double(), y.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([rx, ry]))[0, 1])


def _conditioning_report(errors: Tensor, measure: Tensor) -> dict[str, float]:
    """Spearman correlation of per-structure force MAE with ``measure`` and the MAE of its lowest decile vs the rest."""
    low = measure <= measure.quantile(0.1)
    return {
        "spearman": _rank_correlation(errors, measure),
        "force_mae_lowest_decile": errors[low].mean().item(),
        "force_mae_other": errors[~low].mean().item(),
        "measure_lowest_decile_max": measure[low].max().item(),
    }


def measure(model: nn.Module, data: MoleculeDataset, group: str = "E3") -> dict[str, Any]:
    """Test errors, force equivariance error and energy invariance error (float32, 4 random elements of
    ``group``), ms per structure, and the conditioning analysis."""
    result = evaluate(model, data)
    errors = result.pop("per_structure_force_mae")
    n = min(200, len(data))
    pos, numbers = data.pos[:n], data.numbers[:n]

    def forces(p: Tensor, numbers: Tensor) -> Tensor:
        return model(p, numbers)[1]

    def energy(p: Tensor, numbers: Tensor) -> Tensor:
        return model(p, numbers)[0]

    result["force_equivariance_error"] = testing.equivariance_error(forces, pos, group, "vector", scalars={"numbers": numbers}, trials=4)
    result["energy_invariance_error"] = testing.equivariance_error(energy, pos, group, "invariant", scalars={"numbers": numbers}, trials=4)
    batch = slice(0, min(100, len(data)))
    seconds = time_per_call(lambda: model(data.pos[batch], data.numbers[batch]))
    result["inference_ms_per_structure"] = 1000 * seconds / (batch.stop - batch.start)
    result["frames_per_structure"] = frames_per_structure(model, data)
    result["conditioning_pca_gap"] = _conditioning_report(errors, pca_gap(data))
    result["conditioning_skewness"] = _conditioning_report(errors, skewness_gap(data))
    frames = frame_conditioning(model, data)
    if frames is not None:
        result["conditioning_frame"] = _conditioning_report(errors, frames)
        result["frame_conditioning_min"] = frames.min().item()
        turn = frame_sensitivity(model, data)
        result["frame_change_deg_median"] = turn.median().item()
        result["frame_change_deg_p90"] = turn.quantile(0.9).item()
    return result


def interleaved_timing(models: dict[str, nn.Module], data: MoleculeDataset, batch_size: int = 100, structures: int | None = None,
                       repeats: int = 7) -> dict[str, Any]:
    """Inference time of several models timed in turn in one process (energy + forces of the same ``structures``
    test structures, default ``batch_size``, in calls of ``batch_size``; :func:`~geocanon.bench.common.time_alternating`),
    so that a changing machine load affects them alike: per method the median ms per structure, and its median
    per-round ratio to every other method. ``batch_size=1`` is the ASE calculator's case (molecular dynamics)."""
    names = list(models)
    count = min(structures or batch_size, len(data))
    calls = [(data.pos[i:i + batch_size], data.numbers[i:i + batch_size]) for i in range(0, count, batch_size)]
    for model in models.values():
        model.eval()
    times = time_alternating([lambda m=models[n]: [m(pos, numbers) for pos, numbers in calls] for n in names], repeats=repeats)
    per_structure = {n: 1000 * statistics.median(t) / count for n, t in zip(names, times)}
    ratios = {a: {b: statistics.median(x / y for x, y in zip(ta, tb)) for b, tb in zip(names, times) if b != a} for a, ta in zip(names, times)}
    return {"batch_size": min(batch_size, count), "structures": count, "repeats": repeats, "ms_per_structure": per_structure, "time_ratio": ratios}


def _normalisation(train: MoleculeDataset) -> tuple[float, float]:
    """Per-atom energy shift (eV) and energy scale (eV per model unit = std of the force components)."""
    shift = (train.energy / train.mask.sum(1)).mean().item()
    return shift, train.forces[train.mask].std().item()


def nequip_settings(cfg: MoleculesBenchConfig, seed: int) -> NequIPConfig:
    """The :class:`~geocanon.bench.nequip_anchor.NequIPConfig` of the NequIP anchor: ``cfg``'s budget and optimiser settings."""
    return NequIPConfig(
        r_max=cfg.cutoff, l_max=cfg.nequip_lmax, num_layers=cfg.nequip_layers, num_features=cfg.nequip_features, seed=seed,
        max_epochs=cfg.max_epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay, scheduler=cfg.scheduler,
        energy_weight=cfg.energy_weight, check_val_every_n_epoch=cfg.check_val_every_n_epoch, patience=cfg.patience,
        accelerator=cfg.accelerator, **({} if cfg.ema_decay is None else {"ema_decay": cfg.ema_decay}),
    )


def _train_nequip(seed: int, cfg: MoleculesBenchConfig, data: dict[str, MoleculeDataset], run_dir: Path, resume: bool) -> tuple[nn.Module, dict[str, Any]]:
    """NequIP with the budget and optimiser settings of ``cfg`` (see :func:`geocanon.bench.nequip_anchor.train_and_measure`)."""
    return train_and_measure(nequip_settings(cfg, seed), data, run_dir, resume)


def _run_folder(cfg: MoleculesBenchConfig, method: str, seed: int) -> Path:
    """The folder of one run: ``run_dir/molecule/method/seed<seed>``."""
    return Path(cfg.run_dir) / cfg.molecule / method / f"seed{seed}"


def _fit(method: str, seed: int, cfg: MoleculesBenchConfig, data: dict[str, MoleculeDataset], resume: bool) -> tuple[nn.Module, dict[str, Any]]:
    """Train (or, finished, reload) ``method``'s model on ``seed`` in its :func:`_run_folder`: the model and its training row."""
    run_dir = _run_folder(cfg, method, seed)
    torch.manual_seed(seed)
    shift, scale = _normalisation(data["train"])
    model = checkpoint.build(model_spec(method, cfg, data["train"].species, data["train"].pos.shape[1], shift, scale))
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(data["train"], batch_size=cfg.batch_size, shuffle=True, generator=generator)
    result = fit(model, MoleculeObjective(cfg.energy_weight, augment=method == "augment"), train, _valid_loader(data), train_config(cfg, seed), run_dir,
                 resume)
    return model, {"molecule": cfg.molecule, "method": method, "seed": seed, "best_val_loss": result.best_val_loss, "best_epoch": result.best_epoch,
                   "epochs_run": result.epochs_run, "train_time_s": result.train_time_s, "parameters": count_parameters(model)}


def _valid_loader(data: dict[str, MoleculeDataset]) -> DataLoader:
    return DataLoader(data["valid"], batch_size=200)


def validation_loss(model: nn.Module, data: dict[str, MoleculeDataset], energy_weight: float) -> float:
    """The training objective on the validation split, as the harness measures it for its best checkpoint (mean of
    the per-batch losses weighted by batch size), for models that were not trained in that form."""
    model.eval()
    objective = MoleculeObjective(energy_weight)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in _valid_loader(data):
            total += objective(model, batch, "val")["loss"].item() * len(batch["pos"])
            count += len(batch["pos"])
    return total / count


#: models trained (or reloaded) so far in one :func:`run`, by (method, seed), with their training rows
Fitted = dict[tuple[str, int], tuple[nn.Module, dict[str, Any]]]


def _fit_once(method: str, seed: int, cfg: MoleculesBenchConfig, data: dict[str, MoleculeDataset], resume: bool,
              fitted: Fitted) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`_fit` unless ``fitted`` holds it already (the augment run serves three methods): the model and a copy of its row."""
    if (method, seed) not in fitted:
        fitted[method, seed] = _fit(method, seed, cfg, data, resume)
    model, row = fitted[method, seed]
    return model, dict(row)


def _augment_in_frames(method: str, seed: int, cfg: MoleculesBenchConfig, data: dict[str, MoleculeDataset], resume: bool,
                       fitted: Fitted) -> tuple[nn.Module, dict[str, Any]]:
    """The ``augment`` run of ``seed`` (trained or reloaded in its own run folder) with its backbone inside the frames
    of ``AUGMENT_IN_FRAMES[method]``; the row keeps the augment run's training and scores the wrapped model on the
    validation split (``best_val_loss``), so that the best canonicalized checkpoint is chosen as for the others."""
    augmented, row = _fit_once("augment", seed, cfg, data, resume, fitted)
    model = checkpoint.build(model_spec(method, cfg, data["train"].species, data["train"].pos.shape[1], augmented.energy_shift, augmented.energy_scale))
    model.model.backbone.load_state_dict(augmented.model.state_dict())
    row.update(method=method, best_val_loss=validation_loss(model, data, cfg.energy_weight))
    return model, row


def _train_one(method: str, seed: int, cfg: MoleculesBenchConfig, data: dict[str, MoleculeDataset], resume: bool,
               fitted: Fitted) -> tuple[nn.Module, dict[str, Any]]:
    if method == "nequip":
        model, row = _train_nequip(seed, cfg, data, _run_folder(cfg, method, seed), resume)
        return model, {"molecule": cfg.molecule, "method": method, "seed": seed, **row}
    model, row = (_augment_in_frames if method in AUGMENT_IN_FRAMES else _fit_once)(method, seed, cfg, data, resume, fitted)
    row.update(measure(model, data["test"], group=_group(method)))
    return model, row


def _group(method: str) -> str:
    """The symmetry group a method is built to respect (its equivariance is measured under it)."""
    return "SE3" if method == "canonicalized-se3" else "E3"


def _summarise(rows: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    summary = []
    for method in methods:
        runs = [r for r in rows if r["method"] == method]
        if not runs:
            continue
        e_mean, e_std = mean_std([r["energy_mae_mev"] for r in runs])
        f_mean, f_std = mean_std([r["force_mae_mev_per_a"] for r in runs])
        summary.append({
            "molecule": runs[0]["molecule"], "method": method, "seeds": len(runs),
            "energy_mae_mev": e_mean, "energy_mae_std": e_std, "force_mae_mev_per_a": f_mean, "force_mae_std": f_std,
            "equivariance_group": _group(method),
            "force_equivariance_error_max": max(r["force_equivariance_error"] for r in runs),
            "parameters": runs[0]["parameters"], "train_time_s_mean": mean_std([r["train_time_s"] for r in runs])[0],
            "inference_ms_per_structure": mean_std([r["inference_ms_per_structure"] for r in runs])[0],
            "frames_per_structure": mean_std([r["frames_per_structure"] for r in runs])[0] if "frames_per_structure" in runs[0] else None,
            "epochs": runs[0]["epochs_run"],
            "skewness_spearman": mean_std([r["conditioning_skewness"]["spearman"] for r in runs])[0] if "conditioning_skewness" in runs[0] else None,
            "frame_spearman": mean_std([r["conditioning_frame"]["spearman"] for r in runs])[0] if "conditioning_frame" in runs[0] else None,
            "frame_change_deg_median": mean_std([r["frame_change_deg_median"] for r in runs])[0] if "frame_change_deg_median" in runs[0] else None,
            # the harness's validation loss, comparable across geocanon's own methods only (nequip-train scores its own loss)
            "best_val_loss_mean": mean_std([r["best_val_loss"] for r in runs])[0] if method in SAVED_METHODS else None,
        })
    return summary


def chosen_run(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run whose model becomes the molecule's checkpoint, chosen on the validation split alone: of the
    canonicalized methods (SAVED_METHODS) the one of lowest mean validation loss over its seeds, and of its seeds
    the one of lowest validation loss (a method's single luckiest seed on 200 validation frames does not decide);
    None without a canonicalized run."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["method"] in SAVED_METHODS:
            runs.setdefault(row["method"], []).append(row)
    if not runs:
        return None
    method = min(runs, key=lambda m: statistics.fmean(r["best_val_loss"] for r in runs[m]))
    return min(runs[method], key=lambda r: r["best_val_loss"])


def _selected_without_test(entry: dict[str, Any]) -> str:
    """One line naming the method of :func:`chosen_run` (the exact canonicalized method of lowest mean validation
    loss): the choice of method per molecule that looks at no test error."""
    chosen = chosen_run(entry["runs"])
    if chosen is None:
        return ""
    runs = [r for r in entry["runs"] if r["method"] == chosen["method"]]
    summary = next(r for r in entry["summary"] if r["method"] == chosen["method"])
    return (f"\n\nChosen on the validation split: of the canonicalized methods, **{chosen['method']}** has the lowest mean "
            f"validation loss ({statistics.fmean(r['best_val_loss'] for r in runs):.4g} over {len(runs)} seeds; test force MAE "
            f"{summary['force_mae_mev_per_a']:.4g} meV/Å).")


def _section(name: str, entry: dict[str, Any]) -> str:
    """Markdown section of one molecule's results."""
    cfg = entry["config"]
    status = "complete" if entry["complete"] else "PARTIAL (still running or interrupted; rows so far)"
    cols = ["method", "seeds", "energy_mae_mev", "energy_mae_std", "force_mae_mev_per_a", "force_mae_std", "equivariance_group",
            "force_equivariance_error_max",
            "parameters", "train_time_s_mean", "inference_ms_per_structure", "frames_per_structure", "epochs", "skewness_spearman", "frame_spearman", "frame_change_deg_median"]
    text = (f"## {name} — `{cfg['label']}` configuration — {status}\n\nData: {entry['data']}; {cfg['n_train']}/{cfg['n_valid']}/"
            f"{cfg['n_test']} train/valid/test frames, {cfg['max_epochs']} epochs max.\n\n" + markdown_table(entry["summary"], cols)
            + _selected_without_test(entry))
    for timing in filter(None, (entry.get("timing"), entry.get("latency"))):
        names = list(timing["ms_per_structure"])
        rows = [{"method": a, "ms_per_structure": timing["ms_per_structure"][a],
                 **{f"× {b}": timing["time_ratio"][a].get(b) for b in names}} for a in names]
        text += (f"\n\nInterleaved timing (seed-{timing['seed']} models timed in turn in one process, {timing['repeats']} rounds, "
                 f"energy + forces of {timing.get('structures', timing['batch_size'])} test structures in calls of {timing['batch_size']}; "
                 "× m = median per-round time ratio to m):\n\n" + markdown_table(rows, ["method", "ms_per_structure"] + [f"× {b}" for b in names]))
    nve = entry.get("nve")
    if nve:
        text += (f"\n\nNVE ({nve['method']} seed {nve['seed']}, float64, velocity Verlet {nve['timestep_fs']} fs for {nve['duration_ps']:.3g} ps "
                 f"from {nve['start']}): drift {nve['drift_mev_per_ps_per_atom']:.3g} meV/ps/atom, max excursion {nve['max_excursion_ev']:.3g} eV, "
                 f"mean T {nve['mean_temperature_k']:.0f} K, stable: {nve['stable']}.")
    return text


def _markdown(payload: dict[str, Any]) -> str:
    header = (
        "# Molecules: energies and forces from GFN2-xTB molecular dynamics at 500 K\n\n"
        "Errors at the best-validation epoch: energy MAE in meV, force MAE in meV/Å (over all force components), mean and "
        "std over seeds. force_equivariance_error = max ‖F(g·x) − g·F(x)‖/‖g·F(x)‖ over 4 random elements of the "
        "method's group (E3 incl. reflections; SE3 for canonicalized-se3), float32, 200 test frames. inference = energy + forces, batches of 100, per structure; "
        "frames_per_structure = backbone calls per test structure (frame averaging 8; weighted frames: those of non-zero weight; times the orientations per frame, fa_orientations). "
        "skewness_spearman = rank correlation of the per-structure force MAE with the smallest |skewness| of the atoms "
        "along a principal axis (0 where PCA's sign rule flips, e.g. mirror-symmetric geometries; per-run decile numbers in the JSON). "
        "frame_spearman = rank correlation of the per-structure force MAE with the frame conditioning "
        "min|v_i⊥|/max|v_j| of the learned canonicalizer (negative: worse near ill-conditioned frames; per-run "
        "decile numbers in the JSON). frame_change_deg_median = median angle by which the learned frame turns when "
        "every atom is jittered by N(0, 0.01²) Å (forces differentiate through the frame). nequip = NequIP trained by "
        "its own nequip-train (EMA weights; train time includes its start-up). augment-fa / augment-wf = the augment run's "
        "backbone of the same seed inside frame averaging / weighted frames at inference (no training of their own: "
        "epochs and train time are the augment run's; errors at its best-validation epoch). nequip-compiled (in the timing "
        "tables of runs with time_compiled_nequip) = the same seed's NequIP compiled ahead of time by nequip-compile (AOTInductor), the form NequIP's "
        "ASE calculator and LAMMPS plugin run; same predictions to float32 rounding.\n\n"
    )
    return header + "\n\n".join(_section(name, entry) for name, entry in sorted(payload["molecules"].items()))


def _payload(cfg: MoleculesBenchConfig, rows: list[dict[str, Any]], checkpoint_path: str | None, nve: dict[str, Any] | None,
             data: str, wall: float, complete: bool, timing: dict[str, Any] | None = None,
             latency: dict[str, Any] | None = None) -> dict[str, Any]:
    """The results of every molecule in ``cfg.results`` so far, with this molecule's entry replaced."""
    import json

    existing = Path(cfg.results).with_suffix(".json")
    payload: dict[str, Any] = {"benchmark": "molecules", "checkpoints": {}, "molecules": {}}
    if existing.is_file():
        previous = json.loads(existing.read_text())
        if previous.get("benchmark") == "molecules":
            payload["checkpoints"].update(previous.get("checkpoints", {}))
            payload["molecules"].update(previous.get("molecules", {}))
    if checkpoint_path:
        payload["checkpoints"][cfg.molecule] = checkpoint_path
    payload["molecules"][cfg.molecule] = {
        "complete": complete, "config": asdict(cfg), "data": data, "summary": _summarise(rows, cfg.methods), "runs": rows, "nve": nve, "timing": timing,
        "latency": latency,
        "provenance": provenance(wall, cfg.seeds),
    }
    payload["complete"] = all(entry["complete"] for entry in payload["molecules"].values())
    payload["provenance"] = payload["molecules"][cfg.molecule]["provenance"]
    return payload


def run(cfg: MoleculesBenchConfig, resume: bool = False, nve_steps: int = 2000) -> dict[str, Any]:
    """Train and evaluate every method × seed on ``cfg.molecule``; write results as they come (other molecules'
    entries in the same results file are kept), save the model of :func:`chosen_run` as the molecule's checkpoint
    and run NVE with it."""
    from ase import Atoms

    from ..ase import Calculator, nve_drift

    if "nequip" in cfg.methods:
        from .nequip_anchor import require_nequip

        require_nequip()  # before any other method trains
    start = time.perf_counter()
    data = _datasets(cfg)
    # which frames: the generator's file names identify settings, the content hash the frames themselves
    described = ", ".join(f"{s}: {d.source} (sha256 {file_sha256(d.source)[:12]})" for s, d in data.items())
    rows: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None  # the chosen run (chosen_run) so far, whose model is saved at ckpt
    saved_models: dict[tuple[str, int], nn.Module] = {}  # the canonicalized models so far, by (method, seed)
    total = len(cfg.methods) * len(cfg.seeds)
    ckpt = str(Path(cfg.checkpoint_dir) / f"molecules_{cfg.molecule}.pt")
    first_seed_models: dict[str, nn.Module] = {}  # timed together at the end
    fitted: Fitted = {}
    for method in cfg.methods:
        for seed in cfg.seeds:
            model, row = _train_one(method, seed, cfg, data, resume, fitted)
            rows.append(row)
            if seed == cfg.seeds[0]:
                first_seed_models[method] = model
            if method in SAVED_METHODS:
                saved_models[method, seed] = model
                choice = chosen_run(rows)
                if choice is not best:
                    best = choice
                    checkpoint.save(ckpt, saved_models[best["method"], best["seed"]],
                                    meta={"benchmark": "molecules", "molecule": cfg.molecule, "row": best, "config": asdict(cfg)})
            payload = _payload(cfg, rows, ckpt if best else None, None, described, time.perf_counter() - start, complete=False)
            write_results(cfg.results, payload, _markdown(payload))
    if cfg.time_compiled_nequip and "nequip" in first_seed_models:
        first_seed_models["nequip-compiled"] = compiled_for_timing(_run_folder(cfg, "nequip", cfg.seeds[0]), data["train"].species, resume)
    timing = {"seed": cfg.seeds[0], **interleaved_timing(first_seed_models, data["test"])}
    latency = {"seed": cfg.seeds[0], **interleaved_timing(first_seed_models, data["test"], batch_size=1, structures=LATENCY_STRUCTURES)}
    nve = None
    if best is not None:
        test = data["test"]
        atoms = Atoms(numbers=test.numbers[0][test.mask[0]].numpy(), positions=test.pos[0][test.mask[0]].double().numpy())
        atoms.calc = Calculator(ckpt)
        nve = nve_drift(atoms, steps=nve_steps)
        nve.update(start="test frame 0", method=best["method"], seed=best["seed"])
    payload = _payload(cfg, rows, ckpt if best else None, nve, described, time.perf_counter() - start, complete=len(rows) == total, timing=timing,
                       latency=latency)
    write_results(cfg.results, payload, _markdown(payload))
    return payload


def evaluate_checkpoint(path: str | Path, data: str | Path) -> dict[str, Any]:
    """Energy / force MAE of a saved :class:`~geocanon.nn.energy.MolecularPotential` on any labelled molecule file."""
    model, _ = checkpoint.load(path)
    result = evaluate(model, read_molecules(data, require_labels=True).to(torch.float32))
    result.pop("per_structure_force_mae")
    return {**result, "checkpoint": str(path), "data": str(data)}
