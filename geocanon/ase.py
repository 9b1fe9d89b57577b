"""geocanon potentials inside ASE: an ASE ``Calculator`` for any molecular checkpoint, and an NVE check.

    from geocanon.ase import Calculator
    atoms.calc = Calculator("benchmarks/checkpoints/molecules_100epochs_v2/molecules_ethanol.pt")
    atoms.get_potential_energy(), atoms.get_forces()   # eV, eV/Å

The checkpoint holds a :class:`~geocanon.nn.energy.MolecularPotential` (as the molecules benchmark
writes); forces are ``-∂E/∂x`` by autograd, so NVE dynamics conserve energy up to the integrator error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase.calculators.calculator import Calculator as _AseCalculator
from ase.calculators.calculator import all_changes

from . import checkpoint
from .nn.energy import MolecularPotential

__all__ = ["Calculator", "nve_drift"]


class Calculator(_AseCalculator):
    """ASE calculator (``energy``, ``free_energy``, ``forces``) from a geocanon molecular checkpoint.

    Args:
        model: a checkpoint path, or a :class:`~geocanon.nn.energy.MolecularPotential`.
        dtype: evaluation dtype; float64 (default) keeps MD energy conservation free of float32 noise.
            A checkpoint is rebuilt under this default dtype (e3nn constants are baked at build time).

    Isolated molecules only: periodic ``atoms`` (any ``pbc``), elements the model was not trained on and
    degenerate geometries (a single atom; collinear atoms under frame averaging) raise ``ValueError``.
    """

    implemented_properties = ("energy", "free_energy", "forces")

    def __init__(self, model: str | Path | MolecularPotential, dtype: torch.dtype = torch.float64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(model, (str, Path)):
            old = torch.get_default_dtype()
            torch.set_default_dtype(dtype)
            try:
                model, _ = checkpoint.load(model)
            finally:
                torch.set_default_dtype(old)
        if not isinstance(model, MolecularPotential):
            raise ValueError(f"geocanon.ase.Calculator needs a MolecularPotential checkpoint, got {type(model).__name__}")  # noqa: TRY004 (project convention: bad input is a ValueError)
        self.model = model.to(dtype).eval()
        self.dtype = dtype

    def calculate(self, atoms: Any = None, properties: Any = ("energy",), system_changes: Any = all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        if self.atoms.pbc.any():
            # the network sees the atoms of the cell only: periodic images would be silently ignored
            raise ValueError(f"geocanon.ase.Calculator evaluates isolated molecules, but atoms.pbc = {self.atoms.pbc.tolist()}: "
                             "periodic images are not modelled; set atoms.pbc = False for a molecule in vacuum")
        pos = torch.as_tensor(self.atoms.positions, dtype=self.dtype)[None]
        numbers = torch.as_tensor(self.atoms.numbers, dtype=torch.long)[None]
        with torch.no_grad():
            energy, forces = self.model(pos, numbers)
        self.results = {"energy": energy.item(), "free_energy": energy.item(), "forces": forces[0].numpy().astype(np.float64)}


def nve_drift(atoms: Any, steps: int = 2000, timestep_fs: float = 0.5, temperature_k: float = 300.0, seed: int = 0) -> dict[str, Any]:
    """Run velocity-Verlet NVE on ``atoms`` (with its calculator attached) and measure energy conservation.

    Velocities start Maxwell–Boltzmann at ``temperature_k`` (zero total momentum). Returns the total
    energy drift (slope of a linear fit, eV/ps and meV/ps per atom), its largest excursion from the
    start (eV), the mean temperature (K), and ``stable``: finite energies, no bond shorter than 0.5 Å
    or molecule grown beyond twice its start size, and an excursion below 0.1 eV per atom.
    """
    from ase import units
    from ase.md.velocitydistribution import Stationary, thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    thermalize_momenta(atoms, temperature_K=temperature_k, rng=np.random.default_rng(seed))
    Stationary(atoms)
    size0 = atoms.get_all_distances().max()
    dyn = VelocityVerlet(atoms, timestep_fs * units.fs)
    total, temps, broken = [], [], False
    for _ in range(steps):
        dyn.run(1)
        total.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())
        temps.append(atoms.get_temperature())
        dist = atoms.get_all_distances()[np.triu_indices(len(atoms), 1)]
        if not np.isfinite(total[-1]) or dist.min() < 0.5 or dist.max() > 2 * size0:
            broken = True
            break
    total_arr = np.array(total)
    time_ps = np.arange(1, len(total_arr) + 1) * timestep_fs / 1000
    slope = float(np.polyfit(time_ps, total_arr, 1)[0]) if len(total_arr) > 1 else float("nan")
    excursion = float(np.abs(total_arr - total_arr[0]).max())
    return {
        "steps": len(total_arr),
        "timestep_fs": timestep_fs,
        "duration_ps": float(time_ps[-1]),
        "drift_ev_per_ps": slope,
        "drift_mev_per_ps_per_atom": 1000 * slope / len(atoms),
        "max_excursion_ev": excursion,
        "mean_temperature_k": float(np.mean(temps)),
        "stable": bool(not broken and excursion < 0.1 * len(atoms)),
    }
