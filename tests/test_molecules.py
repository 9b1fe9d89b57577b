"""Molecules: readers, the xTB generator, energy/force models (conservative, E(3)-exact), ASE, the benchmark.

Training data here is SYNTHETIC (a toy Morse-like pair potential the test computes), except the
generator test, which runs a handful of real GFN2-xTB evaluations (tblite, ~2 ms each).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from geocanon import FrameAveraged, checkpoint
from geocanon.bench import molecules as molecules_bench
from geocanon.bench.harness import WarmupEMA, train_config
from geocanon.bench.molecules import (AUGMENT_IN_FRAMES, METHODS, SAVED_METHODS, MoleculesBenchConfig, chosen_run, evaluate_checkpoint, model_spec, nequip_settings, run,
                                      validation_loss)
from geocanon.data.molecules import KCAL_MOL_TO_EV, MDConfig, generate_molecule, one_hot_species, read_molecules
from geocanon.frames import random_rotation
from geocanon.testing import default_tolerance, equivariance_error

from .conftest import PointMLP, charged_clouds, default_dtype

WATER = Atoms("OH2", positions=[[0.0, 0.0, 0.12], [0.0, 0.76, -0.47], [0.0, -0.76, -0.47]])
SPECIES = [1, 6, 8]


def _toy_frames(n: int, seed: int = 0) -> list[Atoms]:
    """SYNTHETIC labelled frames: a jittered 5-atom molecule with a smooth pair potential E = Σ (r - 1.3)²."""
    rng = np.random.default_rng(seed)
    base = np.array([[0.0, 0.0, 0.0], [1.3, 0.1, 0.0], [-0.4, 1.2, 0.2], [-0.3, -0.5, 1.1], [0.6, -1.0, -0.7]])
    frames = []
    for _ in range(n):
        pos = base + rng.normal(scale=0.1, size=base.shape)
        diff = pos[:, None] - pos[None]
        r = np.linalg.norm(diff, axis=-1) + np.eye(5)
        energy = 0.5 * ((r - 1.3) ** 2 * (1 - np.eye(5))).sum()
        forces = -2 * (((r - 1.3) / r)[..., None] * diff * (1 - np.eye(5))[..., None]).sum(1)
        atoms = Atoms("CCOHH", positions=pos)
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    return frames


def _write_split_files(root: Path) -> dict[str, Path]:
    import ase.io

    paths = {}
    for i, split in enumerate(("train", "valid", "test")):
        paths[split] = root / f"toy_{split}.extxyz"
        ase.io.write(paths[split], _toy_frames(6, seed=i), format="extxyz")
    return paths


# -- readers -----------------------------------------------------------------------------------------


def test_read_extxyz_and_ase_db_with_labels(tmp_path):
    import ase.db
    import ase.io

    frames = _toy_frames(3)
    ase.io.write(tmp_path / "a.extxyz", frames, format="extxyz")
    with ase.db.connect(tmp_path / "a.db") as db:
        for atoms in frames:
            db.write(atoms)
    for name in ("a.extxyz", "a.db"):
        data = read_molecules(tmp_path / name, require_labels=True)
        assert len(data) == 3 and data.species == [1, 6, 8]
        np.testing.assert_allclose(data.energy.numpy(), [f.get_potential_energy() for f in frames], rtol=1e-10)
        np.testing.assert_allclose(data.forces[1].numpy(), frames[1].get_forces(), atol=1e-8)
        np.testing.assert_allclose(data.pos[2].numpy(), frames[2].positions, atol=1e-8)


def test_read_xyz_pdb_sdf_positions_only(tmp_path):
    import ase.io

    ase.io.write(tmp_path / "w.xyz", WATER, format="xyz")
    ase.io.write(tmp_path / "w.pdb", WATER)
    ase.io.write(tmp_path / "w.sdf", WATER, format="sdf")
    for name in ("w.xyz", "w.pdb", "w.sdf"):
        data = read_molecules(tmp_path / name)
        assert data.numbers.tolist() == [[8, 1, 1]] and data.energy is None and data.forces is None
        np.testing.assert_allclose(data.pos[0].numpy(), WATER.positions, atol=1e-3)
        with pytest.raises(ValueError, match=name):
            read_molecules(tmp_path / name, require_labels=True)


def test_read_mixed_sizes_are_padded(tmp_path):
    import ase.io

    ase.io.write(tmp_path / "m.xyz", [WATER, _toy_frames(1)[0]], format="extxyz")
    data = read_molecules(tmp_path / "m.xyz")
    assert data.pos.shape == (2, 5, 3) and data.mask.sum(1).tolist() == [3, 5] and data.numbers[0, 3:].tolist() == [0, 0]


def test_read_rmd17_npz_converts_units(tmp_path):
    z = np.array([8, 1, 1])
    coords = np.stack([WATER.positions, WATER.positions + 0.01])
    np.savez(tmp_path / "rmd17_water.npz", nuclear_charges=z, coords=coords, energies=np.array([-10.0, -9.0]), forces=np.ones((2, 3, 3)))
    data = read_molecules(tmp_path / "rmd17_water.npz", require_labels=True)
    assert data.numbers.tolist() == [[8, 1, 1]] * 2
    np.testing.assert_allclose(data.energy.numpy(), np.array([-10.0, -9.0]) * KCAL_MOL_TO_EV)
    np.testing.assert_allclose(data.forces.numpy(), KCAL_MOL_TO_EV)
    np.savez(tmp_path / "nolabels.npz", nuclear_charges=z, coords=coords)
    with pytest.raises(ValueError, match="nolabels.npz has no energies and no forces"):
        read_molecules(tmp_path / "nolabels.npz", require_labels=True)


def test_corrupt_files_name_the_file(tmp_path):
    (tmp_path / "bad.extxyz").write_text("3\nProperties=species:S:1:pos:R:3\nO 0 0\n")
    (tmp_path / "bad.npz").write_bytes(b"not a zip archive")
    for name in ("bad.extxyz", "bad.npz"):
        with pytest.raises(ValueError, match=name):
            read_molecules(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        read_molecules(tmp_path / "absent.xyz")


def test_one_hot_rejects_unknown_elements():
    numbers = torch.tensor([[8, 1, 1, 0]])
    hot = one_hot_species(numbers, SPECIES)
    assert hot.tolist() == [[[0, 0, 1], [1, 0, 0], [1, 0, 0], [0, 0, 0]]]
    with pytest.raises(ValueError, match=r"\[7\]"):
        one_hot_species(torch.tensor([[7, 1]]), SPECIES)


# -- generator ---------------------------------------------------------------------------------------


def test_generator_resumes_after_interruption(tmp_path):
    pytest.importorskip("tblite")
    config = MDConfig(molecule="ethanol", stride=2, equilibration_steps=2, n_train=2, n_valid=1, n_test=1)

    class Stop(Exception):
        pass

    def stop_after_first_chunk(message: str) -> None:
        if "2/4 frames" in message:
            raise Stop

    with pytest.raises(Stop):
        generate_molecule(tmp_path, config, chunk=2, log=stop_after_first_chunk)
    paths = generate_molecule(tmp_path, config, chunk=2, log=lambda m: None)
    frames = read_molecules(paths["trajectory"], require_labels=True)
    # an uninterrupted run writes the same frames, bit for bit (the SCF restarts at every checkpoint in both)
    whole = generate_molecule(tmp_path / "uninterrupted", config, chunk=2, log=lambda m: None)
    assert whole["trajectory"].read_bytes() == paths["trajectory"].read_bytes()
    assert all(whole[s].read_bytes() == paths[s].read_bytes() for s in ("train", "valid", "test"))
    assert len(frames) == 4
    steps = [int(line.split("md_step=")[1].split()[0]) for line in paths["trajectory"].read_text().splitlines() if "md_step=" in line]
    assert steps == [4, 6, 8, 10]  # continuous across the interruption
    sizes = {s: len(read_molecules(paths[s], require_labels=True)) for s in ("train", "valid", "test")}
    assert sizes == {"train": 2, "valid": 1, "test": 1}
    meta = json.loads(paths["meta"].read_text())
    assert meta["frames"] == 4 and meta["units"]["energy"] == "eV"
    assert meta["sha256"] == {s: hashlib.sha256(paths[s].read_bytes()).hexdigest() for s in ("train", "valid", "test")}
    assert abs(frames.energy.mean().item() + 309.0) < 5.0  # GFN2-xTB ethanol is about -309.8 eV


# -- models -------------------------------------------------------------------------------------------


def _potential(method: str, num_atoms: int = 5):
    # sign tolerance 1: the toy molecules' skewnesses lie inside it, so the weighted frames blend and their
    # weights' derivatives enter the forces
    cfg = MoleculesBenchConfig(hidden=16, layers=2, canon_hidden_mul=4, canon_layers=1, mlp_hidden=16, schnet_hidden=16, schnet_interactions=1,
                               fa_sign_tolerance=1.0)
    return checkpoint.build(model_spec(method, cfg, SPECIES, num_atoms, energy_shift=-1.0, energy_scale=0.5))


def _toy_batch(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    data = read_molecules_from(_toy_frames(3))
    return data.pos.to(dtype), data.numbers


def read_molecules_from(frames):
    from geocanon.data.molecules import from_atoms

    return from_atoms(frames)


@pytest.mark.parametrize("method", ["canonicalized", "canonicalized-avg", "canonicalized-se3", "frame-averaging", "weighted-frames", "weighted-frames-mlp"])
def test_forces_are_minus_energy_gradient(method):
    with default_dtype(torch.float64):
        model = _potential(method).eval()
    pos, numbers = _toy_batch(torch.float64)
    forces = model(pos, numbers)[1]
    h = 1e-6
    for atom, axis in ((0, 0), (3, 2), (4, 1)):
        step = torch.zeros_like(pos)
        step[:, atom, axis] = h
        fd = (model(pos + step, numbers)[0] - model(pos - step, numbers)[0]) / (2 * h)
        torch.testing.assert_close(forces[:, atom, axis], -fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "method,dtype",
    [("canonicalized", torch.float64), ("canonicalized", torch.float32), ("canonicalized-mlp", torch.float64),
     ("canonicalized-avg", torch.float64), ("frame-averaging", torch.float64),
     ("frame-averaging", torch.float32), ("weighted-frames", torch.float64), ("weighted-frames", torch.float32),
     ("weighted-frames-mlp", torch.float64), ("weighted-frames-mlp", torch.float32), ("schnet", torch.float32)],
    ids=["canonicalized-float64", "canonicalized-float32", "mlp-float64", "avg-float64", "fa-float64", "fa-float32",
         "weighted-float64", "weighted-float32", "weighted-mlp-float64", "weighted-mlp-float32", "schnet-float32"],
)
def test_energy_invariant_forces_equivariant_under_e3(method, dtype):
    with default_dtype(dtype):
        model = _potential(method).eval()
    _assert_e3_exact(model, dtype)


def _assert_e3_exact(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """The potential's energies are E(3)-invariant and its forces E(3)-equivariant on the toy batch, to the dtype's tolerance."""
    pos, numbers = _toy_batch(dtype)
    e_err = equivariance_error(lambda p, numbers: model(p, numbers)[0], pos, "E3", "invariant", scalars={"numbers": numbers}, trials=2)
    f_err = equivariance_error(lambda p, numbers: model(p, numbers)[1], pos, "E3", "vector", scalars={"numbers": numbers}, trials=2)
    assert e_err < default_tolerance(dtype) and f_err < default_tolerance(dtype), (e_err, f_err)


@pytest.mark.parametrize("method", ["frame-averaging", "weighted-frames"])
def test_planar_molecules_exact_with_frame_averaging(method, dtype):
    """Water (every triatomic) is planar, which single E(3) frames reject; frame averaging gives it an invariant
    energy, equivariant forces with no component out of the plane (the mirror symmetry), and −∇E."""
    with default_dtype(dtype):
        model = _potential(method, num_atoms=3).eval()
    turned = torch.tensor(WATER.positions, dtype=dtype) @ random_rotation(1, dtype=dtype)[0] + 0.5
    pos = torch.stack([torch.tensor(WATER.positions, dtype=dtype), turned])
    numbers = torch.tensor([[8, 1, 1]] * 2)
    call = {"scalars": {"numbers": numbers}, "trials": 3}
    assert equivariance_error(lambda p, numbers: model(p, numbers)[0], pos, "E3", "invariant", **call) < default_tolerance(dtype)
    assert equivariance_error(lambda p, numbers: model(p, numbers)[1], pos, "E3", "vector", **call) < default_tolerance(dtype)
    energy, forces = model(pos, numbers)
    normal = torch.linalg.cross(pos[:, 1] - pos[:, 0], pos[:, 2] - pos[:, 0])
    normal = normal / normal.norm(dim=-1, keepdim=True)
    assert (forces.abs().amax() > 1e-3) and ((forces * normal[:, None]).sum(-1).abs().amax() < 10 * default_tolerance(dtype) * forces.abs().amax())
    if dtype == torch.float64:
        h = 1e-6
        step = torch.zeros_like(pos)
        step[:, 1, 1] = h
        fd = (model(pos + step, numbers)[0] - model(pos - step, numbers)[0]) / (2 * h)
        torch.testing.assert_close(forces[:, 1, 1], -fd, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="collinear"):  # CO2-like: the two minor axes are arbitrary
        model(torch.tensor([[[-1.16, 0.0, 0.0], [0.0, 0.0, 0.0], [1.16, 0.0, 0.0]]], dtype=dtype), torch.tensor([[8, 6, 8]]))


def test_se3_canonicalization_is_not_reflection_invariant_and_augment_is_not_exact():
    with default_dtype(torch.float64):
        se3, plain = _potential("canonicalized-se3").eval(), _potential("augment").eval()
    pos, numbers = _toy_batch(torch.float64)
    call = {"scalars": {"numbers": numbers}, "trials": 2}
    assert equivariance_error(lambda p, numbers: se3(p, numbers)[1], pos, "SE3", "vector", **call) < default_tolerance(torch.float64)
    assert equivariance_error(lambda p, numbers: se3(p, numbers)[1], pos, "O3", "vector", **call) > 1e-4
    assert equivariance_error(lambda p, numbers: plain(p, numbers)[1], pos, "SO3", "vector", **call) > 1e-4


def test_ase_calculator_runs_md_and_roundtrips_checkpoint(tmp_path):
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from geocanon.ase import Calculator, nve_drift

    model = _potential("canonicalized")
    path = checkpoint.save(tmp_path / "m.pt", model)
    atoms = _toy_frames(1)[0]
    atoms.calc = Calculator(path)
    e0 = atoms.get_potential_energy()
    with default_dtype(torch.float64):
        reference = _potential("canonicalized")
    reference.load_state_dict(model.state_dict())
    expected = reference(torch.as_tensor(atoms.positions)[None], torch.as_tensor(atoms.numbers)[None])[0].item()
    assert abs(e0 - expected) < 1e-10
    VelocityVerlet(atoms, 0.5 * units.fs).run(10)
    assert atoms.get_forces().shape == (5, 3) and np.isfinite(atoms.get_potential_energy())
    result = nve_drift(atoms, steps=10, timestep_fs=0.1)
    assert result["steps"] == 10 and np.isfinite(result["drift_ev_per_ps"])


def test_ase_calculator_rejects_periodic_unknown_and_degenerate_atoms():
    from ase import Atoms

    from geocanon.ase import Calculator

    calc = Calculator(_potential("frame-averaging"))
    atoms = _toy_frames(1)[0]
    atoms.calc = calc
    assert np.isfinite(atoms.get_potential_energy())
    periodic = atoms.copy()
    periodic.cell, periodic.pbc = [10.0, 10.0, 10.0], [True, True, False]
    periodic.calc = calc
    with pytest.raises(ValueError, match=r"isolated molecules, but atoms.pbc = \[True, True, False\]"):
        periodic.get_forces()
    unknown = atoms.copy()
    unknown.numbers[0] = 17  # chlorine: not among SPECIES
    unknown.calc = calc
    with pytest.raises(ValueError, match=r"atomic numbers \[17\] are not among the model's species"):
        unknown.get_potential_energy()
    line = Atoms("CO", positions=[[0.0, 0.0, 0.0], [1.2, 0.0, 0.0]])
    line.calc = calc
    with pytest.raises(ValueError, match="collinear"):
        line.get_potential_energy()
    single = Atoms("C", positions=[[0.0, 0.0, 0.0]])
    single.calc = calc
    with pytest.raises(ValueError, match="single-point"):
        single.get_potential_energy()


class _AtomEnergies(torch.nn.Module):
    """A user's own non-invariant energy network: per-atom MLP of raw coordinates and species, summed."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3 + len(SPECIES), 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def forward(self, pos, species, mask=None):
        energies = self.net(torch.cat([pos, species], -1))[..., 0]
        return (energies * mask).sum(1) if mask is not None else energies.sum(1)


def test_users_own_energy_network_in_ase_is_exact(tmp_path):
    """Any energy module inside FrameAveraged becomes an exact potential for ASE (module, not spec, given)."""
    from geocanon import FrameAveraged
    from geocanon.ase import Calculator
    from geocanon.nn.energy import MolecularPotential

    with default_dtype(torch.float64):
        net = _AtomEnergies()
        energy = FrameAveraged(net, group="E3", output="invariant", scalar_features=["species"], sign_tolerance=0.1)
        calc = Calculator(MolecularPotential(SPECIES, energy))
    atoms = _toy_frames(1)[0]
    g = random_rotation(1, reflections=True, dtype=torch.float64)[0].numpy()
    moved = atoms.copy()
    moved.positions = atoms.positions @ g.T + np.array([0.3, -1.0, 2.0])
    results = []
    for a in (atoms, moved):
        a.calc = calc
        results.append((a.get_potential_energy(), a.get_forces()))
    (e0, f0), (e1, f1) = results
    assert abs(e1 - e0) < default_tolerance(torch.float64) * abs(e0)
    assert np.abs(f1 - f0 @ g.T).max() < default_tolerance(torch.float64) * np.abs(f0).max()
    pos = torch.tensor(atoms.positions)[None]
    numbers = torch.tensor(atoms.numbers)[None]
    plain = MolecularPotential(SPECIES, net)  # the bare network: the same check fails
    e_plain = plain(pos, numbers)[0].item()
    assert abs(plain(torch.tensor(moved.positions)[None], numbers)[0].item() - e_plain) > 1e-4 * abs(e_plain)
    with pytest.raises(ValueError, match="was not built with geocanon.checkpoint.build"):
        checkpoint.save(tmp_path / "unused.pt", calc.model)


def _tiny_bench(tmp_path: Path, paths: dict[str, Path], **overrides) -> MoleculesBenchConfig:
    """A benchmark configuration small enough to train every method in seconds on the toy split files."""
    settings = dict(
        molecule="toy", seeds=[0], train_file=str(paths["train"]), valid_file=str(paths["valid"]), test_file=str(paths["test"]),
        n_train=6, n_valid=6, n_test=6, hidden=8, layers=1, canon_hidden_mul=4, canon_layers=1, mlp_hidden=8, schnet_hidden=8,
        schnet_interactions=1, max_epochs=1, batch_size=3, check_val_every_n_epoch=1, ema_decay=0.9, run_dir=str(tmp_path / "runs"),
        results=str(tmp_path / "results" / "molecules"), checkpoint_dir=str(tmp_path / "ckpt"), progress=False,
    )
    return MoleculesBenchConfig(**{**settings, **overrides})


def test_every_method_trains_one_epoch_and_checkpoint_evaluates(tmp_path, capsys):
    paths = _write_split_files(tmp_path)
    payload = run(_tiny_bench(tmp_path, paths), nve_steps=3)
    entry = payload["molecules"]["toy"]
    assert entry["complete"] and [r["method"] for r in entry["runs"]] == list(METHODS)
    trained = {p.name for p in (tmp_path / "runs" / "toy").iterdir()}
    assert trained == set(METHODS) - set(AUGMENT_IN_FRAMES)  # augment-fa / augment-wf reuse the augment run
    for row in entry["runs"]:
        assert np.isfinite(row["energy_mae_mev"]) and np.isfinite(row["force_mae_mev_per_a"]) and row["n"] == 6
        assert -1 <= row["conditioning_skewness"]["spearman"] <= 1 and row["frames_per_structure"] >= 1
        assert (row["method"].startswith("canonicalized")) == ("frame_change_deg_median" in row)
        assert 0 <= row.get("frame_change_deg_median", 0) <= 180
        if row["method"] == "augment":
            assert row["force_equivariance_error"] > 1e-3, row
        else:
            # float32 forces of a trained model, through the frames' weights: weighted frames reach ~2.3e-5 here
            assert row["force_equivariance_error"] < 10 * default_tolerance(torch.float32), (row["method"], row["force_equivariance_error"])
    for key, batch_size, structures in (("timing", 6, 6), ("latency", 1, 6)):  # 6 test structures: in one call / one at a time
        timing = entry[key]
        assert (timing["batch_size"], timing["structures"]) == (batch_size, structures)
        assert set(timing["ms_per_structure"]) == set(METHODS) and all(t > 0 for t in timing["ms_per_structure"].values())
        assert timing["time_ratio"]["frame-averaging"]["augment"] > 1  # 8 backbone calls against 1
    ckpt = payload["checkpoints"]["toy"]
    assert Path(ckpt).is_file() and entry["nve"]["steps"] == 3
    markdown = (tmp_path / "results" / "molecules.md").read_text()
    assert markdown.count("| canonicalized |") == 3  # summary, timing and latency tables
    assert "6 test structures in calls of 6;" in markdown and "6 test structures in calls of 1;" in markdown
    chosen = min((r for r in entry["summary"] if r["method"] in SAVED_METHODS), key=lambda r: r["best_val_loss_mean"])
    assert f"of the canonicalized methods, **{chosen['method']}** has the lowest mean validation loss" in markdown
    assert checkpoint.load(ckpt)[1]["row"] == chosen_run(entry["runs"]) and entry["nve"]["method"] == chosen["method"]
    assert all((r["best_val_loss_mean"] is None) == (r["method"] in ("augment", "schnet")) for r in entry["summary"])
    result = evaluate_checkpoint(ckpt, paths["test"])
    assert result["n"] == 6 and result["force_mae_mev_per_a"] > 0
    # datasets/molecules/cross_sample.py scores it on "another sample" (here the same frames: the same error as its row)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(paths["test"], other / "toy_0123456789_test.extxyz")
    script = Path(__file__).resolve().parents[1] / "datasets" / "molecules" / "cross_sample.py"
    subprocess.run([sys.executable, str(script), "--root", str(other), "--out", str(tmp_path / "cross"), ckpt], check=True, capture_output=True)
    (row,) = json.loads((tmp_path / "cross.json").read_text())["rows"]
    assert row["method"] in METHODS and row["force_mae_other_sample"] == pytest.approx(result["force_mae_mev_per_a"])
    assert row["ratio"] == pytest.approx(1.0) and "| toy |" in (tmp_path / "cross.md").read_text()
    bare = checkpoint.save(tmp_path / "bare.pt", checkpoint.load(ckpt)[0])  # no training row to compare with
    failed = subprocess.run([sys.executable, str(script), "--root", str(other), "--out", str(tmp_path / "bare"), str(bare)], capture_output=True, text=True)
    assert failed.returncode != 0 and "bare.pt holds no test result of its own" in failed.stderr


def test_checkpoint_run_is_chosen_by_mean_validation_loss_then_seed():
    def row(method, seed, loss):
        return {"method": method, "seed": seed, "best_val_loss": loss}

    lucky = [row("weighted-frames", 0, 1.0), row("weighted-frames", 1, 5.0), row("augment-fa", 0, 2.5), row("augment-fa", 1, 2.0)]
    assert chosen_run(lucky) == row("augment-fa", 1, 2.0)  # not the single lowest run: its method's mean is higher
    assert chosen_run(lucky + [row("schnet", 0, 0.1), row("nequip", 0, 0.01)]) == row("augment-fa", 1, 2.0)  # baselines are not saved
    assert chosen_run(lucky[:1]) == lucky[0] and chosen_run([row("augment", 0, 1.0)]) is None


def test_augment_in_frames_wraps_the_trained_augment_backbone_exactly(tmp_path):
    """augment-fa / augment-wf put the augment run's weights, unchanged, inside frames: exact where augment is not; their
    rows keep its training and score the wrapped model on the validation split as the harness scores a trained one."""
    cfg = _tiny_bench(tmp_path, _write_split_files(tmp_path), max_epochs=3, ema_decay=None)
    data = molecules_bench._datasets(cfg)
    fitted: dict = {}
    augmented, augment_row = molecules_bench._train_one("augment", 0, cfg, data, False, fitted)
    # the harness's best validation loss, recomputed from the reloaded best weights: the two measures are the same
    assert validation_loss(augmented, data, cfg.energy_weight) == pytest.approx(augment_row["best_val_loss"], rel=1e-5)
    assert augment_row["force_equivariance_error"] > 1e-3
    for method, frames in AUGMENT_IN_FRAMES.items():
        model, row = molecules_bench._train_one(method, 0, cfg, data, False, fitted)
        assert isinstance(model.model, FrameAveraged) and model.model.sign_tolerance == (cfg.fa_sign_tolerance if frames == "weighted-frames" else None)
        wrapped, trained = model.model.backbone.state_dict(), augmented.model.state_dict()
        assert wrapped.keys() == trained.keys() and all(torch.equal(wrapped[k], trained[k]) for k in trained)
        assert (row["method"], row["train_time_s"], row["best_epoch"]) == (method, augment_row["train_time_s"], augment_row["best_epoch"])
        assert row["best_val_loss"] == pytest.approx(validation_loss(model, data, cfg.energy_weight)) != augment_row["best_val_loss"]
        assert row["force_equivariance_error"] < 10 * default_tolerance(torch.float32), (method, row["force_equivariance_error"])
        with default_dtype(torch.float64):  # the trained weights in float64: exact to ~1e-10, the bare backbone is not
            exact = checkpoint.build(model_spec(method, cfg, SPECIES, 5, energy_shift=-1.0, energy_scale=0.5)).eval()
            bare = checkpoint.build(model_spec("augment", cfg, SPECIES, 5, energy_shift=-1.0, energy_scale=0.5)).eval()
        exact.model.backbone.load_state_dict(augmented.model.state_dict())
        bare.model.load_state_dict(augmented.model.state_dict())
        _assert_e3_exact(exact, torch.float64)
        pos, numbers = _toy_batch(torch.float64)
        assert equivariance_error(lambda p, numbers: bare(p, numbers)[1], pos, "E3", "vector", scalars={"numbers": numbers}, trials=2) > 1e-4
    assert [p.name for p in (tmp_path / "runs" / "toy").iterdir()] == ["augment"]  # trained once for all three


def test_ema_decay_reaches_every_method_and_nequip_keeps_its_own_by_default():
    averaged = MoleculesBenchConfig(ema_decay=0.99, max_epochs=7, lr=1e-3)
    assert train_config(averaged, 0).ema_decay == 0.99
    settings = nequip_settings(averaged, 2)
    assert (settings.ema_decay, settings.seed, settings.max_epochs, settings.lr) == (0.99, 2, 7, 1e-3)
    assert train_config(MoleculesBenchConfig(), 0).ema_decay is None
    assert nequip_settings(MoleculesBenchConfig(), 0).ema_decay == 0.999  # nequip-train's practice, as before the key existed
    assert train_config(averaged, 0).ema_warmup and not train_config(MoleculesBenchConfig(ema_warmup=False), 0).ema_warmup


def test_warmup_ema_ramps_its_decay_and_follows_recent_weights():
    """Update n sets a_n = d_n a_{n-1} + (1 - d_n) w_n with d_n = min(decay, n / (n + 9)); the first copies a_1 = w_1."""
    weights = [torch.tensor([float(k)]) for k in range(400)]
    live = torch.nn.Parameter(weights[0].clone())
    model = torch.nn.Module()
    model.w = live
    ema = torch.optim.swa_utils.AveragedModel(model, avg_fn=WarmupEMA(decay=0.99).average)
    expected = weights[1]
    for n, w in enumerate(weights[1:], start=1):
        live.data.copy_(w)
        ema.update_parameters(model)
        decay = min(0.99, n / (n + 9))
        expected = decay * expected + (1 - decay) * w
    assert torch.allclose(ema.module.w, expected, rtol=1e-6), (ema.module.w, expected)
    assert ema.module.w.item() > 350  # 359.1; a fixed decay of 0.99 lags further behind: 301.8
    with pytest.raises(ValueError, match="decay must be in"):
        WarmupEMA(decay=1.0)


def test_third_axis_average_ignores_the_sign_of_e3():
    """Flipping the canonicalizer's third vector flips e3: the single-frame energy changes, the averaged one does not."""
    with default_dtype(torch.float64):
        single, averaged = _potential("canonicalized").eval(), _potential("canonicalized-avg").eval()
    averaged.model.backbone.load_state_dict(single.model.backbone.state_dict())
    averaged.model.canonicalizer.load_state_dict(single.model.canonicalizer.state_dict())
    pos, numbers = _toy_batch(torch.float64)
    before = single(pos, numbers)[0], averaged(pos, numbers)[0]
    for model in (single.model, averaged.model):
        network = model.canonicalizer.network
        original = network.forward
        network.forward = lambda *a, _f=original, **k: _f(*a, **k) * torch.tensor([1.0, 1.0, -1.0])[:, None]
    after = single(pos, numbers)[0], averaged(pos, numbers)[0]
    assert (after[0] - before[0]).abs().max() > 1e-4
    torch.testing.assert_close(after[1], before[1], rtol=1e-12, atol=1e-12)


def test_third_axis_average_on_flat_pyg_batches_matches_dense_and_is_exact(dtype):
    """Flat input (pos [M, 3], batch [M]) gives each cloud what a dense call on it alone gives, padded dense batches
    too, and the averaged output is E(3)-invariant to the dtype's tolerance where the backbone alone is not."""
    from geocanon import E3nnCanonicalizer
    from geocanon.layout import to_dense
    from geocanon.nn.candidates import ThirdAxisAveraged

    clouds, charges, pos, charge, batch = charged_clouds([7, 12, 9])
    canonicalizer = E3nnCanonicalizer(group="E3", hidden_mul=4, k=6, num_points=16, num_scalar_features=1)
    model = ThirdAxisAveraged(PointMLP(per_point=False, charge=True), canonicalizer, scalar_features=["charge"])
    flat = model(pos, charge=charge, batch=batch)
    assert flat.shape == (3, 4)
    for i, (c, q) in enumerate(zip(clouds, charges)):
        torch.testing.assert_close(flat[i], model(c[None], charge=q[None])[0], atol=10 * default_tolerance(dtype), rtol=0)
    dense_pos, mask = to_dense(pos, batch)
    torch.testing.assert_close(model(dense_pos, charge=to_dense(charge, batch)[0], mask=mask), flat, atol=10 * default_tolerance(dtype), rtol=0)
    scalars = {"charge": charge}
    assert equivariance_error(model, pos, "E3", scalars=scalars, batch=batch) < default_tolerance(dtype)
    assert equivariance_error(model.backbone, pos, "E3", scalars=scalars, batch=batch) > 1e-2  # the check can fail
    with pytest.raises(ValueError, match="either batch= .* or mask="):
        model(dense_pos, charge=to_dense(charge, batch)[0], mask=mask, batch=batch)


@pytest.mark.parametrize("method", ["frame-averaging", "weighted-frames", "canonicalized"])
def test_potential_on_flat_pyg_batches_matches_padded_and_is_exact(method, dtype):
    """MolecularPotential on pos [M, 3], numbers [M], batch=[M] (molecules of 5, 4 and 5 atoms): the energies of the
    padded dense batch and the forces of its real atoms as flat rows; energies E(3)-invariant and forces E(3)-equivariant."""
    model = _potential(method).eval()
    pos, numbers = _toy_batch(dtype)
    mask = torch.ones_like(numbers, dtype=torch.bool)
    mask[1, 4] = False  # the second molecule loses its last atom
    batch = torch.arange(3)[:, None].expand_as(mask)[mask]
    energy, forces = model(pos[mask], numbers[mask], batch=batch)
    dense_energy, dense_forces = model(pos, numbers, mask)
    assert energy.shape == (3,) and forces.shape == (14, 3)
    torch.testing.assert_close(energy, dense_energy, atol=10 * default_tolerance(dtype), rtol=0)
    torch.testing.assert_close(forces, dense_forces[mask], atol=10 * default_tolerance(dtype), rtol=0)
    def flat_error(potential: torch.nn.Module, output: str, which: int) -> float:
        return equivariance_error(lambda p, numbers, batch: potential(p, numbers, batch=batch)[which], pos[mask], "E3", output,
                                  scalars={"numbers": numbers[mask]}, batch=batch, trials=2)

    for output, which in (("invariant", 0), ("vector", 1)):
        assert flat_error(model, output, which) < default_tolerance(dtype), output
    assert flat_error(_potential("augment").eval(), "vector", 1) > 1e-3  # the bare backbone fails the same check
    with pytest.raises(ValueError, match="per-point input positional argument 2 must have 14 rows"):
        model(pos[mask], numbers[mask][:-1], batch=batch)


def test_energy_gnn_coordinate_unit():
    from geocanon.nn.energy import EnergyGNN

    pos, numbers = _toy_batch(torch.float32)
    species = torch.nn.functional.one_hot(numbers.clamp_min(1) % 3, 3).float()
    torch.manual_seed(0)
    in_angstrom = EnergyGNN(3, hidden=8, layers=1)
    torch.manual_seed(0)
    in_cutoffs = EnergyGNN(3, hidden=8, layers=1, coordinate_unit=5.0)
    # same weights; the unit rescales only the coordinate inputs: scaling them back reproduces the Å model
    scaled = EnergyGNN(3, hidden=8, layers=1, coordinate_unit=5.0)
    scaled.load_state_dict(in_angstrom.state_dict())
    with torch.no_grad():
        scaled.coords.weight.mul_(5.0)
        for filt in scaled.filters:
            filt[0].weight[:, :3].mul_(5.0)
    torch.testing.assert_close(scaled(pos, species), in_angstrom(pos, species))
    assert not torch.allclose(in_cutoffs(pos, species), in_angstrom(pos, species))
    with pytest.raises(ValueError, match="coordinate_unit"):
        EnergyGNN(3, coordinate_unit=0.0)


def test_energy_gnn_without_pair_vectors_sees_coordinates_only_through_its_nodes():
    from geocanon.nn.energy import EnergyGNN

    pos, numbers = _toy_batch(torch.float64)
    species = torch.nn.functional.one_hot(numbers.clamp_min(1) % 3, 3).double()
    with default_dtype(torch.float64):
        torch.manual_seed(0)
        model = EnergyGNN(3, hidden=8, layers=2, num_rbf=6, coordinate_unit=5.0, pair_vectors=False)
    assert model.filters[0][0].in_features == 6  # distance features only
    # not invariant as it is (the node inputs hold absolute coordinates) ...
    assert equivariance_error(model, pos, "E3", "invariant", scalars={"species": species}, trials=2) > 1e-3
    # ... but without those node inputs every remaining input is a distance, so the energy is E(3)-invariant
    with torch.no_grad():
        model.coords.weight.zero_()
    assert equivariance_error(model, pos, "E3", "invariant", scalars={"species": species}, trials=2) < default_tolerance(torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_frame_averaging_with_invariant_filters_is_exact(dtype):
    cfg = MoleculesBenchConfig(hidden=16, layers=2, gnn_pair_vectors=False)
    with default_dtype(dtype):
        model = checkpoint.build(model_spec("frame-averaging", cfg, SPECIES, 5, energy_shift=-1.0, energy_scale=0.5)).eval()
    assert model.model.backbone.pair_vectors is False
    _assert_e3_exact(model, dtype)


@pytest.mark.parametrize("kind", ["mass", "heavy"])
@pytest.mark.parametrize("method", ["frame-averaging", "weighted-frames"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_weighted_atom_frames_are_exact_and_weigh_atoms_as_configured(kind, method, dtype):
    from ase.data import atomic_masses

    from geocanon.bench.molecules import atom_weights

    cfg = MoleculesBenchConfig(hidden=16, layers=2, fa_point_weights=kind)
    with default_dtype(dtype):
        model = checkpoint.build(model_spec(method, cfg, SPECIES, 5, energy_shift=-1.0, energy_scale=0.5)).eval()
        uniform = checkpoint.build(model_spec(method, MoleculesBenchConfig(hidden=16, layers=2), SPECIES, 5, energy_shift=-1.0, energy_scale=0.5)).eval()
    energy = model.model
    assert energy.point_weights == "species"
    expected = [atomic_masses[z] for z in SPECIES] if kind == "mass" else [0.0, 1.0, 1.0]  # heavy: hydrogen left out
    assert energy.point_weight_values == pytest.approx(expected) == atom_weights(kind, SPECIES)
    _assert_e3_exact(model, dtype)
    uniform.load_state_dict(model.state_dict())
    pos, numbers = _toy_batch(dtype)
    assert (model(pos, numbers)[1] - uniform(pos, numbers)[1]).abs().max() > 1e-4  # the weights move the frames
    from geocanon.bench.molecules import frames_per_structure
    from geocanon.canonicalizers.frame_averaging import weighted_pca_frames

    data = read_molecules_from(_toy_frames(3))
    weights = torch.tensor(expected)[torch.searchsorted(torch.tensor(SPECIES), data.numbers)]
    tolerance = energy.sign_tolerance or float("inf")
    _, frame_weights = weighted_pca_frames(data.pos, mask=data.mask, group="E3", sign_tolerance=tolerance, point_weights=weights)
    assert frames_per_structure(model, data) == pytest.approx((frame_weights > 0).sum(1).double().mean().item())


def test_atom_weights_reject_unknown_kinds():
    from geocanon.bench.molecules import atom_weights

    assert atom_weights("uniform", SPECIES) == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"fa_point_weights must be one of \('uniform', 'mass', 'heavy'\), got 'charge'"):
        MoleculesBenchConfig(fa_point_weights="charge")
    with pytest.raises(ValueError, match="fa_point_weights must be one of"):
        atom_weights("charge", SPECIES)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_frame_orientations_are_exact_and_multiply_the_backbone_calls(dtype):
    from geocanon.bench.molecules import frames_per_structure

    cfg = MoleculesBenchConfig(hidden=16, layers=2, fa_train_frames="random", fa_orientations=3)
    with default_dtype(dtype):
        model = checkpoint.build(model_spec("frame-averaging", cfg, SPECIES, 5, energy_shift=-1.0, energy_scale=0.5)).eval()
        single = checkpoint.build(model_spec("frame-averaging", MoleculesBenchConfig(hidden=16, layers=2), SPECIES, 5, energy_shift=-1.0, energy_scale=0.5)).eval()
    assert len(model.model.turns) == 3 and model.model.train_frames == "random"
    assert "orientations" not in single.model.geocanon_spec["config"]  # earlier runs' specs are unchanged
    _assert_e3_exact(model, dtype)
    single.load_state_dict(model.state_dict())
    pos, numbers = _toy_batch(dtype)
    assert (model(pos, numbers)[1] - single(pos, numbers)[1]).abs().max() > 1e-4  # the extra orientations are averaged
    assert frames_per_structure(model, read_molecules_from(_toy_frames(3))) == 24.0
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="fa_orientations must be a positive integer"):
            MoleculesBenchConfig(fa_orientations=bad)


def test_gaussian_rbf_is_the_gaussian_and_zero_where_it_would_underflow():
    from geocanon.nn.energy import RBF_FLOOR, gaussian_rbf

    distance = torch.linspace(0.0, 6.0, 301, dtype=torch.float64).requires_grad_(True)
    features = gaussian_rbf(distance, 64, 5.0)
    centres, width = torch.linspace(0.0, 5.0, 64, dtype=torch.float64), 5.0 / 63
    exponent = -0.5 * ((distance.detach()[:, None] - centres) / width) ** 2
    exact = torch.exp(exponent)
    assert (features.detach() - exact).abs().max() <= math.exp(RBF_FLOOR)
    near = exponent > RBF_FLOOR
    torch.testing.assert_close(features.detach()[near], exact[near], rtol=0, atol=0)
    assert (features.detach()[~near] == 0).all() and (~near).sum() > 1000  # most pairs of narrow Gaussians
    (grad,) = torch.autograd.grad(features.sum(), distance)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("method", ["frame-averaging", "weighted-frames", "schnet"])
def test_chunked_inference_gives_each_molecule_its_own_result(method):
    from geocanon.nn.energy import MolecularPotential

    with default_dtype(torch.float64):
        model = _potential(method).eval()
    pos, numbers = (x.repeat(3, 1, 1) if x.ndim == 3 else x.repeat(3, 1) for x in _toy_batch(torch.float64))  # 9 molecules
    numbers[1, -1] = 0  # a padded, 4-atom molecule in the first chunk
    whole = model(pos, numbers)  # autograd on: one pass, as in training
    assert model.inference_pairs == 4096
    model.inference_pairs = 2 * 25  # 2 molecules of 5 atoms per chunk: 5 chunks, the last one partial
    sizes: list[int] = []
    model.model.register_forward_hook(lambda module, args, kwargs, out: sizes.append(len(out)), with_kwargs=True)
    with torch.no_grad():
        chunked = model(pos, numbers)
    assert sizes == [2, 2, 2, 2, 1]
    for got, want in zip(chunked, whole):
        assert not got.requires_grad
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)
    assert (chunked[1][1, -1] == 0).all()
    with pytest.raises(ValueError, match="inference_pairs"):
        MolecularPotential([1, 6], model.model, inference_pairs=0)


@pytest.mark.parametrize("method", ["frame-averaging", "augment", "schnet"])
def test_potential_rejects_bad_input_whatever_its_model(method):
    with default_dtype(torch.float64):
        model = _potential(method).eval()
    pos, numbers = _toy_batch(torch.float64)
    with torch.no_grad():
        with pytest.raises(ValueError, match="empty"):
            model(torch.zeros(2, 0, 3, dtype=torch.float64), torch.zeros(2, 0, dtype=torch.long))
        with pytest.raises(ValueError, match=r"empty cloud\(s\) \[1\]"):
            model(pos, numbers.masked_fill(torch.arange(3)[:, None] == 1, 0))
        bad = pos.clone()
        bad[2, 0, 1] = float("nan")
        with pytest.raises(ValueError, match=r"NaN or Inf in cloud\(s\) \[2\]"):
            model(bad, numbers)
        with pytest.raises(ValueError, match=r"shape \[B, N, 3\]"):
            model(pos[..., :2], numbers)
        padded = numbers.clone()
        padded[0, -1] = 0
        bad[2, 0, 1] = pos[2, 0, 1]
        bad[0, -1] = float("nan")  # padding may hold anything
        energy, forces = model(bad, padded)
        assert torch.isfinite(energy).all() and torch.isfinite(forces).all()
