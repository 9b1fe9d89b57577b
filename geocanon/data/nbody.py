"""Charged-particle N-body data set (the SE(3)-Transformer / EGNN "charged5" benchmark).

Physics, exactly as the published generator (``ChargedParticlesSim`` of the NRI/EGNN code):

* charges ``q_i`` are +1 or -1 with equal probability, unit masses, no walls;
* force on particle i: ``F_i = sum_j q_i q_j (x_i - x_j) / |x_i - x_j|^3``, each component
  clipped to ``[-clip, clip]`` (published: ``clip = 0.1 / dt = 100``);
* symplectic Euler with ``dt = 0.001``: one initial kick ``v <- v + dt F(x_0)``, then for each
  step ``s = 1, 2, ...``: ``x <- x + dt v``; every ``record_every``-th step the state
  ``(x, v)`` is recorded (``v`` is the velocity that moved ``x`` there, i.e. before this step's
  kick); then ``v <- v + dt F(x)``. Recorded frame ``k`` is step ``record_every * (k + 1)``;
* initial positions ``~ N(0, 1)`` per coordinate, initial velocities of norm ``speed`` in a
  uniformly random direction.

A sample is (positions, velocities, charges) at frame ``frame_in`` (30) and the target positions
at frame ``frame_out`` (40). Generated splits are cached as ``<root>/nbody_<split>_<hash>.npz``
where the hash covers every setting that changes the trajectories; the published ``.npy`` files of
``charged5_initvel1small`` can be read instead (:meth:`NBodyDataset.from_published`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from ..frames import random_rotation

__all__ = [
    "SPLITS",
    "NBodyConfig",
    "NBodyDataset",
    "coulomb_forces",
    "nbody_energy",
    "sample_initial_state",
    "integrate",
    "simulate",
    "orientation_spread",
    "nbody_cache_path",
    "generate_nbody",
    "load_nbody",
]

SPLITS: tuple[str, ...] = ("train", "valid", "test")
# Bump when the generator changes in a way that alters the data: it is part of the cache hash.
_CACHE_VERSION = 1
_CACHE_KEYS = ("loc", "vel", "charges", "config")
_PUBLISHED_NAME = "charged5_initvel1small"


@dataclass(frozen=True)
class NBodyConfig:
    """Settings of the generated data set; the defaults are the published protocol.

    n_particles: particles per system. n_train / n_valid / n_test: simulations per split.
    dt, record_every, n_frames: integrator step, steps between recorded frames, recorded frames.
    clip: bound on each force component. speed: initial speed of every particle.
    seed: base seed; split ``s`` uses the numpy seed sequence ``[seed, SPLITS.index(s)]``.
    frame_in / frame_out: recorded frames used as input and target (not part of the cache hash,
    the cache holds whole trajectories).
    """

    n_particles: int = 5
    n_train: int = 3000
    n_valid: int = 2000
    n_test: int = 2000
    dt: float = 0.001
    record_every: int = 100
    n_frames: int = 49
    clip: float = 100.0
    speed: float = 0.5
    seed: int = 0
    frame_in: int = 30
    frame_out: int = 40

    @property
    def horizon(self) -> float:
        """Time from the input frame to the target frame (1.0 in the published protocol)."""
        return (self.frame_out - self.frame_in) * self.record_every * self.dt

    def __post_init__(self) -> None:
        if self.n_particles < 2:
            raise ValueError(f"NBodyConfig.n_particles must be >= 2, got {self.n_particles}")
        for name in ("n_train", "n_valid", "n_test", "record_every", "n_frames"):
            if getattr(self, name) < 1:
                raise ValueError(f"NBodyConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("dt", "clip", "speed"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"NBodyConfig.{name} must be finite and > 0, got {value}")
        if self.seed < 0:
            raise ValueError(f"NBodyConfig.seed must be >= 0, got {self.seed}")
        if not 0 <= self.frame_in < self.frame_out < self.n_frames:
            raise ValueError(
                "NBodyConfig needs 0 <= frame_in < frame_out < n_frames, got "
                f"frame_in={self.frame_in}, frame_out={self.frame_out}, n_frames={self.n_frames}"
            )

    def n_samples(self, split: str) -> int:
        """Number of simulations of ``split`` (one of :data:`SPLITS`)."""
        return getattr(self, f"n_{_check_split(split)}")

    def generation_key(self, split: str) -> dict[str, int | float | str | list[int]]:
        """Everything that determines the cached trajectories of ``split`` (hashed into the file name)."""
        return {
            "version": _CACHE_VERSION,
            "split": _check_split(split),
            "n_sims": self.n_samples(split),
            "n_particles": self.n_particles,
            "seed": [self.seed, SPLITS.index(split)],
            "dt": self.dt,
            "record_every": self.record_every,
            "n_frames": self.n_frames,
            "clip": self.clip,
            "speed": self.speed,
        }


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def _pair_indices(n_particles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (i, j), i < j, of all unordered particle pairs: two int64 tensors [P]."""
    i, j = torch.triu_indices(n_particles, n_particles, 1)
    return i, j


def _pair_forces(
    x: torch.Tensor, qq: torch.Tensor, i: torch.Tensor, j: torch.Tensor, clip: float | None
) -> torch.Tensor:
    """Clipped Coulomb forces in particle-major layout, unchecked (the integrator's inner loop).

    x: [N, 3, S] positions; qq: [P, S] products q_i q_j of the pairs (i [P], j [P]). Returns [N, 3, S].
    Particle-major layout with the simulations last and a pair list (not a dense [S, N, N, 3]
    difference tensor) makes every op a contiguous vector op: several times faster on CPU.
    """
    diff = x.index_select(0, i) - x.index_select(0, j)  # [P, 3, S]
    coef = qq * diff.square().sum(1).pow_(-1.5)  # [P, S]
    pair_force = coef.unsqueeze(1) * diff  # force on i from j; j gets the opposite
    forces = torch.zeros_like(x).index_add_(0, i, pair_force).index_add_(0, j, pair_force, alpha=-1.0)
    return forces if clip is None else forces.clamp_(-clip, clip)


def _check_system(pos: torch.Tensor, charge: torch.Tensor, where: str) -> None:
    if pos.ndim != 3 or pos.shape[-1] != 3 or pos.shape[1] < 2:
        raise ValueError(f"{where}: pos must be [S, N, 3] with N >= 2, got {tuple(pos.shape)}")
    if charge.shape != (*pos.shape[:2], 1):
        raise ValueError(
            f"{where}: charge must be [S, N, 1] = {(*pos.shape[:2], 1)}, got {tuple(charge.shape)}"
        )
    for name, t in (("pos", pos), ("charge", charge)):
        bad = (~torch.isfinite(t)).flatten(1).any(1).nonzero().flatten()
        if bad.numel():
            raise ValueError(f"{where}: {name} has NaN/Inf in system(s) {bad.tolist()}")
    i, j = _pair_indices(pos.shape[1])
    coincident = ((pos[:, i] - pos[:, j]).abs().amax(-1) == 0).any(1).nonzero().flatten()
    if coincident.numel():
        raise ValueError(f"{where}: coincident particles (infinite force) in system(s) {coincident.tolist()}")


def coulomb_forces(pos: torch.Tensor, charge: torch.Tensor, clip: float | None = 100.0) -> torch.Tensor:
    """Coulomb forces ``F_i = sum_j q_i q_j (x_i - x_j) / |x_i - x_j|^3``, component-wise clipped.

    pos: [S, N, 3]; charge: [S, N, 1]; clip: bound on each force component, None for no clipping.
    Returns [S, N, 3] in the dtype of ``pos``. Coincident particles raise ValueError.
    """
    _check_system(pos, charge, "coulomb_forces")
    i, j = _pair_indices(pos.shape[1])
    qq = (charge[:, i, 0] * charge[:, j, 0]).T.to(pos.dtype)  # [P, S]
    return _pair_forces(pos.permute(1, 2, 0), qq, i, j, clip).permute(2, 0, 1)


def nbody_energy(pos: torch.Tensor, vel: torch.Tensor, charge: torch.Tensor) -> torch.Tensor:
    """Total energy ``sum_i |v_i|^2 / 2 + sum_{i<j} q_i q_j / |x_i - x_j|`` (unit masses).

    pos, vel: [S, N, 3]; charge: [S, N, 1]. Returns [S]. (The force clipping makes the simulated
    dynamics conserve this only while no pair gets close enough for a component to exceed the clip.)
    """
    _check_system(pos, charge, "nbody_energy")
    if vel.shape != pos.shape:
        raise ValueError(f"nbody_energy: vel must have the shape of pos {tuple(pos.shape)}, got {tuple(vel.shape)}")
    i, j = _pair_indices(pos.shape[1])
    dist = (pos[:, i] - pos[:, j]).norm(dim=-1)  # [S, P]
    potential = (charge[:, i, 0] * charge[:, j, 0] / dist).sum(-1)
    return 0.5 * vel.square().sum((-1, -2)) + potential


def sample_initial_state(
    n_sims: int, n_particles: int = 5, *, speed: float = 0.5, seed: int | list[int] = 0
) -> dict[str, torch.Tensor]:
    """Random initial systems of the published protocol, float64.

    Returns ``pos`` [S, N, 3] ~ N(0, 1), ``vel`` [S, N, 3] of norm ``speed`` in uniformly random
    directions, ``charge`` [S, N, 1] in {-1, +1} with equal probability. ``seed`` seeds
    ``numpy.random.default_rng`` (an int or a list of ints), so the draw is stable across torch versions.
    """
    if n_sims < 1 or n_particles < 2:
        raise ValueError(f"sample_initial_state: need n_sims >= 1 and n_particles >= 2, got {n_sims}, {n_particles}")
    rng = np.random.default_rng(seed)
    charge = rng.choice(np.array([-1.0, 1.0]), size=(n_sims, n_particles, 1))
    pos = rng.standard_normal((n_sims, n_particles, 3))
    direction = rng.standard_normal((n_sims, n_particles, 3))
    vel = speed * direction / np.linalg.norm(direction, axis=-1, keepdims=True)
    return {"pos": torch.from_numpy(pos), "vel": torch.from_numpy(vel), "charge": torch.from_numpy(charge)}


def integrate(
    pos: torch.Tensor,
    vel: torch.Tensor,
    charge: torch.Tensor,
    *,
    n_frames: int = 49,
    dt: float = 1e-3,
    record_every: int = 100,
    clip: float | None = 100.0,
) -> dict[str, torch.Tensor]:
    """Run the published symplectic-Euler integrator from an initial state (see module docstring).

    pos, vel: [S, N, 3] at time 0 (before the initial kick); charge: [S, N, 1]. Computes in float64.
    Returns ``loc`` and ``vel`` [S, T, N, 3] (T = n_frames; frame k is step record_every * (k + 1),
    its velocity the one that moved the particles there) and ``charges`` [S, N, 1], all float64.
    Raises ValueError naming the systems whose trajectory became non-finite.
    """
    _check_system(pos, charge, "integrate")
    if vel.shape != pos.shape or not torch.isfinite(vel).all():
        raise ValueError(
            f"integrate: vel must be finite with the shape of pos {tuple(pos.shape)}, got {tuple(vel.shape)}"
        )
    if n_frames < 1 or record_every < 1 or not dt > 0:
        raise ValueError(
            f"integrate: need n_frames >= 1, record_every >= 1, dt > 0, got {n_frames}, {record_every}, {dt}"
        )
    i, j = _pair_indices(pos.shape[1])
    x = pos.to(torch.float64).permute(1, 2, 0).contiguous()  # [N, 3, S]
    v = vel.to(torch.float64).permute(1, 2, 0).contiguous()
    qq = (charge[:, i, 0] * charge[:, j, 0]).T.to(torch.float64).contiguous()  # [P, S]
    loc_out = torch.empty((n_frames, *x.shape), dtype=torch.float64)
    vel_out = torch.empty_like(loc_out)
    # Each op touches only ~10^4 numbers: intra-op threads barely help and, on shared cores, their
    # barriers slow the loop down several-fold, so it runs single-threaded (restored afterwards).
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        v.add_(_pair_forces(x, qq, i, j, clip), alpha=dt)
        for step in range(1, n_frames * record_every + 1):
            x.add_(v, alpha=dt)
            if step % record_every == 0:
                loc_out[step // record_every - 1] = x
                vel_out[step // record_every - 1] = v
            v.add_(_pair_forces(x, qq, i, j, clip), alpha=dt)
    finally:
        torch.set_num_threads(n_threads)
    loc_out = loc_out.permute(3, 0, 1, 2).contiguous()  # [S, T, N, 3]
    vel_out = vel_out.permute(3, 0, 1, 2).contiguous()
    bad = (~torch.isfinite(loc_out) | ~torch.isfinite(vel_out)).flatten(1).any(1).nonzero().flatten()
    if bad.numel():
        raise ValueError(f"integrate: trajectory became non-finite (particles collided) in system(s) {bad.tolist()}")
    return {"loc": loc_out, "vel": vel_out, "charges": charge.to(torch.float64).clone()}


def simulate(
    n_sims: int,
    n_particles: int = 5,
    *,
    n_frames: int = 49,
    dt: float = 1e-3,
    record_every: int = 100,
    clip: float | None = 100.0,
    speed: float = 0.5,
    seed: int | list[int] = 0,
) -> dict[str, torch.Tensor]:
    """Sample initial systems and integrate them: :func:`sample_initial_state` then :func:`integrate`.

    Returns ``loc``, ``vel`` [S, T, N, 3] and ``charges`` [S, N, 1] (float64), S = n_sims, T = n_frames.
    """
    init = sample_initial_state(n_sims, n_particles, speed=speed, seed=seed)
    return integrate(
        init["pos"], init["vel"], init["charge"], n_frames=n_frames, dt=dt, record_every=record_every, clip=clip
    )


def orientation_spread(
    pos: torch.Tensor,
    vel: torch.Tensor,
    charge: torch.Tensor,
    config: NBodyConfig = NBodyConfig(),
    *,
    orientations: int = 16,
    reflections: bool = True,
    seed: int = 0,
) -> torch.Tensor:
    """How much the simulator's outcome depends on how its input is oriented: [S] variance per system.

    The published force law clips each Cartesian *component* of the force, so in a close encounter
    (a component above ``clip``) the trajectory depends on the system's orientation with respect to the
    axes: the dynamics are equivariant under the 48 signed axis permutations but not under all rotations.
    Each system's input state (``pos``, ``vel`` at ``config.frame_in``) is turned by ``orientations``
    random elements R of O(3) (SO(3) without ``reflections``; seeded, the global RNG is untouched),
    integrated to ``config.frame_out`` with ``config``'s integrator, and turned back (Rᵀ y); returned is
    the unbiased variance over R of those target positions, averaged over particles and coordinates.

    Its mean over systems is the lowest expected test MSE any exactly E(3)- (O(3)-) equivariant predictor
    can reach on inputs in uniformly random orientations: such a predictor must give every orientation of
    a system the same turned-back answer, at best their mean. Translations change nothing (forces depend on
    differences only).

    Args:
        pos, vel: [S, N, 3] input states; charge: [S, N, 1].
        config: the data's protocol (``dt``, ``record_every``, ``clip``, ``frame_in``, ``frame_out``).
        orientations: number of random orientations per system (>= 2).
        reflections: sample from O(3) (True) or SO(3).
        seed: seed of the orientations.

    Returns:
        [S] float64 variances (0 up to rounding for systems whose forces never reach ``clip``).
    """
    _check_system(pos, charge, "orientation_spread")
    if vel.shape != pos.shape or not torch.isfinite(vel).all():
        raise ValueError(f"orientation_spread: vel must be finite with the shape of pos {tuple(pos.shape)}, got {tuple(vel.shape)}")
    if orientations < 2:
        raise ValueError(f"orientation_spread needs orientations >= 2 to estimate a variance, got {orientations}")
    generator = torch.Generator().manual_seed(seed)
    pos, vel = pos.to(torch.float64), vel.to(torch.float64)
    outcomes = []
    for _ in range(orientations):
        rot = random_rotation(pos.shape[0], reflections, torch.float64, None, generator)  # [S, 3, 3]
        turned = integrate(
            pos @ rot.transpose(1, 2), vel @ rot.transpose(1, 2), charge, n_frames=config.frame_out - config.frame_in,
            dt=config.dt, record_every=config.record_every, clip=config.clip,
        )["loc"][:, -1]  # fmt: skip
        outcomes.append(turned @ rot)  # back to the input's orientation
    return torch.stack(outcomes).var(0, unbiased=True).mean((1, 2))

def nbody_cache_path(root: str | os.PathLike[str], split: str, config: NBodyConfig = NBodyConfig()) -> Path:
    """Cache file ``<root>/nbody_<split>_<hash>.npz``, hash = sha256 of ``config.generation_key(split)``."""
    key = json.dumps(config.generation_key(split), sort_keys=True)
    return Path(root) / f"nbody_{split}_{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def _write_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` as .npz via a temporary file in the same folder and os.replace."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a cache is readable like any other data file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_cache(path: Path, config: NBodyConfig, split: str) -> dict[str, np.ndarray]:
    """Load and verify a cache file (keys, stored config, shapes, finiteness) -> ValueError naming it."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = set(_CACHE_KEYS) - set(npz.files)
            if missing:
                raise ValueError(f"missing arrays {sorted(missing)}")
            data = {k: npz[k] for k in _CACHE_KEYS}
        stored = json.loads(str(data["config"]))
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise ValueError(f"corrupt N-body cache file {path}: {err}; delete it to regenerate") from err
    if stored != json.loads(json.dumps(config.generation_key(split))):
        raise ValueError(f"N-body cache file {path} was made with {stored}, expected {config.generation_key(split)}")
    traj_shape = (config.n_samples(split), config.n_frames, config.n_particles, 3)
    expected = {"loc": traj_shape, "vel": traj_shape, "charges": (traj_shape[0], config.n_particles, 1)}
    for name, shape in expected.items():
        if data[name].shape != shape or data[name].dtype != np.float64 or not np.isfinite(data[name]).all():
            raise ValueError(
                f"corrupt N-body cache file {path}: {name} must be finite float64 {shape}, "
                f"got {data[name].dtype} {data[name].shape}"
            )
    return data


def _generate_split(root: Path, split: str, config: NBodyConfig) -> Path:
    """Simulate ``split`` and write its cache file (atomically); returns the path."""
    sim = simulate(
        config.n_samples(split),
        config.n_particles,
        n_frames=config.n_frames,
        dt=config.dt,
        record_every=config.record_every,
        clip=config.clip,
        speed=config.speed,
        seed=[config.seed, SPLITS.index(split)],
    )
    path = nbody_cache_path(root, split, config)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {k: sim[k].numpy() for k in ("loc", "vel", "charges")}
    _write_atomic(path, {**arrays, "config": np.array(json.dumps(config.generation_key(split)))})
    return path


def generate_nbody(
    root: str | os.PathLike[str], config: NBodyConfig = NBodyConfig(), splits: tuple[str, ...] = SPLITS
) -> dict[str, Path]:
    """Generate (or reuse, after verifying) the cache file of every split in ``splits``; returns {split: path}."""
    root = Path(root)
    paths = {}
    for split in splits:
        path = nbody_cache_path(root, split, config)
        if path.exists():
            _read_cache(path, config, split)
        else:
            _generate_split(root, split, config)
        paths[split] = path
    return paths


class NBodyDataset(Dataset):
    """Input/target pairs of the N-body task, stored as dense tensors for plain batching.

    Attributes: ``pos``, ``vel`` [S, N, 3] and ``charge`` [S, N, 1] at the input frame,
    ``target`` [S, N, 3] positions at the target frame. ``dataset[k]`` is the dict
    ``{"pos": [N, 3], "vel": [N, 3], "charge": [N, 1], "target": [N, 3]}`` (default collate works).
    """

    def __init__(
        self, pos: torch.Tensor, vel: torch.Tensor, charge: torch.Tensor, target: torch.Tensor
    ) -> None:
        if pos.ndim != 3 or pos.shape[-1] != 3:
            raise ValueError(f"NBodyDataset: pos must be [S, N, 3], got {tuple(pos.shape)}")
        shapes = {"vel": (vel, pos.shape), "target": (target, pos.shape), "charge": (charge, (*pos.shape[:2], 1))}
        for name, (t, shape) in shapes.items():
            if t.shape != shape:
                raise ValueError(f"NBodyDataset: {name} must be {tuple(shape)}, got {tuple(t.shape)}")
        self.pos, self.vel, self.charge, self.target = pos, vel, charge, target

    def __len__(self) -> int:
        return self.pos.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "pos": self.pos[index],
            "vel": self.vel[index],
            "charge": self.charge[index],
            "target": self.target[index],
        }

    @classmethod
    def _from_trajectories(
        cls, loc: np.ndarray, vel: np.ndarray, charges: np.ndarray, frame_in: int, frame_out: int, dtype: torch.dtype
    ) -> NBodyDataset:
        """loc, vel: [S, T, N, 3]; charges: [S, N, 1]."""

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)

        return cls(tensor(loc[:, frame_in]), tensor(vel[:, frame_in]), tensor(charges), tensor(loc[:, frame_out]))

    @classmethod
    def from_cache(
        cls,
        root: str | os.PathLike[str],
        split: str,
        config: NBodyConfig = NBodyConfig(),
        dtype: torch.dtype = torch.float32,
    ) -> NBodyDataset:
        """Load ``split`` from its cache file under ``root``, generating and caching it first if absent."""
        path = nbody_cache_path(root, split, config)
        if not path.exists():
            _generate_split(Path(root), split, config)
        data = _read_cache(path, config, split)
        return cls._from_trajectories(
            data["loc"], data["vel"], data["charges"], config.frame_in, config.frame_out, dtype
        )

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], frame_in: int = 30, frame_out: int = 40, dtype: torch.dtype = torch.float32
    ) -> NBodyDataset:
        """Load one cache file ``nbody_<split>_<hash>.npz`` as it is (its stored settings decide the
        sizes; nothing is generated). Corrupt or foreign files -> ValueError naming the file."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                key = json.loads(str(npz["config"]))
            split = key["split"]
            config = NBodyConfig(
                n_particles=key["n_particles"], seed=key["seed"][0], dt=key["dt"], record_every=key["record_every"],
                n_frames=key["n_frames"], clip=key["clip"], speed=key["speed"], frame_in=frame_in, frame_out=frame_out,
                **{f"n_{split}": key["n_sims"]},
            )
        except (OSError, EOFError, KeyError, TypeError, zipfile.BadZipFile, ValueError) as err:
            raise ValueError(f"{path} is not a readable N-body cache file: {err}") from err
        data = _read_cache(path, config, split)
        return cls._from_trajectories(data["loc"], data["vel"], data["charges"], frame_in, frame_out, dtype)

    @classmethod
    def from_published(
        cls,
        root: str | os.PathLike[str],
        split: str,
        *,
        max_samples: int | None = None,
        frame_in: int = 30,
        frame_out: int = 40,
        name: str = _PUBLISHED_NAME,
        dtype: torch.dtype = torch.float32,
    ) -> NBodyDataset:
        """Read the published ``.npy`` layout: ``<root>/{loc,vel,charges}_{split}_{name}.npy``.

        loc, vel: [S, T, 3, N] (coordinates before particles); charges: [S, N, 1]. The ``edges_*``
        file is not read: it is ``charges @ charges.T``. Keeps the first ``max_samples`` systems
        (EGNN trains on the first 3000 of 10000). Missing file -> FileNotFoundError saying how to make it.
        """
        _check_split(split)
        root = Path(root)
        arrays = {}
        for kind in ("loc", "vel", "charges"):
            path = root / f"{kind}_{split}_{name}.npy"
            if not path.is_file():
                raise FileNotFoundError(
                    f"published N-body file {path} not found. It is produced by the EGNN repository "
                    "(github.com/vgsatorras/egnn): `cd n_body_system/dataset && python -u generate_dataset.py "
                    "--num-train 10000 --seed 43 --sufix small`, then copy its .npy files into "
                    f"{root}. It cannot be downloaded here; use source='generated' to simulate instead."
                )
            try:
                arrays[kind] = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise ValueError(f"cannot read published N-body file {path}: {err}") from err
        loc, vel, charges = arrays["loc"], arrays["vel"], arrays["charges"]
        where = f"published N-body files {root}/*_{split}_{name}.npy"
        if loc.ndim != 4 or loc.shape[2] != 3 or vel.shape != loc.shape:
            raise ValueError(f"{where}: loc and vel must both be [S, T, 3, N], got {loc.shape} and {vel.shape}")
        n_sims, n_frames, _, n_particles = loc.shape
        if charges.shape != (n_sims, n_particles, 1):
            raise ValueError(f"{where}: charges must be [S, N, 1] = {(n_sims, n_particles, 1)}, got {charges.shape}")
        if not 0 <= frame_in < frame_out < n_frames:
            raise ValueError(f"{where}: need 0 <= frame_in < frame_out < T = {n_frames}, got {frame_in}, {frame_out}")
        if max_samples is not None:
            if not 1 <= max_samples <= n_sims:
                raise ValueError(f"{where}: max_samples={max_samples} but the files hold {n_sims} systems")
            loc, vel, charges = loc[:max_samples], vel[:max_samples], charges[:max_samples]
        for kind, a in (("loc", loc), ("vel", vel), ("charges", charges)):
            if not np.isfinite(a).all():
                raise ValueError(f"{where}: {kind} contains NaN/Inf")
        return cls._from_trajectories(
            loc.transpose(0, 1, 3, 2), vel.transpose(0, 1, 3, 2), charges, frame_in, frame_out, dtype
        )


def load_nbody(
    root: str | os.PathLike[str],
    split: str,
    config: NBodyConfig = NBodyConfig(),
    source: Literal["generated", "published"] = "generated",
    dtype: torch.dtype = torch.float32,
) -> NBodyDataset:
    """Load one split: ``"generated"`` uses the cache under ``root`` (simulating it on first use),
    ``"published"`` reads the EGNN ``charged5_initvel1small`` .npy files from ``root``, keeping the
    first ``config.n_samples(split)`` systems and ``config.frame_in`` / ``frame_out``."""
    if source == "generated":
        return NBodyDataset.from_cache(root, split, config, dtype)
    if source == "published":
        return NBodyDataset.from_published(
            root,
            split,
            max_samples=config.n_samples(split),
            frame_in=config.frame_in,
            frame_out=config.frame_out,
            dtype=dtype,
        )
    raise ValueError(f"load_nbody: source must be 'generated' or 'published', got {source!r}")
