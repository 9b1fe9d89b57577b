"""Tests of geocanon.data.nbody: physics, recording convention, cache, published layout."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from geocanon.data import nbody
from geocanon.data.nbody import (
    NBodyConfig,
    NBodyDataset,
    coulomb_forces,
    generate_nbody,
    integrate,
    load_nbody,
    nbody_cache_path,
    nbody_energy,
    orientation_spread,
    sample_initial_state,
    simulate,
)

# Small generated config for cache tests: 3 short splits, frames 2 -> 3 of 4.
SMALL = NBodyConfig(
    n_particles=4, n_train=6, n_valid=4, n_test=3, n_frames=4, record_every=10, frame_in=2, frame_out=3
)


def naive_forces(pos: list[list[float]], q: list[float], clip: float | None) -> list[list[float]]:
    """Scalar double loop over pairs: the textbook Coulomb force, independent of the library."""
    n = len(pos)
    out = []
    for a in range(n):
        f = [0.0, 0.0, 0.0]
        for b in range(n):
            if a == b:
                continue
            r = [pos[a][k] - pos[b][k] for k in range(3)]
            dist = math.sqrt(r[0] ** 2 + r[1] ** 2 + r[2] ** 2)
            for k in range(3):
                f[k] += q[a] * q[b] * r[k] / dist**3
        if clip is not None:
            f = [min(max(c, -clip), clip) for c in f]
        out.append(f)
    return out


def test_forces_match_naive_double_loop() -> None:
    init = sample_initial_state(3, 4, seed=11)
    pos, q = init["pos"], init["charge"]
    for clip in (None, 100.0, 0.5):
        got = coulomb_forces(pos, q, clip=clip)
        for s in range(3):
            ref = naive_forces(pos[s].tolist(), q[s, :, 0].tolist(), clip)
            torch.testing.assert_close(got[s], torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_like_charges_repel() -> None:
    pos = torch.tensor([[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]]], dtype=torch.float64)
    q = torch.tensor([[[1.0], [1.0]]], dtype=torch.float64)
    forces = coulomb_forces(pos, q)
    torch.testing.assert_close(forces[0, 0], torch.tensor([-0.25, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(coulomb_forces(pos, -q * torch.tensor([[[1.0], [-1.0]]]))[0, 0], -forces[0, 0])


def test_newton_third_law_without_clipping() -> None:
    init = sample_initial_state(32, 5, seed=3)
    forces = coulomb_forces(init["pos"], init["charge"], clip=None)
    scale = forces.abs().amax((1, 2))
    assert (forces.sum(1).abs().amax(-1) <= 1e-12 * scale).all()
    # Where no component reaches the clip, the clipped forces are the same and also sum to zero.
    unclipped = scale < 100.0
    assert unclipped.sum() >= 16
    clipped = coulomb_forces(init["pos"], init["charge"])[unclipped]
    torch.testing.assert_close(clipped, forces[unclipped], rtol=0, atol=0)


def test_clipping_is_component_wise() -> None:
    # Two like charges 0.01 apart along (3, 4, 0)/5 plus a third far away: |F| ~ 1e4 on the pair.
    direction = torch.tensor([0.6, 0.8, 0.0], dtype=torch.float64)
    pos = torch.stack([torch.zeros(3, dtype=torch.float64), 0.01 * direction, torch.tensor([0.0, 0.0, 10.0])])[None]
    q = torch.ones(1, 3, 1, dtype=torch.float64)
    raw = coulomb_forces(pos, q, clip=None)[0]
    clipped = coulomb_forces(pos, q, clip=100.0)[0]
    assert raw[:2, :2].abs().min() > 1000.0  # x and y components far beyond the clip
    torch.testing.assert_close(clipped[:2, :2], 100.0 * raw[:2, :2].sign(), rtol=0, atol=0)
    # The small z components (from the far particle) are below the clip and left untouched.
    assert raw[:, 2].abs().max() < 100.0
    torch.testing.assert_close(clipped[:, 2], raw[:, 2], rtol=0, atol=0)


def naive_integrate(pos, vel, q, n_frames, dt, record_every, clip):  # type: ignore[no-untyped-def]
    """Scalar loop transcription of the published integrator for one system."""
    x = [list(p) for p in pos]
    v = [list(p) for p in vel]
    f = naive_forces(x, q, clip)
    v = [[v[a][k] + dt * f[a][k] for k in range(3)] for a in range(len(x))]
    loc_out, vel_out = [], []
    for step in range(1, n_frames * record_every + 1):
        x = [[x[a][k] + dt * v[a][k] for k in range(3)] for a in range(len(x))]
        if step % record_every == 0:
            loc_out.append([p[:] for p in x])
            vel_out.append([p[:] for p in v])
        f = naive_forces(x, q, clip)
        v = [[v[a][k] + dt * f[a][k] for k in range(3)] for a in range(len(x))]
    return loc_out, vel_out


def test_integrate_matches_naive_loop_integrator() -> None:
    init = sample_initial_state(2, 4, seed=5)
    out = integrate(init["pos"], init["vel"], init["charge"], n_frames=2, dt=1e-3, record_every=100, clip=100.0)
    assert out["loc"].shape == (2, 2, 4, 3) and out["vel"].shape == (2, 2, 4, 3)
    for s in range(2):
        loc, vel = naive_integrate(
            init["pos"][s].tolist(), init["vel"][s].tolist(), init["charge"][s, :, 0].tolist(), 2, 1e-3, 100, 100.0
        )
        torch.testing.assert_close(out["loc"][s], torch.tensor(loc, dtype=torch.float64), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out["vel"][s], torch.tensor(vel, dtype=torch.float64), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out["charges"], init["charge"])


def test_recorded_velocity_is_the_one_that_moved_the_particles() -> None:
    dt = 1e-3
    init = sample_initial_state(4, 5, seed=9)
    out = integrate(init["pos"], init["vel"], init["charge"], n_frames=20, dt=dt, record_every=1)
    loc, vel = out["loc"], out["vel"]
    # Frame k is step k + 1: x_{k+1} = x_k + dt * v_recorded(k + 1), also from the initial state.
    torch.testing.assert_close(loc[:, 1:] - loc[:, :-1], dt * vel[:, 1:], rtol=0, atol=1e-15)
    kicked = init["vel"] + dt * coulomb_forces(init["pos"], init["charge"])
    torch.testing.assert_close(loc[:, 0], init["pos"] + dt * kicked, rtol=0, atol=1e-15)
    torch.testing.assert_close(vel[:, 0], kicked, rtol=0, atol=1e-15)



def _encounter_and_quiet_systems() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two 2-particle systems: opposite charges passing 0.04 apart at speed 1 (forces far above the clip of
    100 near closest approach), and the same pair 10 apart at rest (forces 0.01, never clipped)."""
    pos = torch.tensor([[[-0.3, 0.02, 0.0], [0.3, -0.02, 0.0]], [[-5.0, 0.0, 0.0], [5.0, 0.0, 0.0]]], dtype=torch.float64)
    vel = torch.tensor([[[0.5, 0.0, 0.0], [-0.5, 0.0, 0.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]], dtype=torch.float64)
    charge = torch.tensor([[[1.0], [-1.0]], [[1.0], [-1.0]]], dtype=torch.float64)
    return pos, vel, charge


def test_clipped_dynamics_depend_on_orientation_only_beyond_axis_permutations() -> None:
    """Why exact models have a floor: component-wise clipping commutes with signed axis permutations (exactly)
    but not with a general rotation, which changes where a clipped encounter ends up."""
    pos, vel, charge = _encounter_and_quiet_systems()
    end = lambda p, v: integrate(p, v, charge, n_frames=10)["loc"][:, -1]  # noqa: E731
    reference = end(pos, vel)
    perm = torch.tensor([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.equal(end(pos @ perm.T, vel @ perm.T) @ perm, reference)
    c, s = math.cos(0.3), math.sin(0.3)
    turn = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    moved = ((end(pos @ turn.T, vel @ turn.T) @ turn - reference) ** 2).sum((1, 2))
    assert moved[0] > 1e-4 and moved[1] < 1e-20


def test_orientation_spread_is_zero_without_clipping_and_seeded() -> None:
    pos, vel, charge = _encounter_and_quiet_systems()
    spread = orientation_spread(pos, vel, charge, orientations=6)
    assert spread.shape == (2,) and spread.dtype == torch.float64
    assert spread[0] > 1e-5 and spread[1] < 1e-20
    unclipped = orientation_spread(pos, vel, charge, NBodyConfig(clip=1e12), orientations=6)
    assert unclipped.max() < 1e-12  # without the clip the dynamics are E(3)-equivariant: nothing to spread
    assert torch.equal(orientation_spread(pos, vel, charge, orientations=6), spread)
    assert not torch.equal(orientation_spread(pos, vel, charge, orientations=6, seed=1), spread)
    with pytest.raises(ValueError, match="orientations >= 2"):
        orientation_spread(pos, vel, charge, orientations=1)
    with pytest.raises(ValueError, match=r"orientation_spread: pos has NaN/Inf in system\(s\) \[1\]"):
        orientation_spread(pos.index_put((torch.tensor(1), torch.tensor(0), torch.tensor(2)), torch.tensor(float("nan"), dtype=torch.float64)), vel, charge)
    with pytest.raises(ValueError, match="orientation_spread: pos must be"):
        orientation_spread(pos[..., :2], vel[..., :2], charge)
    with pytest.raises(ValueError, match="orientation_spread: vel must be finite"):
        orientation_spread(pos, vel[:, :1], charge)

def test_initial_state_distribution() -> None:
    init = sample_initial_state(400, 5, speed=0.5, seed=0)
    torch.testing.assert_close(init["vel"].norm(dim=-1), torch.full((400, 5), 0.5, dtype=torch.float64))
    assert set(init["charge"].unique().tolist()) == {-1.0, 1.0}
    assert abs(init["charge"].mean().item()) < 0.1  # 2000 fair +-1 draws: std of the mean ~0.022
    assert abs(init["pos"].std().item() - 1.0) < 0.05 and abs(init["pos"].mean().item()) < 0.05
    assert init["vel"].mean((0, 1)).abs().max() < 0.03  # no preferred direction


def test_energy_conserved_without_close_encounters() -> None:
    # Every step recorded over the full 4900-step run; systems whose pairs stay > 0.5 apart never
    # come near the clip. Measured max relative drift on them: 1.3e-3 (seed 7).
    sim = simulate(16, 5, seed=7, n_frames=4900, record_every=1)
    loc, vel, q = sim["loc"], sim["vel"], sim["charges"]
    n_sims, n_steps = loc.shape[:2]
    i, j = torch.triu_indices(5, 5, 1)
    far = (loc[:, :, i] - loc[:, :, j]).norm(dim=-1).amin((1, 2)) > 0.5
    assert far.sum() >= 3
    energy = nbody_energy(loc.flatten(0, 1), vel.flatten(0, 1), q.repeat_interleave(n_steps, 0)).view(n_sims, n_steps)
    kinetic = 0.5 * vel[:, 0].square().sum((-1, -2))
    scale = kinetic + (energy[:, 0] - kinetic).abs()
    drift = (energy - energy[:, :1]).abs().amax(1) / scale
    assert drift[far].max() < 2e-3


def test_energy_of_a_known_state() -> None:
    pos = torch.tensor([[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 4.0, 0.0]]], dtype=torch.float64)
    vel = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]], dtype=torch.float64)
    q = torch.tensor([[[1.0], [-1.0], [1.0]]], dtype=torch.float64)
    expected = 0.5 * (1 + 4) + (-1 / 2 + 1 / 4 - 1 / math.sqrt(20))
    torch.testing.assert_close(nbody_energy(pos, vel, q), torch.tensor([expected], dtype=torch.float64))


def test_bad_inputs_raise() -> None:
    pos = torch.zeros(2, 3, 3, dtype=torch.float64)
    pos[0] = torch.eye(3, dtype=torch.float64)
    q = torch.ones(2, 3, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"coincident particles .*\[1\]"):
        coulomb_forces(pos, q)
    with pytest.raises(ValueError, match="charge must be"):
        coulomb_forces(pos, q[:, :2])
    with pytest.raises(ValueError, match="split must be one of"):
        nbody_cache_path("x", "val")
    with pytest.raises(ValueError, match="frame_out"):
        NBodyConfig(n_frames=40)
    with pytest.raises(ValueError, match="n_particles"):
        NBodyConfig(n_particles=1)


def test_determinism_and_distinct_splits(tmp_path: Path) -> None:
    a = simulate(8, 5, n_frames=3, record_every=20, seed=[1, 0])
    b = simulate(8, 5, n_frames=3, record_every=20, seed=[1, 0])
    c = simulate(8, 5, n_frames=3, record_every=20, seed=[1, 1])
    for key in ("loc", "vel", "charges"):
        assert torch.equal(a[key], b[key])
    assert not torch.allclose(a["loc"], c["loc"])
    equal_sizes = replace(SMALL, n_train=4, n_valid=4, n_test=4)
    splits = [load_nbody(tmp_path, split, equal_sizes).pos for split in ("train", "valid", "test")]
    for k in range(3):
        assert not torch.allclose(splits[k], splits[k - 1])
    assert torch.equal(load_nbody(tmp_path / "again", "valid", equal_sizes).pos, splits[1])
    other_seed = load_nbody(tmp_path / "other", "train", replace(equal_sizes, seed=1))
    assert not torch.allclose(other_seed.pos, splits[0])


def test_cache_round_trip_reads_file_without_regenerating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_nbody(tmp_path, "train", SMALL)
    path = nbody_cache_path(tmp_path, "train", SMALL)
    assert path.exists() and path.name.startswith("nbody_train_")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file left behind
    mtime = path.stat().st_mtime_ns

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("simulate called although the cache exists")

    monkeypatch.setattr(nbody, "simulate", fail)
    second = load_nbody(tmp_path, "train", SMALL)
    assert generate_nbody(tmp_path, SMALL, splits=("train",)) == {"train": path}
    assert path.stat().st_mtime_ns == mtime
    for name in ("pos", "vel", "charge", "target"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    assert first.pos.dtype == torch.float32 and first.pos.shape == (6, 4, 3) and first.charge.shape == (6, 4, 1)
    # The dataset is the frames of the cached trajectories, and a different config -> a different file.
    with np.load(path) as npz:
        torch.testing.assert_close(first.target, torch.from_numpy(npz["loc"][:, 3]).float())
        torch.testing.assert_close(first.vel, torch.from_numpy(npz["vel"][:, 2]).float())
    assert nbody_cache_path(tmp_path, "train", replace(SMALL, n_train=7)) != path
    assert nbody_cache_path(tmp_path, "train", replace(SMALL, frame_in=1)) == path


def test_interrupted_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_savez = np.savez
    final = nbody_cache_path(tmp_path, "test", SMALL)

    def interrupted_savez(file: object, **arrays: np.ndarray) -> None:
        real_savez(file, loc=arrays["loc"])  # part of the content reaches the disk, then the process is interrupted
        # Mid-write, the data goes to a temporary file in the same folder, never to the final path.
        assert not final.exists() and len(list(tmp_path.iterdir())) == 1
        raise KeyboardInterrupt

    monkeypatch.setattr(nbody.np, "savez", interrupted_savez)
    with pytest.raises(KeyboardInterrupt):  # an AssertionError from interrupted_savez would fail here
        generate_nbody(tmp_path, SMALL, splits=("test",))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(nbody.np, "savez", real_savez)
    paths = generate_nbody(tmp_path, SMALL, splits=("test",))
    assert sorted(tmp_path.iterdir()) == [paths["test"]]


def test_corrupt_cache_file_raises_naming_it(tmp_path: Path) -> None:
    path = nbody_cache_path(tmp_path, "valid", SMALL)
    path.write_bytes(b"not an npz file")
    with pytest.raises(ValueError, match=path.name):
        load_nbody(tmp_path, "valid", SMALL)
    with pytest.raises(ValueError, match=path.name):  # generate_nbody verifies an existing file too
        generate_nbody(tmp_path, SMALL, splits=("valid",))
    generate_nbody(tmp_path / "good", SMALL, splits=("valid",))
    good = nbody_cache_path(tmp_path / "good", "valid", SMALL).read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ValueError, match=path.name):
        load_nbody(tmp_path, "valid", SMALL)
    with np.load(tmp_path / "good" / path.name) as npz:
        arrays = {k: npz[k] for k in npz.files}
    np.savez(path, **{**arrays, "loc": arrays["loc"][:, :, :2]})  # wrong shape
    with pytest.raises(ValueError, match=rf"{path.name}.*loc must be"):
        load_nbody(tmp_path, "valid", SMALL)
    # A sound file of another config put under this config's name is refused as well.
    other = generate_nbody(tmp_path / "other", replace(SMALL, seed=5), splits=("valid",))["valid"]
    os.replace(other, path)
    with pytest.raises(ValueError, match=rf"{path.name} was made with"):
        load_nbody(tmp_path, "valid", SMALL)


def write_published_fixture(root: Path, split: str, n_sims: int, n_frames: int, n_particles: int) -> np.ndarray:
    """Test fixture: fake arrays in the published layout; loc[s, t, c, n] encodes its own indices."""
    s, t, c, n = np.meshgrid(*(np.arange(k) for k in (n_sims, n_frames, 3, n_particles)), indexing="ij")
    loc = 1000.0 * s + 10.0 * t + 0.1 * c + 0.001 * n
    charges = np.where(np.arange(n_sims * n_particles) % 3 == 0, 1.0, -1.0).reshape(n_sims, n_particles, 1)
    np.save(root / f"loc_{split}_charged5_initvel1small.npy", loc)
    np.save(root / f"vel_{split}_charged5_initvel1small.npy", -loc)
    np.save(root / f"charges_{split}_charged5_initvel1small.npy", charges)
    np.save(root / f"edges_{split}_charged5_initvel1small.npy", charges @ charges.transpose(0, 2, 1))
    return loc


def test_published_layout_round_trip(tmp_path: Path) -> None:
    loc = write_published_fixture(tmp_path, "valid", n_sims=4, n_frames=49, n_particles=5)
    ds = NBodyDataset.from_published(tmp_path, "valid")
    assert ds.pos.shape == (4, 5, 3) and ds.charge.shape == (4, 5, 1) and ds.pos.dtype == torch.float32
    expected_pos = torch.from_numpy(loc[:, 30].transpose(0, 2, 1))  # [S, 3, N] -> [S, N, 3]
    torch.testing.assert_close(ds.pos, expected_pos.float())
    torch.testing.assert_close(ds.vel, -expected_pos.float())
    torch.testing.assert_close(ds.target, torch.from_numpy(loc[:, 40].transpose(0, 2, 1)).float())
    assert ds.pos[2, 4, 1].item() == pytest.approx(2000 + 300 + 0.1 + 0.004)  # sim 2, particle 4, y, frame 30
    # load_nbody keeps the first config.n_valid systems, like EGNN's max_samples.
    sub = load_nbody(tmp_path, "valid", NBodyConfig(n_valid=3), source="published", dtype=torch.float64)
    assert len(sub) == 3 and sub.pos.dtype == torch.float64
    torch.testing.assert_close(sub.target, torch.from_numpy(loc[:3, 40].transpose(0, 2, 1)))
    with pytest.raises(ValueError, match="max_samples=5"):
        load_nbody(tmp_path, "valid", NBodyConfig(n_valid=5), source="published")


def test_published_missing_or_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"loc_test_charged5_initvel1small\.npy.*generate_dataset\.py"):
        load_nbody(tmp_path, "test", source="published")
    write_published_fixture(tmp_path, "test", n_sims=2, n_frames=49, n_particles=5)
    os.remove(tmp_path / "charges_test_charged5_initvel1small.npy")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "charges_test_charged5_initvel1small.npy")):
        NBodyDataset.from_published(tmp_path, "test")
    np.save(tmp_path / "charges_test_charged5_initvel1small.npy", np.ones((2, 4, 1)))
    with pytest.raises(ValueError, match="charges must be"):
        NBodyDataset.from_published(tmp_path, "test")
    write_published_fixture(tmp_path, "train", n_sims=2, n_frames=35, n_particles=5)
    with pytest.raises(ValueError, match="T = 35"):
        NBodyDataset.from_published(tmp_path, "train")


def test_published_protocol_end_to_end(tmp_path: Path) -> None:
    # Full published protocol (4900 steps, frames 30 -> 40), only fewer systems per split.
    config = NBodyConfig(n_train=24, n_valid=8, n_test=8)
    paths = generate_nbody(tmp_path, config)
    assert sorted(tmp_path.iterdir()) == sorted(paths.values())
    train = load_nbody(tmp_path, "train", config)
    batch = next(iter(DataLoader(train, batch_size=8)))
    assert batch["pos"].shape == (8, 5, 3) and batch["charge"].shape == (8, 5, 1)
    assert torch.equal(batch["target"], train.target[:8])
    # One second of motion: displacement is of the order of the speed (0.5 initially), and finite.
    step = (train.target - train.pos).norm(dim=-1)
    assert torch.isfinite(step).all() and 0.1 < step.median() < 3.0
