"""SyntheticShapes: a procedurally generated (synthetic, not real-world) labelled point-cloud set.

Needs no download: it is the default data for demos and CI. Each shape is a triangle mesh with random
proportions (open3d's ``TriangleMesh.create_*`` where open3d has the primitive; tubes and extruded
letters are built here), sampled area-weighted, in an upright canonical pose (z-up; optionally a
random rotation about z), centred at its mean, scaled to the unit sphere, with small Gaussian noise
and normalised again (farthest point at radius exactly 1). Overall size carries no information (it
is removed by the normalisation); proportions do.

The classes ``helix_left`` and ``helix_right`` are mirror images of each other (same parameters
drawn, curve reflected ``y -> -y``): a classifier made invariant to O(3) (reflections included)
cannot tell them apart, while an SO(3)-invariant one can. Every other class is closed under
reflection (a reflected box is still a box), so O(3) and SO(3) canonicalization differ only there.

Every shape has its own generator seeded from ``(seed, split, class, index)``: the data set is
deterministic by seed, train/val/test differ, and a shape does not depend on ``n_per_class``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import open3d as o3d
import torch
from torch import Tensor
from torch.utils.data import Dataset

from geocanon.data.mesh_io import normalize_unit_sphere, sample_surface

__all__ = ["SyntheticShapes", "make_shape", "helix_curve"]

Mesh = tuple[np.ndarray, np.ndarray]  # vertices [V, 3] float64, triangles [F, 3] int64
_SPLITS = ("train", "val", "test")


def _o3d(mesh: o3d.geometry.TriangleMesh) -> Mesh:
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.triangles, dtype=np.int64)


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g, dtype=torch.float64))


def _stretch(g: torch.Generator, low: float = 0.75, high: float = 1.3) -> np.ndarray:
    """Random per-axis proportions [3]."""
    return np.array([_uniform(g, low, high) for _ in range(3)])


def helix_curve(turns: float, radius: float, pitch: float, handedness: int, num: int) -> np.ndarray:
    """Points on a helix about the z axis: ``(r cos t, h r sin t, pitch t / 2pi)``, t in [0, 2pi turns].

    Args:
        turns: number of turns; radius: r; pitch: rise per turn; handedness: +1 right-handed,
            -1 left-handed (the mirror image ``y -> -y`` of the right-handed curve); num: K.

    Returns:
        [K, 3] float64.
    """
    if handedness not in (1, -1):
        raise ValueError(f"handedness must be +1 (right) or -1 (left), got {handedness}")
    t = np.linspace(0.0, 2 * math.pi * turns, num)
    return np.stack([radius * np.cos(t), handedness * radius * np.sin(t), pitch * t / (2 * math.pi)], axis=1)


def _helix_tube(g: torch.Generator, handedness: int, sides: int = 12) -> Mesh:
    # hand-written: open3d has no sweep/tube primitive
    turns, pitch, rho = _uniform(g, 1.5, 3.0), _uniform(g, 0.5, 1.2), _uniform(g, 0.1, 0.25)
    curve = helix_curve(turns, 1.0, pitch, handedness, num=int(48 * turns))
    t = np.linspace(0.0, 2 * math.pi * turns, len(curve))
    tangent = np.stack([-np.sin(t), handedness * np.cos(t), np.full_like(t, pitch / (2 * math.pi))], axis=1)
    normal = np.stack([-np.cos(t), -handedness * np.sin(t), np.zeros_like(t)], axis=1)  # towards the axis
    binormal = np.cross(tangent, normal)
    binormal /= np.linalg.norm(binormal, axis=1, keepdims=True)
    # handedness * phi: the left tube's vertices are exactly the mirrored right tube's, in the same order
    phi = handedness * np.linspace(0.0, 2 * math.pi, sides, endpoint=False)
    ring = np.cos(phi)[None, :, None] * normal[:, None] + np.sin(phi)[None, :, None] * binormal[:, None]
    vertices = (curve[:, None] + rho * ring).reshape(-1, 3)
    k, s = np.meshgrid(np.arange(len(curve) - 1), np.arange(sides), indexing="ij")
    a, b = k * sides + s, k * sides + (s + 1) % sides
    c, d = a + sides, b + sides
    triangles = np.concatenate([np.stack([a, b, d], -1), np.stack([a, d, c], -1)]).reshape(-1, 3)
    return vertices, triangles


def _extrusion(polygon: np.ndarray, kernel: np.ndarray, depth: float) -> Mesh:
    """Upright prism: polygon [P, 2] in the xz plane (star-shaped from ``kernel`` [2]) extruded along y."""
    # hand-written: open3d has no polygon extrusion
    p = len(polygon)
    ring = np.concatenate([polygon, kernel[None]])  # [P + 1, 2], kernel last
    front = np.stack([ring[:, 0], np.zeros(p + 1), ring[:, 1]], axis=1)
    back = front + np.array([0.0, depth, 0.0])
    i, j = np.arange(p), (np.arange(p) + 1) % p
    caps = np.concatenate([np.stack([np.full(p, p), i, j], -1), np.stack([np.full(p, p), j, i], -1) + p + 1])
    sides = np.concatenate([np.stack([i, j, j + p + 1], -1), np.stack([i, j + p + 1, i + p + 1], -1)])
    return np.concatenate([front, back]), np.concatenate([caps, sides])


def _l_shape(g: torch.Generator) -> Mesh:
    a, b, t = _uniform(g, 0.6, 1.4), _uniform(g, 0.8, 1.6), _uniform(g, 0.15, 0.35)
    polygon = np.array([[0, 0], [a, 0], [a, t], [t, t], [t, b], [0, b]])
    return _extrusion(polygon, np.array([t / 2, t / 2]), _uniform(g, 0.15, 0.6))


def _t_shape(g: torch.Generator) -> Mesh:
    a, h, s, t = _uniform(g, 0.5, 1.0), _uniform(g, 0.8, 1.6), _uniform(g, 0.08, 0.2), _uniform(g, 0.15, 0.35)
    polygon = np.array([[-s, 0], [s, 0], [s, h - t], [a, h - t], [a, h], [-a, h], [-a, h - t], [-s, h - t]])
    return _extrusion(polygon, np.array([0.0, h - t / 2]), _uniform(g, 0.15, 0.6))


def _capsule(g: torch.Generator) -> Mesh:
    # a sphere whose upper and lower halves are pushed apart: the equator band becomes the cylinder
    v, f = _o3d(o3d.geometry.TriangleMesh.create_sphere(radius=1.0, resolution=12))
    v = v.copy()
    v[:, 2] += np.where(v[:, 2] >= 0, 0.5, -0.5) * _uniform(g, 1.0, 3.0)
    return v, f


def _scaled(mesh: o3d.geometry.TriangleMesh, g: torch.Generator) -> Mesh:
    v, f = _o3d(mesh)
    return v * _stretch(g), f


_T = o3d.geometry.TriangleMesh
_BUILDERS: dict[str, Callable[[torch.Generator], Mesh]] = {
    "box": lambda g: _o3d(_T.create_box(_uniform(g, 0.3, 1.5), _uniform(g, 0.3, 1.5), _uniform(g, 0.3, 1.5))),
    "cylinder": lambda g: _o3d(_T.create_cylinder(_uniform(g, 0.3, 1.0), _uniform(g, 0.5, 2.0), 24, 4)),
    "cone": lambda g: _o3d(_T.create_cone(_uniform(g, 0.3, 1.0), _uniform(g, 0.5, 2.0), 24, 4)),
    "torus": lambda g: _o3d(_T.create_torus(1.0, _uniform(g, 0.15, 0.45), 24, 12)),
    "ellipsoid": lambda g: _o3d(_T.create_ellipsoid(*(_uniform(g, 0.5, 1.2) for _ in range(3)), resolution=12)),
    "tetrahedron": lambda g: _scaled(_T.create_tetrahedron(), g),
    "octahedron": lambda g: _scaled(_T.create_octahedron(), g),
    "icosahedron": lambda g: _scaled(_T.create_icosahedron(), g),
    "capsule": _capsule,
    "arrow": lambda g: _o3d(
        _T.create_arrow(
            cylinder_radius=_uniform(g, 0.05, 0.15),
            cone_radius=_uniform(g, 0.2, 0.35),
            cylinder_height=_uniform(g, 0.8, 1.6),
            cone_height=_uniform(g, 0.3, 0.6),
            resolution=16,
        )
    ),
    "l_shape": _l_shape,
    "t_shape": _t_shape,
    "helix_left": lambda g: _helix_tube(g, handedness=-1),
    "helix_right": lambda g: _helix_tube(g, handedness=1),
}


def make_shape(name: str, num_points: int = 1024, seed: int = 0, noise: float = 0.01, rotate_z: bool = False) -> Tensor:
    """One synthetic shape as a point cloud.

    Args:
        name: one of ``SyntheticShapes.CLASSES``; num_points: N; seed: seeds the shape's generator
            (proportions, surface sample, rotation, noise); noise: std of the Gaussian noise added in
            unit-sphere units; rotate_z: apply a random rotation about z.

    Returns:
        [N, 3] float32, centred at its mean, farthest point at radius 1.
    """
    if name not in _BUILDERS:
        raise ValueError(f"name must be one of {tuple(_BUILDERS)}, got {name!r}")
    if num_points < 2:
        raise ValueError(f"num_points must be >= 2, got {num_points}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    g = torch.Generator().manual_seed(seed)
    pos = normalize_unit_sphere(sample_surface(*_BUILDERS[name](g), num_points, g))
    if rotate_z:
        angle = 2 * math.pi * float(torch.rand((), generator=g))
        c, s = math.cos(angle), math.sin(angle)
        pos = pos @ torch.tensor([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
    pos = pos + noise * torch.randn(pos.shape, generator=g)
    return normalize_unit_sphere(pos)


class SyntheticShapes(Dataset):
    """Synthetic labelled point clouds of simple solids (see the module docstring).

    Attributes:
        pos: [S, N, 3] float32 with S = len(CLASSES) * n_per_class, ordered class by class;
        label: [S] int64, index into ``CLASSES``; classes: list of the class names.

    ``dataset[i]`` is ``(pos [N, 3], label [])``.
    """

    CLASSES: tuple[str, ...] = tuple(_BUILDERS)

    def __init__(
        self,
        split: str = "train",
        n_per_class: int = 50,
        num_points: int = 1024,
        seed: int = 0,
        noise: float = 0.01,
        rotate_z: bool = False,
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
        if n_per_class < 1:
            raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
        self.split, self.seed, self.noise = split, seed, noise
        self.classes = list(self.CLASSES)
        clouds, labels = [], []
        for c, name in enumerate(self.CLASSES):
            for i in range(n_per_class):
                shape_seed = int(np.random.SeedSequence([seed, _SPLITS.index(split), c, i]).generate_state(1)[0])
                clouds.append(make_shape(name, num_points, shape_seed, noise, rotate_z))
                labels.append(c)
        self.pos = torch.stack(clouds)
        self.label = torch.tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.pos[i], self.label[i]
