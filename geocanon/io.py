"""Point-cloud and mesh files for the command-line tools, read and written through open3d.

Formats: point clouds ``.ply``, ``.pcd``, ``.xyz``, ``.pts``; triangle meshes ``.off``, ``.obj``,
``.stl``, and ``.ply`` files that hold faces (a ``.ply`` is a mesh exactly when it has triangles).

open3d's readers do not raise: on a corrupt, truncated or missing file they print a warning and
return empty geometry, and they read ``nan`` coordinates as they are. :func:`read_geometry`
checks what came back and raises ``ValueError`` naming the file instead. Plain ``OFF`` files are
read with :func:`geocanon.data.mesh_io.read_off` instead, which accepts the ModelNet header quirk
``OFF490 518 0`` (open3d rejects it) and rejects truncated files (open3d fills their missing
vertices with uninitialised memory), but keeps no per-vertex colours; ``NOFF``/``COFF`` variants
go to open3d.

A mesh is turned into points by area-weighted surface sampling (:func:`geometry_points`); a mesh
with vertices but no faces, and every point cloud, gives its own vertices/points. Canonical
geometry (:func:`to_canonical`) keeps everything the file had: mesh faces, normals and colours.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Union

import numpy as np
import open3d as o3d
import torch

from .data.mesh_io import read_off, sample_surface

__all__ = [
    "POINT_CLOUD_EXTENSIONS",
    "MESH_EXTENSIONS",
    "EXTENSIONS",
    "Geometry",
    "read_geometry",
    "is_mesh",
    "geometry_points",
    "to_canonical",
    "write_geometry",
    "find_inputs",
]

POINT_CLOUD_EXTENSIONS: tuple[str, ...] = (".ply", ".pcd", ".xyz", ".pts")
MESH_EXTENSIONS: tuple[str, ...] = (".off", ".obj", ".stl")
EXTENSIONS: tuple[str, ...] = POINT_CLOUD_EXTENSIONS + MESH_EXTENSIONS

Geometry = Union[o3d.geometry.PointCloud, o3d.geometry.TriangleMesh]


@contextlib.contextmanager
def _quiet_open3d() -> Iterator[None]:
    """Silence open3d during one read/write: the caller detects and reports failures itself.

    open3d's warnings follow its verbosity level, but its bundled RPly (PLY) library prints straight
    to the C-level stderr, which only a file-descriptor redirect silences.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no usable fd 2 (detached process): nothing to silence
        saved = None
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        if saved is not None:
            os.dup2(devnull, 2)
        with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
            yield
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        os.close(devnull)


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def read_geometry(path: str | Path) -> Geometry:
    """Read a point cloud or mesh, raising ``ValueError`` naming ``path`` on any failure.

    Returns:
        an ``open3d.geometry.PointCloud`` (``.ply`` without faces, ``.pcd``, ``.xyz``, ``.pts``) or
        ``open3d.geometry.TriangleMesh`` (``.off``, ``.obj``, ``.stl``, ``.ply`` with faces).

    Raises:
        ValueError: unknown extension, missing file, unreadable/corrupt/empty file, NaN or Inf
        coordinates.
    """
    path = Path(path)
    ext = _suffix(path)
    if ext not in EXTENSIONS:
        raise ValueError(f"{path}: unknown extension {path.suffix!r}; supported: {' '.join(EXTENSIONS)}")
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    geometry: Geometry
    if ext == ".off" and _plain_off(path):
        vertices, triangles = read_off(path)  # raises a ValueError naming the file
        geometry = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(triangles))
    else:
        with _quiet_open3d():
            if ext in (".pcd", ".xyz", ".pts"):
                geometry = o3d.io.read_point_cloud(str(path), format=ext[1:])
            else:
                geometry = o3d.io.read_triangle_mesh(str(path))
                if ext == ".ply" and not geometry.has_triangles():
                    geometry = o3d.io.read_point_cloud(str(path), format="ply")
    coords = _coordinates(geometry)
    if len(coords) == 0:
        raise ValueError(f"{path}: no points could be read (empty, corrupt or not a {ext} file)")
    if not np.isfinite(coords).all():
        bad = int((~np.isfinite(coords)).any(1).sum())
        raise ValueError(f"{path}: {bad} of {len(coords)} points have NaN or Inf coordinates")
    return geometry


def _plain_off(path: Path) -> bool:
    """True when an .off file's header is plain ``OFF`` (not NOFF, COFF, ...), possibly after comments.

    Those files go to geocanon's strict reader: open3d rejects ModelNet's ``OFF490 518 0`` header
    and fills the missing vertices of a truncated file with uninitialised memory.
    """
    with path.open("rb") as f:
        head = f.read(256).lstrip()
    return head.startswith(b"OFF") or head.startswith(b"#")


def _coordinates(geometry: Geometry) -> np.ndarray:
    """[N, 3] float64 points of a cloud or vertices of a mesh."""
    if isinstance(geometry, o3d.geometry.TriangleMesh):
        return np.asarray(geometry.vertices)
    return np.asarray(geometry.points)


def is_mesh(geometry: Geometry) -> bool:
    """True for a triangle mesh with faces (its frame comes from surface samples)."""
    return isinstance(geometry, o3d.geometry.TriangleMesh) and geometry.has_triangles()


def geometry_points(geometry: Geometry, num_points: int = 1024, seed: int = 0) -> np.ndarray:
    """The points a frame is computed from.

    Args:
        geometry: from :func:`read_geometry`.
        num_points: N, the number of surface samples of a mesh with faces (clouds keep all points).
        seed: seeds the area-weighted sampling, so the same mesh always gives the same points.

    Returns:
        [N, 3] float64: a cloud's points, a face-less mesh's vertices, or ``num_points`` points
        sampled uniformly on a mesh's surface.

    Raises:
        ValueError: a mesh whose faces have zero total area.
    """
    if is_mesh(geometry):
        generator = torch.Generator().manual_seed(seed)
        points = sample_surface(np.asarray(geometry.vertices), np.asarray(geometry.triangles), num_points, generator)
        return points.double().numpy()
    return np.array(_coordinates(geometry), dtype=np.float64)


def to_canonical(geometry: Geometry, rotation: np.ndarray, translation: np.ndarray) -> Geometry:
    """A copy of ``geometry`` in canonical coordinates ``(P - t) @ R``.

    Normals are rotated with the points (``V @ R``). When ``det R = -1`` (a reflection, O3/E3)
    the triangles' vertex order is reversed so that their winding still matches the normals.

    Args:
        rotation: R [3, 3], columns the canonical axes in input coordinates.
        translation: t [3], the canonical origin in input coordinates.
    """
    rotation = np.asarray(rotation, dtype=np.float64)
    translation = np.asarray(translation, dtype=np.float64)
    # open3d acts on column vectors x -> A x + b; canonical coordinates are R^T (x - t)
    transform = np.eye(4)
    transform[:3, :3] = rotation.T
    transform[:3, 3] = -rotation.T @ translation
    if isinstance(geometry, o3d.geometry.TriangleMesh):
        out: Geometry = o3d.geometry.TriangleMesh(geometry)
    else:
        out = o3d.geometry.PointCloud(geometry)
    out.transform(transform)
    if isinstance(out, o3d.geometry.TriangleMesh) and out.has_triangles() and np.linalg.det(rotation) < 0:
        out.triangles = o3d.utility.Vector3iVector(np.asarray(out.triangles)[:, ::-1].copy())
    return out


def write_geometry(path: str | Path, geometry: Geometry) -> None:
    """Write a cloud or mesh in the format of ``path``'s extension (parent folders are created).

    ``.stl`` needs triangle normals, which are computed when missing. Raises ``ValueError`` naming
    the file when open3d reports a failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_open3d():
        if isinstance(geometry, o3d.geometry.TriangleMesh):
            if _suffix(path) == ".stl" and not geometry.has_triangle_normals():
                geometry = o3d.geometry.TriangleMesh(geometry).compute_triangle_normals()
            ok = o3d.io.write_triangle_mesh(str(path), geometry)
        else:
            ok = o3d.io.write_point_cloud(str(path), geometry)
    if not ok:
        raise ValueError(f"{path}: open3d could not write this file")


def find_inputs(inputs: Sequence[str | Path], exclude: str | Path | None = None) -> list[tuple[Path, Path]]:
    """Expand files and folders into (input file, output path relative to the output folder).

    A file argument is taken as it is (whatever its extension, so that a wrong one is reported) and
    maps to its own name; a folder is searched recursively for files with a known extension
    (case-insensitive), each mapping to its path relative to that folder. The search skips files
    under ``exclude`` (the output folder, when it lies inside an input folder); a file found twice
    is listed once. A missing file is returned like any other and reported when it is read.
    """
    excluded = Path(exclude).resolve() if exclude is not None else None
    seen: set[Path] = set()
    found: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            candidates = sorted(
                (p, p.relative_to(item))
                for p in item.rglob("*")
                if p.is_file()
                and _suffix(p) in EXTENSIONS
                and not (excluded is not None and p.resolve().is_relative_to(excluded))
            )
        else:
            candidates = [(item, Path(item.name))]
        for path, relative in candidates:
            resolved = path.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            found.append((path, relative))
    return found
