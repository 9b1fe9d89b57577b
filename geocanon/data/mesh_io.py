"""Triangle meshes to point clouds: a tolerant ``.off`` reader, area-weighted surface sampling and
unit-sphere normalisation.

``read_off`` is hand-written because open3d's reader rejects the header quirk of real ModelNet files
(``OFF`` glued to the counts line, e.g. ``OFF490 518 0``). ``sample_surface`` is hand-written
because open3d's ``sample_points_uniformly`` only takes the process-global seed
(``o3d.utility.random.seed``), which is neither per-shape nor safe across threads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["read_off", "sample_surface", "normalize_unit_sphere"]


def _numbers(lines: list[str], dtype: type, path: Path, what: str) -> np.ndarray:
    try:
        return np.array(" ".join(lines).split(), dtype=dtype)
    except ValueError as err:
        raise ValueError(f"{path}: non-numeric {what} ({err})") from None


def read_off(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an ASCII ``.off`` mesh, tolerating the quirks of the real ModelNet files.

    Accepted: ``OFF`` alone on the first line or glued to the counts (``OFF490 518 0``), CRLF line
    endings, trailing spaces, ``#`` comments, blank lines, polygon faces (fan-triangulated), extra
    per-face values (colours) after the indices. Vertices no face uses are kept (they carry no area).

    Returns:
        vertices: [V, 3] float64; triangles: [F, 3] int64 indices into ``vertices``.

    Raises:
        ValueError naming the file: missing header, truncated file, non-numeric values, counts that
        do not match the contents, faces with fewer than 3 vertices or indices out of range.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not an ASCII .off file") from None
    lines = [s for s in (ln.split("#", 1)[0].strip() for ln in text.splitlines()) if s]
    if not lines or not lines[0].startswith("OFF"):
        raise ValueError(f"{path}: missing 'OFF' header")
    head = lines[0][3:].strip()  # counts glued to "OFF" (ModelNet quirk) or on the next line
    start = 1 if head else 2
    counts = (head or (lines[1] if len(lines) > 1 else "")).split()
    if len(counts) not in (2, 3) or not all(c.isdigit() for c in counts):
        raise ValueError(f"{path}: bad counts line {' '.join(counts)!r}, expected 'n_vertices n_faces [n_edges]'")
    nv, nf = int(counts[0]), int(counts[1])
    if nv < 3 or nf < 1:
        raise ValueError(f"{path}: header declares {nv} vertices and {nf} faces, need >= 3 and >= 1")
    if len(lines) != start + nv + nf:
        raise ValueError(
            f"{path}: header declares {nv} vertices + {nf} faces but the file has "
            f"{len(lines) - start} data lines (truncated or wrong counts)"
        )
    vertex_lines, face_lines = lines[start : start + nv], lines[start + nv :]
    vertices = _numbers(vertex_lines, float, path, "vertex coordinates")
    if vertices.size == 3 * nv:
        vertices = vertices.reshape(nv, 3)
    else:  # extra per-vertex columns (colours, normals): keep the first three
        rows = [ln.split() for ln in vertex_lines]
        if any(len(r) < 3 for r in rows):
            raise ValueError(f"{path}: a vertex line has fewer than 3 coordinates")
        vertices = _numbers([" ".join(r[:3]) for r in rows], float, path, "vertex coordinates").reshape(nv, 3)
    if not np.isfinite(vertices).all():
        raise ValueError(f"{path}: vertex coordinates contain NaN or Inf")
    flat = _numbers(face_lines, np.int64, path, "face indices")
    if flat.size == 4 * nf and (flat[::4] == 3).all():  # fast path: all triangles, nothing extra
        triangles = flat.reshape(nf, 4)[:, 1:]
    else:
        tris: list[list[int]] = []
        for i, ln in enumerate(face_lines):
            row = [int(x) for x in ln.split()]
            k = row[0]
            if k < 3 or len(row) < k + 1:
                raise ValueError(f"{path}: face {i} ({ln!r}) needs a count >= 3 followed by that many indices")
            tris.extend([row[1], row[j], row[j + 1]] for j in range(2, k))
        triangles = np.array(tris, dtype=np.int64).reshape(-1, 3)
    if triangles.min() < 0 or triangles.max() >= nv:
        raise ValueError(
            f"{path}: face indices span [{triangles.min()}, {triangles.max()}] but there are {nv} vertices"
        )
    return vertices, triangles


def sample_surface(
    vertices: np.ndarray | Tensor,
    triangles: np.ndarray | Tensor,
    num_points: int,
    generator: torch.Generator,
) -> Tensor:
    """Sample points uniformly on a triangle mesh's surface (triangles chosen by area).

    Args:
        vertices: [V, 3]; triangles: [F, 3] integer indices; num_points: N; generator: the only
            source of randomness (same generator state -> same points).

    Returns:
        [N, 3] float32 points.

    Raises:
        ValueError if the mesh has zero total area.
    """
    v = torch.as_tensor(np.asarray(vertices), dtype=torch.float64)
    idx = torch.as_tensor(np.asarray(triangles), dtype=torch.long)
    tri = v.index_select(0, idx.flatten()).view(-1, 3, 3)  # index_select: tensor[idx] is far slower here
    area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1)
    if not area.sum() > 0:
        raise ValueError(f"mesh with {len(tri)} triangles has zero surface area: nothing to sample")
    face = torch.multinomial(area, num_points, replacement=True, generator=generator)
    u = torch.rand(num_points, 2, generator=generator, dtype=torch.float64)
    s = u[:, :1].sqrt()  # uniform barycentric coordinates (Osada et al. 2002)
    a, b, c = tri.index_select(0, face).unbind(1)
    return ((1 - s) * a + s * (1 - u[:, 1:]) * b + s * u[:, 1:] * c).to(torch.float32)


def normalize_unit_sphere(pos: Tensor) -> Tensor:
    """Centre each cloud at its mean and scale it so its farthest point lies at radius 1.

    Args:
        pos: [N, 3] or [B, N, 3].

    Returns:
        same shape and dtype.

    Raises:
        ValueError naming the cloud index when a cloud's points all coincide.
    """
    centred = pos - pos.mean(dim=-2, keepdim=True)
    radius = centred.norm(dim=-1).amax(dim=-1, keepdim=True)
    bad = (~(radius > 0)).flatten().nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"cannot normalise cloud(s) {bad[:10]}: all points coincide (or NaN)")
    return centred / radius[..., None]
