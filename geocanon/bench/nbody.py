"""The N-body benchmark: predict charged particles' positions 1000 steps ahead.

Methods, all trained by the same harness with the same budget:

* ``canonicalized``: the plain GNN in a learned E(3) frame (positions, velocities ``1o`` and
  charges ``0e`` in the e3nn canonicalizer; translation = centroid);
* ``canonicalized-offset``: the same with a learned translation offset;
* ``plain``: the GNN alone; ``augment``: the GNN with random E(3) data augmentation;
* ``pca``: the GNN in the PCA frame of the particle positions;
* ``frame-averaging``: the GNN averaged over the 8 PCA frames of the positions (Puny et al. 2022;
  ``fa_train_frames: sampled`` trains through one random frame per sample and step);
* ``egnn``: an E(n)-equivariant GNN written here; ``linear``: ``pos + α vel``.

Each method reports test MSE at the best-validation epoch (mean ± std over seeds), its measured E(3)
equivariance error on the test set, parameter count, training time and inference time per batch of 100.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from .. import checkpoint
from ..data.nbody import NBodyConfig, NBodyDataset, load_nbody, orientation_spread
from ..frames import random_group_element
from ..nn.gnn import closest_approach
from ..testing import equivariance_error, transform_inputs
from ..wrap import Ensemble, FrameAveraged, check_orientations, check_train_frames
from .common import CanonicalizerSettings, count_parameters, mean_std, time_per_call
from .harness import HardwareSettings, fit, train_config
from .results import markdown_table, provenance, write_results

__all__ = ["NBodyBenchConfig", "METHODS", "SAVED_METHODS", "PUBLISHED", "model_spec", "NBodyObjective", "run", "evaluate_checkpoint"]

METHODS = ("canonicalized", "canonicalized-offset", "plain", "augment", "pca", "frame-averaging", "egnn", "linear")
#: the methods whose model is saved as ``checkpoint`` when best by validation MSE: geocanon's learned and averaged frames
SAVED_METHODS = ("canonicalized", "canonicalized-offset", "frame-averaging")

#: published test MSE on charged5_initvel1small (EGNN paper Table 2; SEGNN; Kaba et al. 2023)
PUBLISHED = {
    "Linear": 0.0819,
    "SE(3)-Transformer": 0.0244,
    "TFN": 0.0155,
    "GNN": 0.0107,
    "Radial Field": 0.0104,
    "EGNN": 0.0071,
    "SEGNN": 0.0043,
    "Canonicalized GNN (Kaba et al.)": 0.0043,
    "Clifford / multivector networks": 0.0035,
}


@dataclass
class NBodyBenchConfig(HardwareSettings, CanonicalizerSettings):
    """Everything a run of the benchmark depends on (YAML keys of ``benchmarks/nbody*.yaml``)."""

    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    data_root: str = "data/nbody"
    source: str = "generated"  # or "published"
    n_train: int = 3000
    n_valid: int = 2000
    n_test: int = 2000
    # backbone GNN and EGNN
    hidden: int = 64
    layers: int = 4
    activation: str = "silu"
    layer_norm: bool = False
    velocity_residual: bool = True
    relative_positions: bool = True
    coulomb_edges: bool = False
    node_charges: bool = True
    approach_edges: bool = False  # constant-velocity closest-approach features on the edges (see NBodyGNN)
    pair_vector_output: bool = False  # output += sum_j a_ij (x_i - x_j) + b_ij (v_i - v_j) (see NBodyGNN)
    substeps: int = 1  # NBodyGNN applied as a K-step learned integrator (see NBodyGNN)
    # every model sees velocities relative to the centre of mass and is exact under Galilean boosts (see Comoving)
    comoving: bool = False
    # canonicalizer (the other canon_* fields: CanonicalizerSettings)
    canon_hidden_mul: int = 16
    # frame averaging: "all" 8 frames per training step, or one "sampled" frame (see FrameAveraged)
    fa_train_frames: str = "all"
    fa_orientations: int = 1  # frame averaging over every PCA frame in this many fixed orientations (see FrameAveraged)
    # optimisation
    max_epochs: int = 1000
    batch_size: int = 100
    lr: float = 5e-4
    weight_decay: float = 1e-12
    input_noise: float = 0.0  # std of training noise on input positions and velocities (see NBodyObjective)
    scheduler: str = "cosine"
    ema_decay: float | None = None  # exponential moving average of the weights (see TrainConfig)
    # also report each method's seed models averaged (an Ensemble) as the method "<method>-ensemble"
    ensemble: bool = False
    patience: int | None = None
    check_val_every_n_epoch: int = 10
    # outputs
    run_dir: str = "runs/nbody"
    results: str = "benchmarks/results/nbody"
    checkpoint: str = "benchmarks/checkpoints/nbody.pt"
    label: str = "full"

    def __post_init__(self) -> None:
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown N-body methods {sorted(unknown)}; choose from {METHODS}")
        check_train_frames(self.fa_train_frames, "fa_train_frames")
        NBodyObjective(input_noise=self.input_noise)  # validates it
        if self.source not in ("generated", "published"):
            raise ValueError(f"source must be 'generated' or 'published', got {self.source!r}")
        check_orientations(self.fa_orientations, "fa_orientations")


def model_spec(method: str, cfg: NBodyBenchConfig) -> dict[str, Any]:
    """The checkpoint spec (see :mod:`geocanon.checkpoint`) of ``method``'s model."""
    spec = _method_spec(method, cfg)
    if cfg.comoving:  # the data's horizon: the generated and the published sets share the protocol
        return {"name": "comoving", "config": {"model": spec, "horizon": NBodyConfig().horizon, "output": "position"}}
    return spec


def _method_spec(method: str, cfg: NBodyBenchConfig) -> dict[str, Any]:
    gnn = {"name": "nbody_gnn", "config": {"hidden": cfg.hidden, "layers": cfg.layers, "activation": cfg.activation, "layer_norm": cfg.layer_norm,
                                             "velocity_residual": cfg.velocity_residual,
                                             "relative_positions": cfg.relative_positions,
                                             "coulomb_edges": cfg.coulomb_edges, "node_charges": cfg.node_charges,
                                             "substeps": cfg.substeps, "approach_edges": cfg.approach_edges,
                                             "pair_vector_output": cfg.pair_vector_output}}
    if method in ("plain", "augment"):
        return gnn
    if method == "egnn":
        return {"name": "egnn", "config": {"hidden": cfg.hidden, "layers": cfg.layers, "activation": cfg.activation}}
    if method == "linear":
        return {"name": "linear_velocity", "config": {}}
    if method == "frame-averaging":
        return {
            "name": "frame_averaged",
            "config": {"backbone": gnn, "group": "E3", "output": "position", "vector_features": ["vel"],
                       "scalar_features": ["charge"], "train_frames": cfg.fa_train_frames, "orientations": cfg.fa_orientations},
        }  # fmt: skip
    if method == "pca":
        canon = {"name": "pca", "config": {"group": "E3"}}
    else:
        canon = cfg.e3nn_spec(
            group="E3",
            num_scalar_features=1,
            num_vector_features=1,
            translation="learned" if method == "canonicalized-offset" else "centroid",
            k=16,
            num_points=None,
        )
    return {
        "name": "canonicalized",
        "config": {"backbone": gnn, "canonicalizer": canon, "output": "position", "vector_features": ["vel"], "scalar_features": ["charge"]},
    }


class NBodyObjective:
    """MSE between predicted and true target positions.

    In training only: optional random E(3) augmentation (``augment``), and Gaussian noise of standard
    deviation ``input_noise`` added to the input positions and velocities while the targets stay exact (a
    smoothness regulariser, as in learned simulators; 0 = off).
    """

    def __init__(self, augment: bool = False, input_noise: float = 0.0) -> None:
        if not (math.isfinite(input_noise) and input_noise >= 0):
            raise ValueError(f"input_noise must be a finite number >= 0, got {input_noise}")
        self.augment = augment
        self.input_noise = input_noise

    def __call__(self, model: nn.Module, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        pos, vel, charge, target = batch["pos"], batch["vel"], batch["charge"], batch["target"]
        if self.augment and stage == "train":
            g = random_group_element("E3", pos.shape[0], dtype=pos.dtype, device=pos.device)
            pos, moved = transform_inputs(g, pos, {"vel": vel})
            vel, target = moved["vel"], g.apply_points(target)
        if self.input_noise > 0 and stage == "train":
            pos = pos + self.input_noise * torch.randn_like(pos)
            vel = vel + self.input_noise * torch.randn_like(vel)
        pred = model(pos, vel=vel, charge=charge)
        return {"loss": F.mse_loss(pred, target)}


def _data_config(cfg: NBodyBenchConfig) -> NBodyConfig:
    return NBodyConfig(n_train=cfg.n_train, n_valid=cfg.n_valid, n_test=cfg.n_test)


def _datasets(cfg: NBodyBenchConfig) -> dict[str, NBodyDataset]:
    return {split: load_nbody(cfg.data_root, split, _data_config(cfg), source=cfg.source) for split in ("train", "valid", "test")}


#: random O(3) orientations per test system in the orientation floor (see :func:`orientation_floor`)
FLOOR_ORIENTATIONS = 16
#: a system's outcome "depends on its orientation" when its orientation spread exceeds this (MSE units)
ORIENTATION_DEPENDENT = 1e-6


def orientation_floor(spread: Tensor) -> dict[str, float | int]:
    """The lowest test MSE an exactly E(3)-equivariant model can reach (the mean of ``spread`` [S], the systems'
    :func:`~geocanon.data.nbody.orientation_spread`: the simulator clips force components in its own axes) and the share of systems
    whose outcome depends on the orientation at all."""
    return {"test_mse": spread.mean().item(), "systems_affected": (spread > ORIENTATION_DEPENDENT).double().mean().item(),
            "orientations": FLOOR_ORIENTATIONS}  # fmt: skip


def error_share(errors: Tensor, selected: Tensor) -> float:
    """Share of the total squared error ``errors`` [S] carried by the systems ``selected`` (bool [S] or indices);
    0 for a model without error (nothing to share, rather than 0/0)."""
    errors = errors.double()
    total = errors.sum()
    return (errors[selected].sum() / total).item() if total > 0 else 0.0


def floor_breakdown(errors: Tensor, spread: Tensor) -> dict[str, float]:
    """How a model's error ``errors`` [S] relates to the floor: the share of its squared error in the systems whose
    outcome depends on the orientation, and its test MSE minus the floor (what exactness does not forbid)."""
    errors = errors.double()
    dependent = spread > ORIENTATION_DEPENDENT
    return {"orientation_dependent_share": error_share(errors, dependent),
            "excess_over_floor": (errors.mean() - spread.mean()).item()}  # fmt: skip


def system_errors(model: nn.Module, data: NBodyDataset, batch_size: int = 500) -> Tensor:
    """Mean squared error of each system of ``data`` [S] (over its particles and coordinates; model in eval
    mode, no grad)."""
    model.eval()
    with torch.no_grad():
        return torch.cat([
            ((model(data.pos[s], vel=data.vel[s], charge=data.charge[s]) - data.target[s]) ** 2).flatten(1).mean(1)
            for s in (slice(i, i + batch_size) for i in range(0, len(data), batch_size))
        ])  # fmt: skip


def test_mse(model: nn.Module, data: NBodyDataset, batch_size: int = 500) -> float:
    """Mean squared error over all coordinates of ``data`` (model in eval mode, no grad)."""
    return system_errors(model, data, batch_size).double().mean().item()


def worst_share(errors: Tensor, fraction: float = 0.05) -> float:
    """Share of the total squared error carried by the worst ``fraction`` of the systems (``errors`` [S])."""
    return error_share(errors, errors.argsort(descending=True)[: max(1, round(fraction * len(errors)))])


#: a system "meets" when two opposite charges come closer than this at constant velocity within the horizon
ENCOUNTER_DISTANCE = 0.4


def encounter_distance(data: NBodyDataset, horizon: float) -> Tensor:
    """[S] smallest constant-velocity closest approach (see :func:`~geocanon.nn.gnn.closest_approach`) of an
    attractive (opposite-charge) pair of each system within ``horizon``; inf for systems without one."""
    diff = data.pos[:, :, None] - data.pos[:, None, :]
    _, d2 = closest_approach(diff, data.vel[:, :, None] - data.vel[:, None, :], horizon)
    attractive = (data.charge * data.charge.transpose(1, 2)) < 0  # [S, N, N]; never i = j
    return d2[..., 0].masked_fill(~attractive, math.inf).flatten(1).amin(1).sqrt()


def encounter_breakdown(errors: Tensor, distance: Tensor) -> dict[str, float]:
    """Where the error is: the fraction of systems with an encounter (``distance`` < :data:`ENCOUNTER_DISTANCE`), the
    share of the squared error they carry, and the MSE of the other systems (``errors``, ``distance``: [S])."""
    meets = distance < ENCOUNTER_DISTANCE
    errors = errors.double()
    return {"encounter_fraction": meets.double().mean().item(), "encounter_share": error_share(errors, meets),
            "mse_without_encounters": errors[~meets].mean().item()}  # fmt: skip


def measure(model: nn.Module, data: NBodyDataset, spread: Tensor) -> dict[str, float]:
    """Test MSE, relative E(3) equivariance error (on up to 500 test systems), ms per batch of 100 and where the
    error is (:func:`encounter_breakdown`, and :func:`floor_breakdown` with the systems' orientation ``spread`` [S])."""
    model.eval()
    n = min(500, len(data))
    err = equivariance_error(
        model, data.pos[:n], "E3", "position", vectors={"vel": data.vel[:n]}, scalars={"charge": data.charge[:n]}, trials=4
    )
    batch = slice(0, min(100, len(data)))
    seconds = time_per_call(lambda: model(data.pos[batch], vel=data.vel[batch], charge=data.charge[batch]))
    errors = system_errors(model, data)
    return {"test_mse": errors.double().mean().item(), "worst5_share": worst_share(errors), "equivariance_error": err,
            "inference_ms_per_100": 1000 * seconds,
            **encounter_breakdown(errors, encounter_distance(data, NBodyConfig().horizon)),
            **floor_breakdown(errors, spread)}  # fmt: skip


def _run_dir(cfg: NBodyBenchConfig, method: str, seed: int) -> Path:
    return Path(cfg.run_dir) / method / f"seed{seed}"


def _train_one(method: str, seed: int, cfg: NBodyBenchConfig, data: dict[str, NBodyDataset], spread: Tensor, resume: bool) -> tuple[nn.Module, dict[str, Any]]:
    torch.manual_seed(seed)
    model = checkpoint.build(model_spec(method, cfg))
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(data["train"], batch_size=cfg.batch_size, shuffle=True, generator=generator)
    valid = DataLoader(data["valid"], batch_size=500)
    result = fit(model, NBodyObjective(method == "augment", cfg.input_noise), train, valid, train_config(cfg, seed), _run_dir(cfg, method, seed), resume)
    row = {"method": method, "seed": seed, "best_val_mse": result.best_val_loss, "best_epoch": result.best_epoch,
           "epochs_run": result.epochs_run, "train_time_s": result.train_time_s, "parameters": count_parameters(model)}
    row.update(measure(model, data["test"], spread))
    return model, row


def _ensemble_row(method: str, models: list[nn.Module], rows: list[dict[str, Any]], data: dict[str, NBodyDataset], spread: Tensor) -> dict[str, Any]:
    """The row of the mean of ``models`` (one method's seed models, whose rows are ``rows``): validation and test
    measured on the ensemble itself; parameters and training time are the members' sums."""
    ensemble = Ensemble(models)
    row = {"method": f"{method}-ensemble", "seed": [r["seed"] for r in rows], "best_val_mse": test_mse(ensemble, data["valid"]),
           "best_epoch": None, "epochs_run": rows[0]["epochs_run"], "train_time_s": sum(r["train_time_s"] for r in rows),
           "parameters": count_parameters(ensemble)}  # fmt: skip
    row.update(measure(ensemble, data["test"], spread))
    return row


def _summarise(rows: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    summary = []
    for method in methods:
        runs = [r for r in rows if r["method"] == method]
        if not runs:
            continue
        mse_mean, mse_std = mean_std([r["test_mse"] for r in runs])
        summary.append({
            "method": method,
            "seeds": len(runs),
            "test_mse_mean": mse_mean,
            "test_mse_std": mse_std,
            "equivariance_error_max": max(r["equivariance_error"] for r in runs),
            "worst5_share_mean": mean_std([r["worst5_share"] for r in runs])[0],
            "encounter_fraction": runs[0]["encounter_fraction"],  # of the test systems: the same for every run
            "encounter_share_mean": mean_std([r["encounter_share"] for r in runs])[0],
            "mse_without_encounters_mean": mean_std([r["mse_without_encounters"] for r in runs])[0],
            "excess_over_floor_mean": mean_std([r["excess_over_floor"] for r in runs])[0],
            "orientation_dependent_share_mean": mean_std([r["orientation_dependent_share"] for r in runs])[0],
            "parameters": runs[0]["parameters"],
            "train_time_s_mean": mean_std([r["train_time_s"] for r in runs])[0],
            "inference_ms_per_100": mean_std([r["inference_ms_per_100"] for r in runs])[0],
            "epochs": runs[0]["epochs_run"],
        })
    return summary


def _markdown(cfg: NBodyBenchConfig, summary: list[dict[str, Any]], floor: dict[str, Any], complete: bool) -> str:
    status = "complete" if complete else "PARTIAL (still running or interrupted; rows so far)"
    cols = ["method", "seeds", "test_mse_mean", "test_mse_std", "worst5_share_mean", "encounter_share_mean",
            "mse_without_encounters_mean", "excess_over_floor_mean", "orientation_dependent_share_mean", "equivariance_error_max", "parameters",
            "train_time_s_mean", "inference_ms_per_100", "epochs"]
    published = "\n".join(f"| {k} | {v} |" for k, v in PUBLISHED.items())
    ensemble_note = ""
    if any(row["method"].endswith("-ensemble") for row in summary):
        ensemble_note = (" A method `<m>-ensemble` is the mean of m's seed models, measured as one model (its parameters "
                         "and training time: the members' sums).")
    return (
        f"# N-body (5 charged particles, frame 30 → 40): `{cfg.label}` configuration — {status}\n\n"
        f"Data: {cfg.source} ({cfg.n_train}/{cfg.n_valid}/{cfg.n_test} systems). Test MSE at the best-validation "
        f"epoch; worst5_share = share of the test squared error carried by the worst 5% of the systems; "
        f"encounter_share = share carried by the systems in which two opposite charges come within {ENCOUNTER_DISTANCE} "
        f"at constant velocity over the horizon ({summary[0]['encounter_fraction']:.1%} of the test systems), "
        f"mse_without_encounters = the MSE of the others; equivariance "
        f"error = max over runs of ‖f(g·x) − g·f(x)‖/‖g·f(x)‖ over random E(3) elements (float32).{ensemble_note}\n\n"
        f"Orientation floor: the simulator clips each force *component* in its own axes, so a close encounter's "
        f"outcome depends on the system's orientation ({floor['systems_affected']:.1%} of the test systems); the "
        f"lowest test MSE any exactly E(3)-equivariant model can reach is **{floor['test_mse']:.5f}** (the variance "
        f"of each test system's re-simulated target over {floor['orientations']} random O(3) orientations; "
        f"`orientation_floor` in the JSON); excess_over_floor = test MSE minus that floor, orientation_dependent_share = "
        f"the share of the squared error in those systems.\n\n"
        + markdown_table(summary, cols)
        + "\n\nPublished test MSE on the same protocol (for comparison):\n\n| model | MSE |\n|---|---|\n" + published + "\n"
    )


def run(cfg: NBodyBenchConfig, resume: bool = False, finished_only: bool = False) -> dict[str, Any]:
    """Train and evaluate every method × seed; write results (as they come) and the checkpoint of the best
    (by validation MSE) model of :data:`SAVED_METHODS`. ``finished_only``: train nothing, report the runs of
    ``cfg.run_dir`` that have finished (results marked PARTIAL while any is missing; ensembles only of methods
    with every seed) — a snapshot of trainings still going on elsewhere."""
    start = time.perf_counter()
    data = _datasets(cfg)
    test = data["test"]
    spread = orientation_spread(test.pos, test.vel, test.charge, _data_config(cfg), orientations=FLOOR_ORIENTATIONS)
    floor = orientation_floor(spread)
    rows: list[dict[str, Any]] = []
    best: float | None = None
    ensembles = cfg.ensemble and len(cfg.seeds) > 1
    total = len(cfg.methods) * (len(cfg.seeds) + ensembles)
    models: dict[str, list[nn.Module]] = {method: [] for method in cfg.methods}
    for seed in cfg.seeds:  # seed-major: every method's first seed is done before any second seed
        for method in cfg.methods:
            if finished_only and not (_run_dir(cfg, method, seed) / "result.json").is_file():
                continue
            model, row = _train_one(method, seed, cfg, data, spread, resume or finished_only)
            rows.append(row)
            if ensembles:
                models[method].append(model)
            if method in SAVED_METHODS and (best is None or row["best_val_mse"] < best):
                best = row["best_val_mse"]  # saved as it improves, so an interrupted run still has its checkpoint
                checkpoint.save(cfg.checkpoint, model, meta={"benchmark": "nbody", "row": row, "config": asdict(cfg)})
            payload = _payload(cfg, rows, best, floor, time.perf_counter() - start, complete=len(rows) == total)
            write_results(cfg.results, payload, _markdown(cfg, payload["summary"], floor, payload["complete"]))
    for method in [m for m in cfg.methods if len(models[m]) == len(cfg.seeds)] if ensembles else []:
        rows.append(_ensemble_row(method, models[method], [r for r in rows if r["method"] == method], data, spread))
        payload = _payload(cfg, rows, best, floor, time.perf_counter() - start, complete=len(rows) == total)
        write_results(cfg.results, payload, _markdown(cfg, payload["summary"], floor, payload["complete"]))
    return payload


def _payload(cfg: NBodyBenchConfig, rows: list[dict[str, Any]], best: Any, floor: dict[str, Any], wall: float, complete: bool) -> dict[str, Any]:
    return {
        "benchmark": "nbody",
        "complete": complete,
        "checkpoint": cfg.checkpoint if best is not None else None,
        "config": asdict(cfg),
        "orientation_floor": floor,
        "summary": _summarise(rows, cfg.methods + [f"{m}-ensemble" for m in cfg.methods]),
        "runs": rows,
        "published": PUBLISHED,
        "provenance": provenance(wall, cfg.seeds),
    }


def evaluate_checkpoint(path: str | Path, data_dir: str | Path, orientations: int | None = None) -> dict[str, Any]:
    """Test MSE of a saved model on the test split in ``data_dir``: the published ``loc_test_*.npy``
    layout, or exactly one generated cache file ``nbody_test_<hash>.npz`` (read as it is). ``orientations``
    re-sets the frame-averaged model's orientations per frame (see FrameAveraged) for this evaluation."""
    model, _ = checkpoint.load(path)
    if orientations is not None:
        averaged = [m for m in model.modules() if isinstance(m, FrameAveraged)]
        if not averaged:
            raise ValueError(f"orientations apply to frame-averaged models; {path} holds none")
        for module in averaged:
            module.set_orientations(orientations)
    data_dir = Path(data_dir)
    caches = sorted(data_dir.glob("nbody_test_*.npz"))
    if any(data_dir.glob("loc_test_*.npy")):
        data, source = NBodyDataset.from_published(data_dir, "test"), "published"
    elif len(caches) == 1:
        data, source = NBodyDataset.from_file(caches[0]), str(caches[0])
    elif caches:
        raise ValueError(f"{data_dir} holds several N-body test caches {[c.name for c in caches]}: point --data-dir at a folder with one")
    else:
        raise FileNotFoundError(
            f"no N-body test split in {data_dir}: expected a generated cache (nbody_test_<hash>.npz, made by "
            "`python datasets/nbody/generate.py --root DIR`) or the published loc/vel/charges_test_charged5_initvel1small.npy files"
        )
    extra = {} if orientations is None else {"orientations": orientations}
    return {"test_mse": test_mse(model, data), "n": len(data), "source": source, "checkpoint": str(path), **extra}
