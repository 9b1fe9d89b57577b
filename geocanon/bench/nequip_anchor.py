"""NequIP (Batzner et al. 2022; the ``nequip`` 0.19 package) as the equivariant anchor of the molecules benchmark.

NequIP is trained from scratch by its own ``nequip-train`` (Hydra + Lightning), in a subprocess, on the
benchmark's frames with the benchmark's budget, and then measured exactly like the other methods:

* :func:`write_frames` writes the benchmark's frames (e.g. the first ``n_train`` of the train split)
  as extxyz (energy in ``Atoms.info``, forces in ``Atoms.arrays``), which nequip's ``ASEDataModule`` reads;
* :func:`write_config` writes the Hydra config: a small, CPU-sized NequIP model (:class:`NequIPConfig`),
  AdamW with the benchmark's learning rate and cosine schedule, the benchmark's loss
  ``energy_weight·MSE(E) + MSE(F)``, EMA weights (NequIP's standard training module), checkpoints of the
  best validation epoch and of the last epoch;
* :func:`train` runs ``nequip-train`` (threads from the caller; resumable from ``last.ckpt``; timed);
* :func:`load` turns the best checkpoint (EMA weights) into a :class:`NequIPPotential`, which has the
  interface of :class:`~geocanon.nn.energy.MolecularPotential`, so the benchmark's ``measure`` applies
  unchanged (test errors, E(3) equivariance of the forces, inference time);
* :func:`train_and_measure` does all of it and returns the benchmark row;
* :func:`compile_model` and :func:`load_compiled` give the same model in NequIP's deployment form, compiled ahead of
  time by ``nequip-compile`` (AOTInductor, the form its ASE calculator and LAMMPS plugin run), for timing: eager
  NequIP spends most of its time one structure at a time on per-operation overhead that compilation removes.

``nequip`` is an optional dependency (``pip install 'geocanon[nequip]'``): nothing here imports it at
module import time.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from ..data.molecules import MoleculeDataset
from ..validation import check_dense_batch
from .common import count_parameters

__all__ = [
    "NEQUIP_MISSING",
    "NequIPConfig",
    "NequIPPotential",
    "NequIPTrainResult",
    "compile_model",
    "compiled_for_timing",
    "load",
    "load_compiled",
    "require_nequip",
    "train",
    "train_and_measure",
    "write_config",
    "write_frames",
]

NEQUIP_MISSING = "nequip is not installed: pip install 'geocanon[nequip]' (nequip>=0.19,<0.20)"

#: the validation metric nequip logs for its (first) validation set: the weighted sum of ``val_metrics``
_MONITOR = "val0_epoch/weighted_sum"


def require_nequip() -> None:
    """Raise ImportError with the install command when ``nequip`` is not importable."""
    if importlib.util.find_spec("nequip") is None:
        raise ImportError(NEQUIP_MISSING)


@dataclass
class NequIPConfig:
    """A NequIP run: model size (small enough for a CPU) and the benchmark's training budget.

    The default model (l_max 1, 3 interaction layers, 24 features per irrep, radial MLP 1×32, 8 Bessel
    functions, no odd-parity features) has 71.5k parameters on three elements (H, C, O), about the size of
    the benchmark's other models; its energy is E(3)-invariant (NequIP's output is a ``0e`` scalar), its
    forces E(3)-equivariant. Training runs on one device of ``accelerator``.
    """

    # model
    r_max: float = 5.0  # Å, cutoff of the radius graph
    l_max: int = 1
    num_layers: int = 3
    num_features: int = 24  # multiplicity of every irrep of the hidden features
    radial_mlp_width: int = 32
    radial_mlp_depth: int = 1
    num_bessels: int = 8
    parity: bool = False  # only natural-parity features (0e, 1o): cheaper, still E(3)-equivariant
    model_dtype: str = "float32"
    # training (the benchmark's budget and optimiser)
    seed: int = 0
    max_epochs: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.0
    scheduler: str = "cosine"  # "cosine" (over max_epochs) or "none"
    energy_weight: float = 0.01  # loss = energy_weight · MSE(total energy) + MSE(force components)
    check_val_every_n_epoch: int = 5
    patience: int | None = None  # early-stopping patience in validation checks (None: off)
    ema_decay: float = 0.999
    accelerator: str = "cpu"

    def __post_init__(self) -> None:
        if self.scheduler not in ("cosine", "none"):
            raise ValueError(f"scheduler must be 'cosine' or 'none', got {self.scheduler!r}")
        if self.model_dtype not in ("float32", "float64"):
            raise ValueError(f"model_dtype must be 'float32' or 'float64', got {self.model_dtype!r}")


@dataclass
class NequIPTrainResult:
    """What :func:`train` returns (and stores in ``run_dir/result.json``).

    ``best_val_loss`` is nequip's monitored validation metric, the mean of the total-energy MAE (eV) and the
    force MAE (eV/Å), not the loss of the geocanon harness; ``best_epoch`` counts from 0.
    """

    best_val_loss: float
    best_epoch: int
    epochs_run: int
    train_time_s: float
    best_checkpoint: str


def _symbols(species: list[int]) -> list[str]:
    from ase.data import chemical_symbols

    return [chemical_symbols[z] for z in species]


def write_frames(path: str | Path, data: MoleculeDataset) -> Path:
    """Write the labelled frames of ``data`` (padding dropped) as extxyz: energy (eV) in ``info``, forces (eV/Å) in ``arrays``."""
    import ase.io
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    data.require_labels()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(len(data)):
        keep = data.mask[i]
        atoms = Atoms(numbers=data.numbers[i][keep].numpy(), positions=data.pos[i][keep].double().numpy())
        atoms.calc = SinglePointCalculator(atoms, energy=float(data.energy[i]), forces=data.forces[i][keep].double().numpy())
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return path


def write_config(path: str | Path, settings: NequIPConfig, species: list[int], train_file: str | Path, valid_file: str | Path,
                 run_dir: str | Path) -> Path:
    """Write the ``nequip-train`` Hydra config of ``settings`` to ``path`` (YAML) and return it.

    Args:
        path: the config file to write (``nequip-train -cp <its folder> -cn <its stem>``).
        settings: model and training settings.
        species: atomic numbers of the model's atom types (e.g. [1, 6, 8]; types are their symbols).
        train_file, valid_file: labelled extxyz files (see :func:`write_frames`).
        run_dir: folder of nequip's outputs (Hydra files, ``checkpoints/``, CSV ``logs/``).
    """
    path, run_dir = Path(path).resolve(), Path(run_dir).resolve()
    types = _symbols(species)
    loader = {"_target_": "torch.utils.data.DataLoader", "batch_size": settings.batch_size}
    metrics = {"_target_": "nequip.train.EnergyForceMetrics", "coeffs": {"total_energy_mae": 1.0, "forces_mae": 1.0}}
    checkpoints = str(run_dir / "checkpoints")
    config: dict[str, Any] = {
        "run": ["train"],
        "hydra": {"run": {"dir": str(run_dir)}},
        "data": {
            "_target_": "nequip.data.datamodule.ASEDataModule",
            "seed": settings.seed,
            "train_file_path": str(Path(train_file).resolve()),
            "val_file_path": str(Path(valid_file).resolve()),
            "transforms": [
                {"_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper", "model_type_names": types,
                 "chemical_species_to_atom_type_map": {t: t for t in types}},
                {"_target_": "nequip.data.transforms.NeighborListTransform", "r_max": settings.r_max},
            ],
            "train_dataloader": {**loader, "shuffle": True},
            "val_dataloader": {**loader, "batch_size": 200},
            "stats_manager": {"_target_": "nequip.data.CommonDataStatisticsManager", "type_names": types},
        },
        "trainer": {
            "_target_": "lightning.Trainer",
            "max_epochs": settings.max_epochs,
            "accelerator": settings.accelerator,
            "devices": 1,
            "check_val_every_n_epoch": settings.check_val_every_n_epoch,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 10,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": str(run_dir), "name": "logs", "version": 0},
            # Checkpoints are written at the end of a training epoch: during validation nequip's EMA module holds the
            # EMA weights in the model, so one written then (Lightning's default unless validating every epoch) is
            # unloadable. The best one is considered only in epochs that validate.
            "callbacks": [
                {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint", "dirpath": checkpoints, "filename": "best",
                 "monitor": _MONITOR, "mode": "min", "save_top_k": 1, "enable_version_counter": False,
                 "save_on_train_epoch_end": True, "every_n_epochs": settings.check_val_every_n_epoch},
                # Lightning's save_last only writes when the monitored metric improves: a second callback keeps the latest epoch
                {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint", "dirpath": checkpoints, "filename": "last",
                 "save_top_k": 1, "enable_version_counter": False, "save_on_train_epoch_end": True},
            ],
        },
        "training_module": {
            "_target_": "nequip.train.EMALightningModule",
            "ema_decay": settings.ema_decay,
            "loss": {"_target_": "nequip.train.EnergyForceLoss", "per_atom_energy": False,
                     "coeffs": {"total_energy": settings.energy_weight, "forces": 1.0}},
            "val_metrics": metrics,
            "optimizer": {"_target_": "torch.optim.AdamW", "lr": settings.lr, "weight_decay": settings.weight_decay},
            "model": {
                "_target_": "nequip.model.NequIPGNNModel",
                "seed": settings.seed,
                "model_dtype": settings.model_dtype,
                "type_names": types,
                "r_max": settings.r_max,
                "l_max": settings.l_max,
                "parity": settings.parity,
                "num_layers": settings.num_layers,
                "num_features": settings.num_features,
                "radial_mlp_depth": settings.radial_mlp_depth,
                "radial_mlp_width": settings.radial_mlp_width,
                "num_bessels": settings.num_bessels,
                "avg_num_neighbors": "${training_data_stats:num_neighbors_mean}",
                "per_type_energy_shifts": "${training_data_stats:per_atom_energy_mean}",
                "per_type_energy_scales": "${training_data_stats:forces_rms}",
            },
        },
    }
    if settings.patience is not None:
        config["trainer"]["callbacks"].append(
            {"_target_": "lightning.pytorch.callbacks.EarlyStopping", "monitor": _MONITOR, "mode": "min", "patience": settings.patience})
    if settings.scheduler == "cosine":
        config["training_module"]["lr_scheduler"] = {
            "scheduler": {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "T_max": max(settings.max_epochs, 1)},
            "interval": "epoch",
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _checkpoint_summary(last: Path) -> tuple[str, float, int, int]:
    """Best checkpoint path, its monitored score, its epoch and the epochs run, from ``last.ckpt``."""
    state = torch.load(last, map_location="cpu", weights_only=False)
    monitored = [s for key, s in state.get("callbacks", {}).items() if key.startswith("ModelCheckpoint") and _MONITOR in key]
    if not monitored or not monitored[0].get("best_model_path"):
        raise RuntimeError(f"{last} records no best checkpoint for {_MONITOR}: did validation run (check_val_every_n_epoch <= max_epochs)?")
    best_path = monitored[0]["best_model_path"]
    best_epoch = int(torch.load(best_path, map_location="cpu", weights_only=False)["epoch"])
    return best_path, float(monitored[0]["best_model_score"]), best_epoch, int(state["epoch"]) + 1


def _stored_result(run_dir: Path) -> NequIPTrainResult:
    """What the finished :func:`train` run in ``run_dir`` stored in its ``result.json``."""
    return NequIPTrainResult(**json.loads((run_dir / "result.json").read_text()))


def _run_logged(command: list[str], log: Path, cwd: Path, threads: int | None, append: bool) -> int:
    """Run one of nequip's commands with ``threads`` intra-op threads (default: this process's), its output into ``log``
    (appended or overwritten), in ``cwd``; its exit status."""
    n = str(threads or torch.get_num_threads())
    env = {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "HYDRA_FULL_ERROR": "1"}
    with log.open("a" if append else "w") as out:
        return subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, check=False).returncode


def _failure(name: str, returncode: int, log: Path) -> RuntimeError:
    """The error of a failed nequip command, with the last lines of its log."""
    tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
    return RuntimeError(f"{name} failed (exit {returncode}); last lines of {log}:\n{tail}")


def train(settings: NequIPConfig, species: list[int], train_file: str | Path, valid_file: str | Path, run_dir: str | Path,
          resume: bool = False, threads: int | None = None) -> NequIPTrainResult:
    """Train NequIP with ``nequip-train`` in a subprocess; its output goes to ``run_dir/nequip-train.log``.

    Args:
        settings, species, train_file, valid_file: see :func:`write_config` (written to ``run_dir/config.yaml``).
        run_dir: folder of the run (config, Hydra files, checkpoints, logs, ``result.json``).
        resume: continue from ``run_dir/checkpoints/last.ckpt`` if present; a finished run (``result.json``
            present) is not trained again.
        threads: intra-op threads of the subprocess (OMP_NUM_THREADS / MKL_NUM_THREADS); default: this
            process's ``torch.get_num_threads()``.

    ``train_time_s`` is the wall time of the subprocess(es): training plus nequip's start-up, data loading
    and training-set statistics (a few seconds).
    """
    require_nequip()
    run_dir = Path(run_dir).resolve()
    result_file = run_dir / "result.json"
    if resume and result_file.is_file():
        return _stored_result(run_dir)
    config = write_config(run_dir / "config.yaml", settings, species, train_file, valid_file, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    command = [sys.executable, "-m", "nequip.scripts.train", "-cp", str(config.parent), "-cn", config.stem]
    if resume and last.is_file():
        command.append(f"++ckpt_path={last}")
    time_file = run_dir / "train_time.json"
    previous = json.loads(time_file.read_text())["train_time_s"] if resume and time_file.is_file() else 0.0
    log = run_dir / "nequip-train.log"
    start = time.perf_counter()
    returncode = _run_logged(command, log, run_dir, threads, append=True)
    elapsed = previous + time.perf_counter() - start
    time_file.write_text(json.dumps({"train_time_s": elapsed}))
    if returncode != 0:
        raise _failure("nequip-train", returncode, log)
    best_path, score, best_epoch, epochs = _checkpoint_summary(last)
    result = NequIPTrainResult(best_val_loss=score, best_epoch=best_epoch, epochs_run=epochs, train_time_s=elapsed, best_checkpoint=best_path)
    result_file.write_text(json.dumps(asdict(result), indent=2))
    return result


@contextlib.contextmanager
def _process_state_kept() -> Iterator[None]:
    """Undo what nequip's global-state set-up changes in this process: the default dtype (nequip sets
    float64), e3nn's optimisation defaults and the random generators (it seeds them with 123)."""
    import e3nn
    from lightning.pytorch.utilities.seed import isolate_rng

    dtype, e3nn_defaults = torch.get_default_dtype(), e3nn.get_optimization_defaults()
    try:
        with isolate_rng():
            yield
    finally:
        torch.set_default_dtype(dtype)
        e3nn.set_optimization_defaults(**e3nn_defaults)


class NequIPPotential(nn.Module):
    """A NequIP model behind the interface of :class:`~geocanon.nn.energy.MolecularPotential`.

    Builds the radius graph (all atom pairs of a molecule closer than ``r_max``) of dense padded
    molecules and calls the model in nequip's conventions (positions in float64, the model in its own
    ``model_dtype``); forces are the model's own ``-∂E/∂x``.

    Args:
        model: a nequip ``GraphModel`` (energies and forces), e.g. from :func:`load`.
        species: atomic numbers of the model's atom types, in type order.
        r_max: the model's cutoff in Å.

    Shapes: ``pos`` [B, N, 3] Å, ``numbers`` [B, N] int (0 = padding), optional ``mask`` [B, N] ->
    ``(energy [B] eV, forces [B, N, 3] eV/Å)`` in the dtype of ``pos`` (forces of padding atoms are 0).
    """

    def __init__(self, model: nn.Module, species: list[int], r_max: float) -> None:
        super().__init__()
        self.model = model
        self.species = [int(z) for z in species]
        self.r_max = float(r_max)

    def _graph(self, pos: Tensor, numbers: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """nequip's AtomicDataDict of the real atoms: positions [M, 3] float64, atom types [M], batch [M],
        atoms per molecule [B] and directed edges [2, E] within ``r_max``."""
        from nequip.data import AtomicDataDict

        table = torch.as_tensor(self.species, device=numbers.device)
        hit = numbers[mask][:, None] == table  # [M, T]
        if not bool(hit.any(-1).all()):
            unknown = sorted(set(numbers[mask][~hit.any(-1)].tolist()))
            raise ValueError(f"atomic numbers {unknown} are not among the model's species {self.species}")
        index = torch.full(numbers.shape, -1, dtype=torch.long, device=numbers.device)
        index[mask] = torch.arange(int(mask.sum()), device=numbers.device)
        with torch.no_grad():
            near = torch.cdist(pos, pos) < self.r_max  # [B, N, N]
        near &= mask[:, :, None] & mask[:, None, :] & ~torch.eye(pos.shape[1], dtype=torch.bool, device=pos.device)
        b, i, j = near.nonzero(as_tuple=True)
        return {
            AtomicDataDict.POSITIONS_KEY: pos[mask].to(torch.float64),
            AtomicDataDict.ATOM_TYPE_KEY: hit.long().argmax(-1),
            AtomicDataDict.BATCH_KEY: mask.nonzero(as_tuple=True)[0],
            AtomicDataDict.NUM_NODES_KEY: mask.sum(1),
            AtomicDataDict.EDGE_INDEX_KEY: torch.stack([index[b, i], index[b, j]]),
        }

    def forward(self, pos: Tensor, numbers: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(energy [B], forces [B, N, 3])`` for ``pos`` [B, N, 3] and ``numbers`` [B, N]."""
        from nequip.data import AtomicDataDict

        if numbers.shape != pos.shape[:2]:
            raise ValueError(f"numbers must be [B, N] = {list(pos.shape[:2])}, got {list(numbers.shape)}")
        mask, _ = check_dense_batch(pos, numbers > 0 if mask is None else mask)  # shape, empty molecules, NaN/Inf
        with torch.enable_grad():  # nequip's forces are an autograd derivative
            out = self.model(self._graph(pos, numbers, mask))
        energy = out[AtomicDataDict.TOTAL_ENERGY_KEY].reshape(-1).to(pos.dtype)
        forces = pos.new_zeros(pos.shape)
        forces[mask] = out[AtomicDataDict.FORCE_KEY].to(pos.dtype)
        return (energy, forces) if torch.is_grad_enabled() else (energy.detach(), forces.detach())


def load(checkpoint: str | Path, species: list[int]) -> NequIPPotential:
    """The EMA model of a ``nequip-train`` checkpoint as a :class:`NequIPPotential` (eval mode).

    ``species`` are the atomic numbers of the model's types (checked against the checkpoint's type names).
    """
    require_nequip()
    from nequip.model.saved_models.load_utils import load_saved_model
    from nequip.nn.graph_model import R_MAX_KEY, TYPE_NAMES_KEY
    from nequip.utils.global_state import set_global_state

    with _process_state_kept(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*set_fusion_strategy", category=DeprecationWarning)  # nequip's, harmless
        set_global_state()
        model = load_saved_model(str(checkpoint))  # the GraphModel, with the EMA weights
    types = model.metadata[TYPE_NAMES_KEY].split(" ")
    if types != _symbols(species):
        raise ValueError(f"{checkpoint} has atom types {types}, expected {_symbols(species)} (species {species})")
    return NequIPPotential(model, species, float(model.metadata[R_MAX_KEY])).eval()


#: what the compiled model takes and gives: one graph of any number of molecules (no batch input), per-atom
#: energies (summed per molecule by :class:`_PerMoleculeEnergies`) and forces. nequip-compile's "ase" and "batch"
#: targets also ask for the stress, which is NaN without a cell, and the compile-time check of eager against
#: compiled outputs then fails.
_COMPILED_INPUTS = ("pos", "edge_index", "atom_types")
_COMPILED_OUTPUTS = ("atomic_energy", "forces")


def compile_model(checkpoint: str | Path, path: str | Path, threads: int | None = None) -> Path:
    """Compile a ``nequip-train`` checkpoint for the CPU with ``nequip-compile --mode aotinductor`` (a subprocess, about
    a minute; its output goes to ``<path>.log``) into ``path``, which must end in ``.nequip.pt2``.

    The compiled model takes positions, edges and atom types of one graph (any number of molecules) and returns
    per-atom energies and forces (see :func:`load_compiled`). Needs a C++ compiler (AOTInductor builds a shared library).
    """
    require_nequip()
    path = Path(path).resolve()
    if not path.name.endswith(".nequip.pt2"):
        raise ValueError(f"nequip-compile writes AOTInductor models to files ending in .nequip.pt2, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "nequip.scripts.compile", str(Path(checkpoint).resolve()), str(path), "--mode", "aotinductor",
               "--device", "cpu", "--input-fields", *_COMPILED_INPUTS, "--output-fields", *_COMPILED_OUTPUTS]
    log = path.with_name(path.name + ".log")
    returncode = _run_logged(command, log, path.parent, threads, append=False)
    if returncode != 0 or not path.is_file():
        raise _failure("nequip-compile", returncode, log)
    return path


class _PerMoleculeEnergies(nn.Module):
    """A compiled NequIP model (per-atom energies and forces of one graph) as a graph model giving each molecule's
    total energy: the sum of its atoms' energies, the molecules being disconnected in the radius graph."""

    def __init__(self, compiled: nn.Module) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, graph: dict[str, Tensor]) -> dict[str, Tensor]:
        from nequip.data import AtomicDataDict

        out = self.compiled(graph)
        atomic = out[AtomicDataDict.PER_ATOM_ENERGY_KEY].reshape(-1)
        molecules = len(graph[AtomicDataDict.NUM_NODES_KEY])
        total = atomic.new_zeros(molecules).index_add(0, graph[AtomicDataDict.BATCH_KEY], atomic)
        return {AtomicDataDict.TOTAL_ENERGY_KEY: total, AtomicDataDict.FORCE_KEY: out[AtomicDataDict.FORCE_KEY]}


def load_compiled(path: str | Path, species: list[int]) -> NequIPPotential:
    """The model compiled by :func:`compile_model` as a :class:`NequIPPotential` (energies and forces of dense
    padded molecules, as the eager model from :func:`load`, to float32 rounding)."""
    require_nequip()
    from nequip.model.inference_models.compiled import load_compiled_model
    from nequip.nn.graph_model import R_MAX_KEY, TYPE_NAMES_KEY

    with _process_state_kept():
        compiled, metadata = load_compiled_model(str(path), "cpu", list(_COMPILED_INPUTS), list(_COMPILED_OUTPUTS))
    if metadata[TYPE_NAMES_KEY] != _symbols(species):
        raise ValueError(f"{path} has atom types {metadata[TYPE_NAMES_KEY]}, expected {_symbols(species)} (species {species})")
    return NequIPPotential(_PerMoleculeEnergies(compiled), species, float(metadata[R_MAX_KEY])).eval()


def compiled_for_timing(run_dir: str | Path, species: list[int], resume: bool = False) -> NequIPPotential:
    """The best model of the finished :func:`train` run in ``run_dir``, compiled (:func:`compile_model`) into
    ``run_dir/compiled/best.nequip.pt2`` and loaded; with ``resume`` an existing compiled file is reused."""
    path = Path(run_dir) / "compiled" / "best.nequip.pt2"
    if not (resume and path.is_file()):
        compile_model(_stored_result(Path(run_dir)).best_checkpoint, path)
    return load_compiled(path, species)


def train_and_measure(settings: NequIPConfig, data: dict[str, MoleculeDataset], run_dir: str | Path, resume: bool = False,
                      threads: int | None = None) -> tuple[NequIPPotential, dict[str, Any]]:
    """Train NequIP on ``data["train"]`` (validated on ``data["valid"]``) and measure it on ``data["test"]``.

    Returns the model and the benchmark row: ``best_val_loss``, ``best_epoch``, ``epochs_run``,
    ``train_time_s``, ``parameters`` and what :func:`geocanon.bench.molecules.measure` reports under E(3)
    (``energy_mae_mev``, ``force_mae_mev_per_a``, ``n``, ``force_equivariance_error``,
    ``energy_invariance_error``, ``inference_ms_per_structure``, ``frames_per_structure``, ``conditioning_pca_gap``).
    """
    from .molecules import measure

    require_nequip()
    run_dir = Path(run_dir)
    species = data["train"].species
    files = {split: write_frames(run_dir / "data" / f"{split}.extxyz", data[split]) for split in ("train", "valid")}
    result = train(settings, species, files["train"], files["valid"], run_dir, resume=resume, threads=threads)
    model = load(result.best_checkpoint, species)
    row = {"best_val_loss": result.best_val_loss, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
           "train_time_s": result.train_time_s, "parameters": count_parameters(model)}
    row.update(measure(model, data["test"], group="E3"))
    return model, row
