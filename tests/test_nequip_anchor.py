"""The NequIP anchor of the molecules benchmark: config, data files, a tiny nequip-train run, measurement.

Training data here is SYNTHETIC: jittered ethanol geometries labelled by ASE's EMT calculator (smooth,
instant). One tiny training (two epochs of a 2-layer, 8-feature NequIP on 12 frames, validated after the second
only, ~10 s on one thread, most of it nequip-train's start-up) is shared by the tests of the trained model.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("nequip")

from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from geocanon.bench import nequip_anchor
from geocanon.bench.molecules import MoleculesBenchConfig, run
from geocanon.bench.nequip_anchor import NequIPConfig, compile_model, compiled_for_timing, load, load_compiled, require_nequip, train, write_config, write_frames
from geocanon.data.molecules import from_atoms, read_molecules
from geocanon.testing import default_tolerance, equivariance_error

SPECIES = [1, 6, 8]
#: nequip-compile (AOTInductor) builds a shared library: without a C++ compiler the compiled model is not timed or tested
HAS_COMPILER = shutil.which("c++") is not None or shutil.which("g++") is not None
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="nequip-compile (AOTInductor) needs a C++ compiler")


def _emt_frames(n: int, seed: int) -> list:
    """SYNTHETIC labelled frames: ethanol jittered by N(0, 0.05²) Å, energies and forces from EMT."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    return frames


def _split_files(root: Path) -> dict[str, Path]:
    import ase.io

    paths = {}
    for i, (split, n) in enumerate((("train", 12), ("valid", 6), ("test", 6))):
        paths[split] = root / f"toy_{split}.extxyz"
        ase.io.write(paths[split], _emt_frames(n, seed=i), format="extxyz")
    return paths


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The benchmark run of method "nequip" alone on the EMT frames: (config, payload)."""
    root = tmp_path_factory.mktemp("nequip")
    paths = _split_files(root)
    cfg = MoleculesBenchConfig(
        molecule="toy", methods=["nequip"], seeds=[0], train_file=str(paths["train"]), valid_file=str(paths["valid"]),
        test_file=str(paths["test"]), n_train=12, n_valid=6, n_test=6, nequip_layers=2, nequip_features=8, max_epochs=2,
        batch_size=4, check_val_every_n_epoch=2, run_dir=str(root / "runs"), results=str(root / "results" / "molecules"),
        checkpoint_dir=str(root / "ckpt"), progress=False, time_compiled_nequip=HAS_COMPILER,
    )
    return cfg, run(cfg, nve_steps=3)


def test_write_config(tmp_path):
    settings = NequIPConfig(r_max=4.5, l_max=1, num_layers=2, num_features=16, seed=3, max_epochs=7, batch_size=5, lr=1e-3,
                            energy_weight=0.1, check_val_every_n_epoch=2, patience=4)
    path = write_config(tmp_path / "cfg" / "config.yaml", settings, SPECIES, tmp_path / "train.extxyz", tmp_path / "valid.extxyz", tmp_path / "run")
    config = yaml.safe_load(path.read_text())
    assert config["run"] == ["train"] and config["hydra"]["run"]["dir"] == str((tmp_path / "run").resolve())
    data, trainer, module = config["data"], config["trainer"], config["training_module"]
    assert data["train_file_path"] == str((tmp_path / "train.extxyz").resolve()) and data["seed"] == 3
    assert data["transforms"][0]["model_type_names"] == ["H", "C", "O"] and data["transforms"][1]["r_max"] == 4.5
    assert data["train_dataloader"] == {"_target_": "torch.utils.data.DataLoader", "batch_size": 5, "shuffle": True}
    assert trainer["max_epochs"] == 7 and trainer["check_val_every_n_epoch"] == 2
    assert [c["_target_"].rsplit(".", 1)[1] for c in trainer["callbacks"]] == ["ModelCheckpoint", "ModelCheckpoint", "EarlyStopping"]
    assert trainer["callbacks"][2]["patience"] == 4
    model = module["model"]
    assert (model["l_max"], model["num_layers"], model["num_features"], model["r_max"], model["type_names"]) == (1, 2, 16, 4.5, ["H", "C", "O"])
    assert model["avg_num_neighbors"] == "${training_data_stats:num_neighbors_mean}"  # resolved by nequip-train
    assert module["loss"]["coeffs"] == {"total_energy": 0.1, "forces": 1.0} and not module["loss"]["per_atom_energy"]
    assert module["optimizer"]["lr"] == 1e-3 and module["lr_scheduler"]["scheduler"]["T_max"] == 7
    unscheduled = yaml.safe_load(write_config(tmp_path / "b.yaml", NequIPConfig(scheduler="none"), SPECIES, "t", "v", tmp_path).read_text())
    assert "lr_scheduler" not in unscheduled["training_module"]
    with pytest.raises(ValueError, match="scheduler"):
        NequIPConfig(scheduler="step")


def test_written_frames_read_back_in_geocanon_and_nequip(tmp_path):
    from nequip.data import AtomicDataDict
    from nequip.data.dataset import ASEDataset

    data = from_atoms(_emt_frames(3, seed=5))
    path = write_frames(tmp_path / "f.extxyz", data)
    back = read_molecules(path, require_labels=True)
    torch.testing.assert_close(back.pos, data.pos)
    torch.testing.assert_close(back.energy, data.energy)
    torch.testing.assert_close(back.forces, data.forces)
    frame = ASEDataset(str(path))[1]
    np.testing.assert_allclose(frame[AtomicDataDict.TOTAL_ENERGY_KEY].numpy().ravel(), [data.energy[1].item()], atol=1e-7)
    np.testing.assert_allclose(frame[AtomicDataDict.FORCE_KEY].numpy(), data.forces[1].numpy(), atol=1e-7)  # extxyz: 8 decimals


def test_benchmark_trains_and_measures_nequip(trained):
    cfg, payload = trained
    entry = payload["molecules"]["toy"]
    assert entry["complete"] and payload["checkpoints"] == {} and entry["nve"] is None
    (row,) = entry["runs"]
    assert row["method"] == "nequip" and row["n"] == 6 and row["epochs_run"] == 2 and row["best_epoch"] == 1  # the one validation
    assert np.isfinite(row["energy_mae_mev"]) and np.isfinite(row["force_mae_mev_per_a"]) and row["force_mae_mev_per_a"] > 0
    assert row["force_equivariance_error"] < default_tolerance(torch.float32) and row["energy_invariance_error"] < default_tolerance(torch.float32)  # float32, E(3) incl. reflections
    assert row["parameters"] > 0 and row["train_time_s"] > 0 and row["inference_ms_per_structure"] > 0
    assert "frame_change_deg_median" not in row and "conditioning_frame" not in row
    (summary,) = entry["summary"]
    assert summary["equivariance_group"] == "E3" and summary["epochs"] == 2 and summary["frame_spearman"] is None
    timed = {"nequip", "nequip-compiled"} if HAS_COMPILER else {"nequip"}  # the compiled model is timed, not measured
    assert row["frames_per_structure"] == 1 and set(entry["timing"]["ms_per_structure"]) == set(entry["latency"]["ms_per_structure"]) == timed
    text = (Path(cfg.results).parent / "molecules.md").read_text()
    assert text.count("| nequip |") == 3 and text.count("| nequip-compiled |") == 2 * HAS_COMPILER  # summary, timing and latency tables


def test_resume_of_a_finished_run_does_not_train_again(trained):
    cfg, payload = trained
    run_dir = Path(cfg.run_dir) / "toy" / "nequip" / "seed0"
    log = (run_dir / "nequip-train.log").read_text()
    first = payload["molecules"]["toy"]["runs"][0]
    settings = NequIPConfig(num_layers=2, num_features=8, max_epochs=2, batch_size=4, check_val_every_n_epoch=2)
    result = train(settings, SPECIES, run_dir / "data" / "train.extxyz", run_dir / "data" / "valid.extxyz", run_dir, resume=True)
    assert result.train_time_s == first["train_time_s"] and result.best_epoch == first["best_epoch"]
    assert (run_dir / "nequip-train.log").read_text() == log


def test_loaded_model_matches_nequips_own_calculator_and_keeps_process_state(trained):
    import e3nn
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
    from nequip.integrations.ase import NequIPCalculator

    cfg, _ = trained
    run_dir = Path(cfg.run_dir) / "toy" / "nequip" / "seed0"
    e3nn_defaults = e3nn.get_optimization_defaults()
    model = load(run_dir / "checkpoints" / "best.ckpt", SPECIES)
    assert torch.get_default_dtype() == torch.float32 and e3nn.get_optimization_defaults() == e3nn_defaults
    frames = _emt_frames(2, seed=9)
    frames[1] = frames[1][[8, 0, 1, 2, 3, 4, 5, 6, 7]][:7]  # another atom order, fewer atoms: padded below
    data = from_atoms(frames).to(torch.float32)
    energy, forces = model(data.pos, data.numbers)
    assert energy.dtype == torch.float32 and forces.shape == data.pos.shape and (forces[1, 7:] == 0).all()
    types = ["H", "C", "O"]
    transforms = [ChemicalSpeciesToAtomTypeMapper(model_type_names=types, chemical_species_to_atom_type_map={t: t for t in types}),
                  NeighborListTransform(r_max=model.r_max)]
    calc = NequIPCalculator(model=model.model, device="cpu", transforms=transforms)
    for i, atoms in enumerate(frames):
        atoms = atoms.copy()
        atoms.positions = data.pos[i, : len(atoms)].double().numpy()
        atoms.calc = calc
        assert abs(atoms.get_potential_energy() - energy[i].item()) < 1e-4
        np.testing.assert_allclose(atoms.get_forces(), forces[i, : len(atoms)].numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="not among the model's species"):
        model(data.pos[:1], torch.where(data.numbers[:1] == 8, 7, data.numbers[:1]))
    with pytest.raises(ValueError, match="atom types"):
        load(run_dir / "checkpoints" / "best.ckpt", [1, 6])
    bad = data.pos.clone()
    bad[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or Inf in cloud\(s\) \[1\]"):
        model(bad, data.numbers)
    with pytest.raises(ValueError, match="empty cloud"):
        model(data.pos, torch.where(torch.arange(2)[:, None] == 0, 0, data.numbers))


@needs_compiler
def test_compiled_model_matches_the_eager_one(trained, tmp_path):
    cfg, _ = trained
    run_dir = Path(cfg.run_dir) / "toy" / "nequip" / "seed0"
    eager = load(run_dir / "checkpoints" / "best.ckpt", SPECIES)
    compiled = load_compiled(run_dir / "compiled" / "best.nequip.pt2", SPECIES)  # compiled by the benchmark run
    frames = _emt_frames(3, seed=11)
    frames[1] = frames[1][[8, 0, 1, 2, 3, 4, 5, 6, 7]][:6]  # another atom order, fewer atoms: padded below
    data = from_atoms(frames).to(torch.float32)
    for count in (1, 3):  # one molecule, and three in one graph: each molecule's energy is the sum over its own atoms
        (e_eager, f_eager), (e_compiled, f_compiled) = eager(data.pos[:count], data.numbers[:count]), compiled(data.pos[:count], data.numbers[:count])
        torch.testing.assert_close(e_compiled, e_eager, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(f_compiled, f_eager, atol=1e-4, rtol=1e-4)
    assert (f_compiled[1, 6:] == 0).all() and (e_compiled[0] - e_compiled[2]).abs() > 1e-6
    mask = data.numbers > 0  # E(3) with reflections and translations, float32 (the model's dtype): exact like the eager one
    for output, which in (("invariant", 0), ("vector", 1)):
        error = equivariance_error(lambda p, numbers, mask: compiled(p, numbers, mask)[which], data.pos, "E3", output,
                                   scalars={"numbers": data.numbers}, mask=mask, trials=4)
        assert error < default_tolerance(torch.float32), (output, error)
    compiled_file = run_dir / "compiled" / "best.nequip.pt2"
    written = compiled_file.stat().st_mtime_ns
    torch.testing.assert_close(compiled_for_timing(run_dir, SPECIES, resume=True)(data.pos, data.numbers)[1], f_compiled)
    assert compiled_file.stat().st_mtime_ns == written  # resumed: the compiled file is reused, not compiled again
    with pytest.raises(ValueError, match="atom types"):
        load_compiled(compiled_file, [1, 6])
    with pytest.raises(ValueError, match=r"NaN or Inf in cloud\(s\) \[1\]"):
        compiled(torch.where(torch.arange(3)[:, None, None] == 1, float("nan"), data.pos), data.numbers)
    with pytest.raises(ValueError, match=r"\.nequip\.pt2"):
        compile_model(run_dir / "checkpoints" / "best.ckpt", tmp_path / "model.pt2")
    with pytest.raises(RuntimeError, match="nequip-compile failed"):
        compile_model(tmp_path / "missing.ckpt", tmp_path / "model.nequip.pt2")


def test_missing_nequip_is_a_clear_error(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nequip" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'geocanon\[nequip\]'"):
        require_nequip()
    with pytest.raises(ImportError, match="nequip is not installed"):
        nequip_anchor.train(NequIPConfig(), SPECIES, "t.extxyz", "v.extxyz", tmp_path)
    paths = {s: tmp_path / f"missing_{s}.extxyz" for s in ("train", "valid", "test")}
    cfg = MoleculesBenchConfig(molecule="toy", methods=["schnet", "nequip"], train_file=str(paths["train"]), valid_file=str(paths["valid"]),
                               test_file=str(paths["test"]), run_dir=str(tmp_path / "runs"))
    with pytest.raises(ImportError, match="nequip is not installed"):  # before reading data or training schnet
        run(cfg)
