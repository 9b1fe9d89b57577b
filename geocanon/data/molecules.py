"""Molecules with energies and forces: readers (ASE formats, rMD17 ``.npz``) and an xTB MD generator.

Reading. :func:`read_molecules` reads anything ``ase.io.read`` reads (xyz, extxyz, sdf, pdb, ASE
databases ``.db`` ...) and the rMD17 ``.npz`` layout (``nuclear_charges`` [N], ``coords`` [F, N, 3],
``energies`` [F], ``forces`` [F, N, 3], in kcal/mol and kcal/mol/Å, converted here). Everything is
held in eV and Å as a :class:`MoleculeDataset` of dense, padded tensors:

* ``numbers`` [F, N] int64 atomic numbers (0 = padding), ``mask`` [F, N] bool;
* ``pos`` [F, N, 3] Å; ``energy`` [F] eV and ``forces`` [F, N, 3] eV/Å when the file has them.

Generating. :func:`generate_molecule` runs Langevin MD (ASE) with GFN2-xTB energies and forces from
``tblite`` and appends every ``stride``-th step to an extxyz file; the MD state (positions, momenta,
random-generator state) is checkpointed after every chunk, so an interrupted run resumes where it
stopped and, single-threaded (``OMP_NUM_THREADS=1``), writes the same frames bit for bit as an
uninterrupted one. When all frames exist they are split (fixed seed) into train / valid / test files.
File names carry a hash of every setting that changes the data (and of the start geometry and the
procedure version); the meta file holds each split file's SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "KCAL_MOL_TO_EV",
    "MOLECULES",
    "SPLITS",
    "MDConfig",
    "MoleculeDataset",
    "autocorrelation",
    "file_sha256",
    "from_atoms",
    "generate_molecule",
    "molecule_paths",
    "one_hot_species",
    "read_molecules",
    "read_rmd17",
    "start_geometry",
]

#: 1 kcal/mol in eV (rMD17 units)
KCAL_MOL_TO_EV = 0.0433641043

#: molecules the generator knows: G2 name in ``ase.build.molecule`` or a SMILES string for RDKit.
#: Malonaldehyde is the intramolecularly H-bonded cis-enol form of MD17.
MOLECULES: dict[str, dict[str, str]] = {
    "ethanol": {"g2": "CH3CH2OH"},
    "malonaldehyde": {"smiles": r"O=C/C=C\O"},
    "aspirin": {"smiles": "CC(=O)Oc1ccccc1C(=O)O"},
}

SPLITS = ("train", "valid", "test")


class MoleculeDataset(Dataset):
    """Padded molecules (eV, Å). Items are dicts of ``pos`` [N, 3], ``numbers`` [N], ``mask`` [N]
    and, when present, ``energy`` [] and ``forces`` [N, 3].

    Args:
        numbers: [F, N] int64 atomic numbers, 0 for padding.
        pos: [F, N, 3] positions in Å.
        energy: [F] energies in eV, or None.
        forces: [F, N, 3] forces in eV/Å, or None.
        source: where the data came from (for messages).
    """

    def __init__(self, numbers: Tensor, pos: Tensor, energy: Tensor | None = None, forces: Tensor | None = None, source: str = "<memory>") -> None:
        if numbers.ndim != 2 or pos.shape != (*numbers.shape, 3):
            raise ValueError(f"{source}: numbers must be [F, N] and pos [F, N, 3], got {list(numbers.shape)} and {list(pos.shape)}")
        if energy is not None and energy.shape != numbers.shape[:1]:
            raise ValueError(f"{source}: energy must be [F] = [{numbers.shape[0]}], got {list(energy.shape)}")
        if forces is not None and forces.shape != pos.shape:
            raise ValueError(f"{source}: forces must have the shape of pos {list(pos.shape)}, got {list(forces.shape)}")
        for name, value in (("positions", pos), ("energies", energy), ("forces", forces)):
            if value is not None and not torch.isfinite(value).all():
                raise ValueError(f"{source}: {name} contain NaN or Inf")
        self.numbers = numbers.long()
        self.mask = self.numbers > 0
        self.pos = pos
        self.energy = energy
        self.forces = forces
        self.source = source

    def __len__(self) -> int:
        return self.numbers.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = {"pos": self.pos[index], "numbers": self.numbers[index], "mask": self.mask[index]}
        if self.energy is not None:
            item["energy"] = self.energy[index]
        if self.forces is not None:
            item["forces"] = self.forces[index]
        return item

    @property
    def species(self) -> list[int]:
        """Sorted distinct atomic numbers present."""
        return sorted(int(z) for z in torch.unique(self.numbers[self.mask]))

    def subset(self, index: Tensor | Sequence[int]) -> MoleculeDataset:
        """The frames ``index`` as a new data set."""
        index = torch.as_tensor(index, dtype=torch.long)
        pick = (lambda x: None if x is None else x[index])
        return MoleculeDataset(self.numbers[index], self.pos[index], pick(self.energy), pick(self.forces), self.source)

    def to(self, dtype: torch.dtype) -> MoleculeDataset:
        """Positions, energies and forces cast to ``dtype``."""
        cast = (lambda x: None if x is None else x.to(dtype))
        return MoleculeDataset(self.numbers, self.pos.to(dtype), cast(self.energy), cast(self.forces), self.source)

    def require_labels(self) -> MoleculeDataset:
        """Return self, or raise ValueError naming the file when energies or forces are missing."""
        missing = [name for name, x in (("energies", self.energy), ("forces", self.forces)) if x is None]
        if missing:
            raise ValueError(f"{self.source} has no {' and no '.join(missing)}; training and evaluation need both")
        return self


def one_hot_species(numbers: Tensor, species: Sequence[int], dtype: torch.dtype | None = None) -> Tensor:
    """Atomic numbers [..., N] (0 = padding) -> one-hot [..., N, len(species)] (padding rows all zero).

    Raises ValueError for an element not in ``species`` (the model was not trained on it).
    """
    table = torch.as_tensor(list(species), dtype=torch.long, device=numbers.device)
    hit = numbers[..., None] == table  # [..., N, T]
    unknown = (numbers > 0) & ~hit.any(-1)
    if unknown.any():
        raise ValueError(f"atomic numbers {sorted(set(numbers[unknown].tolist()))} are not among the model's species {list(species)}")
    return hit.to(dtype or torch.get_default_dtype())


def _pad(frames: list[np.ndarray], n_max: int, fill: float = 0.0) -> np.ndarray:
    out = np.full((len(frames), n_max, *frames[0].shape[1:]), fill, dtype=frames[0].dtype)
    for i, f in enumerate(frames):
        out[i, : len(f)] = f
    return out


def from_atoms(frames: Sequence[Any], source: str = "<atoms>") -> MoleculeDataset:
    """Build a :class:`MoleculeDataset` from ASE ``Atoms`` objects (energies/forces from their calculators).

    Energies and forces are kept only when every frame has them (a calculator with results, as
    ``ase.io.read`` attaches for extxyz / ASE databases); otherwise they are None.
    """
    from ase.calculators.calculator import PropertyNotImplementedError

    if len(frames) == 0:
        raise ValueError(f"{source} holds no structures")
    numbers, pos, energy, forces = [], [], [], []
    for i, atoms in enumerate(frames):
        if len(atoms) == 0:
            raise ValueError(f"{source}: structure {i} has no atoms")
        numbers.append(np.asarray(atoms.numbers, dtype=np.int64))
        pos.append(np.asarray(atoms.positions, dtype=np.float64))
        calc = atoms.calc
        try:
            energy.append(float(atoms.get_potential_energy()) if calc is not None else None)
        except (PropertyNotImplementedError, RuntimeError):
            energy.append(None)
        try:
            forces.append(np.asarray(atoms.get_forces(), dtype=np.float64) if calc is not None else None)
        except (PropertyNotImplementedError, RuntimeError):
            forces.append(None)
    n_max = max(len(z) for z in numbers)
    has_e = all(e is not None for e in energy)
    has_f = all(f is not None for f in forces)
    return MoleculeDataset(
        torch.from_numpy(_pad(numbers, n_max)),
        torch.from_numpy(_pad(pos, n_max)),
        torch.tensor(energy, dtype=torch.float64) if has_e else None,
        torch.from_numpy(_pad(forces, n_max)) if has_f else None,
        source,
    )


def read_rmd17(path: str | os.PathLike[str]) -> MoleculeDataset:
    """Read an rMD17 ``.npz`` (``nuclear_charges`` [N], ``coords`` [F, N, 3] Å, ``energies`` [F]
    kcal/mol, ``forces`` [F, N, 3] kcal/mol/Å); energies and forces are converted to eV and eV/Å."""
    path = Path(path)
    try:
        with np.load(path) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except Exception as err:  # numpy raises several types for a damaged archive
        raise ValueError(f"{path} is not a readable .npz archive ({type(err).__name__}: {err})") from err
    missing = [k for k in ("nuclear_charges", "coords") if k not in arrays]
    if missing:
        raise ValueError(f"{path} lacks {missing}: not the rMD17 layout (nuclear_charges, coords, energies, forces)")
    z, coords = arrays["nuclear_charges"].astype(np.int64), arrays["coords"].astype(np.float64)
    if coords.ndim != 3 or coords.shape[1:] != (len(z), 3):
        raise ValueError(f"{path}: coords must be [F, {len(z)}, 3], got {list(coords.shape)}")
    energy = arrays.get("energies")
    forces = arrays.get("forces")
    return MoleculeDataset(
        torch.from_numpy(np.broadcast_to(z, coords.shape[:2]).copy()),
        torch.from_numpy(coords),
        None if energy is None else torch.from_numpy(energy.reshape(-1).astype(np.float64) * KCAL_MOL_TO_EV),
        None if forces is None else torch.from_numpy(forces.astype(np.float64) * KCAL_MOL_TO_EV),
        str(path),
    )


def read_molecules(path: str | os.PathLike[str], index: str | int | slice = ":", require_labels: bool = False) -> MoleculeDataset:
    """Read structures (eV, Å) from any ``ase.io.read`` format or an rMD17 ``.npz``.

    Args:
        path: the file (format from its extension, as ASE does; ``.npz`` = rMD17).
        index: which structures (ASE's index syntax; ignored for ``.npz``).
        require_labels: raise ValueError when energies or forces are missing.

    Raises:
        FileNotFoundError if ``path`` does not exist; ValueError naming the file when it cannot be
        parsed, holds no structures, or lacks labels that were required.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"molecule file {path} does not exist")
    if path.suffix == ".npz":
        data = read_rmd17(path)
    else:
        import ase.io

        try:
            frames = ase.io.read(path, index=index)
        except Exception as err:  # ASE raises many types (ValueError, IndexError, KeyError...) on bad files
            raise ValueError(f"cannot read molecules from {path} ({type(err).__name__}: {err})") from err
        data = from_atoms(frames if isinstance(frames, list) else [frames], str(path))
    return data.require_labels() if require_labels else data


# -- generation ------------------------------------------------------------------------------------


@dataclass
class MDConfig:
    """Langevin MD with GFN2-xTB (tblite). Units: K, fs, 1/fs; ``stride`` in MD steps.

    ``n_train + n_valid + n_test`` frames are recorded every ``stride`` steps after
    ``equilibration_steps`` steps from the xTB-relaxed start geometry.
    """

    molecule: str = "ethanol"
    temperature_k: float = 500.0
    timestep_fs: float = 0.5
    friction_per_fs: float = 0.01
    stride: int = 40
    equilibration_steps: int = 2000
    n_train: int = 1000
    n_valid: int = 1000
    n_test: int = 2000
    seed: int = 0
    method: str = "GFN2-xTB"

    def __post_init__(self) -> None:
        if self.molecule not in MOLECULES:
            raise ValueError(f"unknown molecule {self.molecule!r}; the generator knows {sorted(MOLECULES)}")
        if self.stride < 1 or min(self.n_train, self.n_valid, self.n_test) < 1:
            raise ValueError(f"stride and split sizes must be >= 1, got stride={self.stride}, sizes={self.n_train}/{self.n_valid}/{self.n_test}")

    @property
    def n_frames(self) -> int:
        return self.n_train + self.n_valid + self.n_test


def start_geometry(molecule: str, seed: int = 0) -> Any:
    """Unrelaxed start geometry (ASE ``Atoms``): from ASE's G2 collection, else embedded from SMILES with RDKit."""
    from ase import Atoms
    from ase.build import molecule as g2_molecule

    if molecule not in MOLECULES:
        raise ValueError(f"unknown molecule {molecule!r}; the generator knows {sorted(MOLECULES)}")
    entry = MOLECULES[molecule]
    if "g2" in entry:
        return g2_molecule(entry["g2"])
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(entry["smiles"]))
    if AllChem.EmbedMolecule(mol, randomSeed=seed) != 0:
        raise ValueError(f"RDKit could not embed {molecule} ({entry['smiles']})")
    AllChem.MMFFOptimizeMolecule(mol)
    return Atoms([a.GetSymbol() for a in mol.GetAtoms()], positions=mol.GetConformer().GetPositions())


def _calculator(method: str) -> Any:
    from tblite.ase import TBLite

    return TBLite(method=method, verbosity=0)


#: version of the generation procedure, part of the file-name hash. 2: the xTB calculator restarts its SCF
#: from scratch at every checkpoint, so a resumed run reproduces an uninterrupted one bit for bit (version 1
#: carried the previous step's wavefunction over in memory only, and a resumed run drifted away from it).
PROCEDURE = 2


def _relaxed(config: MDConfig) -> Any:
    from ase.optimize import BFGS

    atoms = start_geometry(config.molecule, config.seed)
    atoms.calc = _calculator(config.method)
    BFGS(atoms, logfile=None).run(fmax=0.01, steps=500)
    atoms.positions -= atoms.get_center_of_mass()
    return atoms


def molecule_paths(root: str | os.PathLike[str], config: MDConfig) -> dict[str, Path]:
    """Files of one generation: ``trajectory`` (all frames), ``state`` (MD checkpoint), ``meta`` and one per split.

    The hash covers every :class:`MDConfig` field, the start geometry (rounded to 1e-6 Å) and
    :data:`PROCEDURE`, so one name means one set of frames (the content hashes of the split files are in
    the ``meta`` file).
    """
    start = np.round(start_geometry(config.molecule, config.seed).positions, 6).tolist()
    key = json.dumps({"config": asdict(config), "start": start, "procedure": PROCEDURE}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    stem = Path(root) / f"{config.molecule}_{digest}"
    paths = {"trajectory": stem.with_suffix(".extxyz"), "state": Path(f"{stem}.state.json"), "meta": Path(f"{stem}.json")}
    paths.update({split: Path(f"{stem}_{split}.extxyz") for split in SPLITS})
    return paths


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes: which frames a data set or a result was made from."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _write_frames(path: Path, frames: list[Any]) -> None:
    """Write ``frames`` (ASE Atoms with energy/forces) to ``path`` atomically as extxyz."""
    import ase.io

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        ase.io.write(tmp, frames, format="extxyz")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def autocorrelation(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Normalised autocorrelation of a series x [T, ...] (mean removed, summed over trailing axes): [max_lag + 1]."""
    x = x - x.mean(0)
    x = x.reshape(len(x), -1)
    lags = range(min(max_lag, len(x) - 1) + 1)
    c = np.array([np.mean(np.sum(x[: len(x) - lag] * x[lag:], axis=1)) for lag in lags])
    return c / c[0]


def _snapshot(atoms: Any, step: int, timestep_fs: float) -> Any:
    from ase.calculators.singlepoint import SinglePointCalculator

    frame = atoms.copy()
    frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
    frame.info.update(md_step=step, time_fs=step * timestep_fs)
    return frame


def generate_molecule(
    root: str | os.PathLike[str], config: MDConfig, chunk: int = 50, log: Any = print
) -> dict[str, Path]:
    """Generate (or resume, or just find) the MD data set of ``config`` under ``root``.

    Every ``chunk`` recorded frames are appended to the trajectory file and the MD state is
    checkpointed (atomically), so killing the process loses at most one chunk. Finished data:
    ``<molecule>_<hash>_{train,valid,test}.extxyz`` (random split of the frames with ``config.seed``)
    plus ``<molecule>_<hash>.json`` (timings and autocorrelations of the recorded frames).

    Returns:
        the paths of :func:`molecule_paths`.
    """
    import ase.io
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = molecule_paths(root, config)
    if all(paths[s].is_file() for s in SPLITS) and paths["meta"].is_file():
        return paths
    rng = np.random.default_rng(config.seed)
    if paths["state"].is_file():
        state = json.loads(paths["state"].read_text())
        atoms = start_geometry(config.molecule, config.seed)
        atoms.positions = np.array(state["positions"])
        atoms.set_momenta(np.array(state["momenta"]))
        rng.bit_generator.state = state["rng"]
        frames = ase.io.read(paths["trajectory"], index=":") if state["frames"] else []
        frames = frames[: state["frames"]]  # frames appended after the last checkpoint are redone
        if len(frames) < state["frames"]:
            raise ValueError(f"{paths['trajectory']} has {len(frames)} frames but its state file says {state['frames']}; delete both to restart")
        _write_frames(paths["trajectory"], frames)
        step, elapsed, evals = state["step"], state["elapsed_s"], state["evaluations"]
        log(f"{config.molecule}: resuming at step {step} with {len(frames)} frames")
    else:
        atoms = _relaxed(config)
        MaxwellBoltzmannDistribution(atoms, temperature_K=config.temperature_k, rng=rng)
        frames, step, elapsed, evals = [], 0, 0.0, 0
    atoms.calc = _calculator(config.method)
    dyn = Langevin(atoms, config.timestep_fs * units.fs, temperature_K=config.temperature_k,
                   friction=config.friction_per_fs / units.fs, rng=rng)
    start = time.perf_counter()
    pending: list[Any] = []
    while len(frames) + len(pending) < config.n_frames:
        first = step < config.equilibration_steps
        n_steps = config.equilibration_steps - step if first else config.stride
        dyn.run(n_steps)
        step += n_steps
        evals += n_steps
        if not first:
            pending.append(_snapshot(atoms, step, config.timestep_fs))
        if len(pending) == chunk or len(frames) + len(pending) == config.n_frames or first:
            if pending:
                ase.io.write(paths["trajectory"], pending, format="extxyz", append=True)
                frames += pending
                pending = []
            now = elapsed + time.perf_counter() - start
            state = {"step": step, "frames": len(frames), "positions": atoms.positions.tolist(),
                     "momenta": atoms.get_momenta().tolist(), "rng": rng.bit_generator.state,
                     "elapsed_s": now, "evaluations": evals}
            _atomic_write_text(paths["state"], json.dumps(state))
            # a resumed run starts its SCF from scratch here, so the uninterrupted run does the same
            atoms.calc = _calculator(config.method)
            log(f"{config.molecule}: step {step}, {len(frames)}/{config.n_frames} frames, {now:.0f} s, "
                f"{1000 * now / max(evals, 1):.2f} ms per MD step")
    return _finish(paths, config, frames, elapsed + time.perf_counter() - start, evals)


def _finish(paths: dict[str, Path], config: MDConfig, frames: list[Any], elapsed: float, evals: int) -> dict[str, Path]:
    order = np.random.default_rng(config.seed).permutation(len(frames))
    bounds = np.cumsum([0, config.n_train, config.n_valid, config.n_test])
    for split, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]):
        _write_frames(paths[split], [frames[i] for i in sorted(order[lo:hi])])
    energy = np.array([f.get_potential_energy() for f in frames])
    velocity = np.array([f.get_velocities() for f in frames])
    meta = {
        "config": asdict(config),
        "units": {"energy": "eV", "forces": "eV/A", "positions": "A"},
        "frames": len(frames),
        "md_steps": int(config.equilibration_steps + config.stride * len(frames)),
        "time_between_frames_fs": config.stride * config.timestep_fs,
        "wall_time_s": elapsed,
        "ms_per_md_step": 1000 * elapsed / max(evals, 1),
        "energy_autocorrelation_by_frame_lag": autocorrelation(energy, 10).round(4).tolist(),
        "velocity_autocorrelation_by_frame_lag": autocorrelation(velocity, 10).round(4).tolist(),
        "files": {split: paths[split].name for split in SPLITS},
        "sha256": {split: file_sha256(paths[split]) for split in SPLITS},
    }
    _atomic_write_text(paths["meta"], json.dumps(meta, indent=2) + "\n")
    return paths
