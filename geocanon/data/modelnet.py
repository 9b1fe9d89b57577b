"""ModelNet40 / ModelNet10 classification data from a local copy (never downloaded).

Where the data is: the ``root`` argument if given, else the environment variable ``GEOCANON_DATA``.
The data set is looked for in that folder itself, then in its subfolders ``modelnet40-1024/``,
``modelnet40_ply_hdf5_2048/`` and ``modelnet40_normal_resampled/`` (so ``GEOCANON_DATA`` can be a
folder that holds several data sets). Layouts, detected from the files (``layout=`` forces one):

* ``npy``: ``ModelNet40/<class>/<train|test>/<class>_<id>.npy``, each [P, 3] float32, with
  ``modelnet40_shape_names.txt`` / ``modelnet10_shape_names.txt`` beside ``ModelNet40/``;
* ``off``: the original meshes ``ModelNet40/<class>/<train|test>/<class>_<id>.off`` (or
  ``ModelNet10/...``), sampled area-weighted with a per-file seed derived from ``seed``;
* ``hdf5``: the ``modelnet40_ply_hdf5_2048`` shards ``ply_data_<split><k>.h5`` (``data`` [S, 2048, 3],
  ``label`` [S, 1]) listed in ``<split>_files.txt``, with ``shape_names.txt``;
* ``resampled``: PointNet++'s ``modelnet40_normal_resampled``: ``<class>/<class>_<id>.txt`` rows
  ``x,y,z,nx,ny,nz`` (normals dropped), split by ``modelnet40_<split>.txt``. These clouds are the
  meshes with y and z swapped (y-up, mirrored); the loader swaps them back so every layout is z-up
  in the meshes' own axes.

Labels index ``classes``: the 40 ModelNet40 names (alphabetical, the order of
``modelnet40_shape_names.txt``) or, for ``name="modelnet10"``, the 10 ModelNet10 names in their
own order. Point-file layouts keep the first ``num_points`` points of each cloud (they are stored in
random order). Every cloud is then centred at its mean and scaled to farthest point = 1
(``normalize=True``).

The npy, off and resampled layouts read one file per shape; the stacked result is cached once as
``<cache_dir>/processed/<...>.pt`` with a JSON manifest (layout, split, num_points, seed, a hash of
the file list with sizes and modification times, count, version). A cache whose manifest differs
is rebuilt. ``cache_dir`` defaults to ``$XDG_CACHE_HOME/geocanon`` (``~/.cache/geocanon``); the data
folder is never written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from geocanon.data.mesh_io import normalize_unit_sphere, read_off, sample_surface

__all__ = ["ModelNet", "MODELNET40_CLASSES", "MODELNET10_CLASSES", "LAYOUTS", "find_modelnet", "CACHE_VERSION"]

MODELNET40_CLASSES: tuple[str, ...] = (
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone",
    "cup", "curtain", "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard", "lamp",
    "laptop", "mantel", "monitor", "night_stand", "person", "piano", "plant", "radio", "range_hood", "sink",
    "sofa", "stairs", "stool", "table", "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox",
)  # fmt: skip
MODELNET10_CLASSES: tuple[str, ...] = (
    "bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand", "sofa", "table", "toilet",
)  # fmt: skip
LAYOUTS: tuple[str, ...] = ("npy", "off", "hdf5", "resampled")
CACHE_VERSION = 1
_SUBFOLDERS = ("modelnet40-1024", "modelnet40_ply_hdf5_2048", "modelnet40_normal_resampled")
_NAMES = {"modelnet40": MODELNET40_CLASSES, "modelnet10": MODELNET10_CLASSES}


def _expected(root: Path) -> str:
    return (
        "Expected one of these layouts (in that folder or in its subfolder modelnet40-1024/, "
        "modelnet40_ply_hdf5_2048/ or modelnet40_normal_resampled/):\n"
        f"  npy:       {root}/ModelNet40/<class>/<train|test>/<class>_<id>.npy + {root}/modelnet40_shape_names.txt\n"
        f"  off:       {root}/ModelNet40/<class>/<train|test>/<class>_<id>.off  (ModelNet40.zip unpacked; "
        f"ModelNet10.zip gives {root}/ModelNet10/...)\n"
        f"  hdf5:      {root}/ply_data_<train|test><k>.h5 + <train|test>_files.txt + shape_names.txt\n"
        f"  resampled: {root}/<class>/<class>_<id>.txt + modelnet40_shape_names.txt + modelnet40_<train|test>.txt\n"
        "See datasets/modelnet40/README.md for where to get each."
    )


def _shape_folders(d: Path, name: str) -> list[Path]:
    return [d / "ModelNet10", d / "ModelNet40"] if name == "modelnet10" else [d / "ModelNet40"]


def _first_suffix(folder: Path) -> str | None:
    """Suffix (.npy / .off) of the first shape file found in folder/<class>/<train|test>/."""
    if not folder.is_dir():
        return None
    for cls in sorted(os.scandir(folder), key=lambda e: e.name):
        for split in ("train", "test"):
            sub = Path(cls.path) / split
            if cls.is_dir() and sub.is_dir():
                for entry in os.scandir(sub):
                    if entry.name.endswith((".npy", ".off")):
                        return Path(entry.name).suffix
    return None


def _layouts_in(d: Path, name: str) -> list[tuple[str, Path]]:
    """Every (layout, shape folder or data folder) found directly in ``d``."""
    found = []
    for folder in _shape_folders(d, name):
        suffix = _first_suffix(folder)
        if suffix:
            found.append((suffix[1:], folder))
            break
    if (d / "train_files.txt").is_file() or any(d.glob("ply_data_*.h5")):
        found.append(("hdf5", d))
    if (d / "modelnet40_shape_names.txt").is_file() and (d / "modelnet40_train.txt").is_file():
        found.append(("resampled", d))
    return found


def find_modelnet(root: str | Path | None, name: str = "modelnet40", layout: str | None = None) -> tuple[str, Path]:
    """Locate the data: returns (layout, folder) where folder is the shape folder (``.../ModelNet40``)
    for npy/off and the data folder for hdf5/resampled.

    ``root`` wins; else ``$GEOCANON_DATA``. Raises ``ValueError`` saying where to put the data when
    nothing (or nothing of the requested ``layout``) is found.
    """
    if root is None:
        env = os.environ.get("GEOCANON_DATA")
        if not env:
            raise ValueError(
                "No ModelNet data location: pass root=... or set the environment variable GEOCANON_DATA "
                "to the folder holding the data.\n" + _expected(Path("$GEOCANON_DATA"))
            )
        root, source = Path(env).expanduser(), "$GEOCANON_DATA"
    else:
        root, source = Path(root).expanduser(), "root"
    if not root.is_dir():
        raise ValueError(f"ModelNet data folder {root} (from {source}) does not exist.\n" + _expected(root))
    for d in [root] + [root / s for s in _SUBFOLDERS]:
        for found, folder in _layouts_in(d, name) if d.is_dir() else []:
            if layout is None or found == layout:
                return found, folder
    want = f" of layout {layout!r}" if layout else ""
    raise ValueError(f"No {name} data{want} found in {root} (from {source}).\n" + _expected(root))


def _read_names(path: Path) -> list[str]:
    return [s.strip() for s in path.read_text().splitlines() if s.strip()]


def _shape_files(folder: Path, classes: list[str], split: str, suffix: str) -> list[tuple[Path, int]]:
    files = []
    for label, cls in enumerate(classes):
        sub = folder / cls / split
        if sub.is_dir():
            files += [(sub / n, label) for n in sorted(os.listdir(sub)) if n.endswith(suffix)]
    return files


def _check_points(a: np.ndarray, path: Path, num_points: int) -> np.ndarray:
    if a.ndim != 2 or a.shape[1] < 3:
        raise ValueError(f"{path}: expected an array [P, 3], got shape {list(a.shape)}")
    if a.shape[0] < num_points:
        raise ValueError(f"{path}: has {a.shape[0]} points, fewer than num_points={num_points}")
    a = np.ascontiguousarray(a[:num_points, :3], dtype=np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{path}: contains NaN or Inf")
    return a


def _read_npy(path: Path, num_points: int) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npy array ({err})") from None
    return _check_points(a, path, num_points)


def _read_resampled(path: Path, num_points: int) -> np.ndarray:
    try:
        a = np.loadtxt(path, delimiter=",", max_rows=num_points, usecols=(0, 1, 2), dtype=np.float32, ndmin=2)
    except (ValueError, IndexError) as err:
        raise ValueError(f"{path}: not a 'x,y,z,nx,ny,nz' text cloud ({err})") from None
    return _check_points(a, path, num_points)[:, [0, 2, 1]]  # y-up mirrored -> the meshes' z-up axes


def _sample_off(path: Path, num_points: int, seed: int, rel: str) -> np.ndarray:
    vertices, triangles = read_off(path)
    file_seed = int(np.random.SeedSequence([seed, zlib.crc32(rel.encode())]).generate_state(1)[0])
    try:
        return sample_surface(vertices, triangles, num_points, torch.Generator().manual_seed(file_seed)).numpy()
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


class ModelNet(Dataset):
    """ModelNet40 / ModelNet10 point clouds read from a local copy (see the module docstring).

    Args:
        root: data folder (or a parent, see module docstring); ``None`` -> ``$GEOCANON_DATA``.
        name: ``"modelnet40"`` or ``"modelnet10"``; split: ``"train"`` or ``"test"``.
        num_points: N points per cloud (first N of stored clouds; N sampled for meshes).
        cache_dir: cache folder for processed tensors (default ``~/.cache/geocanon``).
        seed: seed of the mesh sampling (off layout only).
        layout: force one of ``LAYOUTS`` instead of auto-detection.
        normalize: centre each cloud at its mean and scale its farthest point to radius 1.
        workers: threads reading files on the first (uncached) load.

    Attributes:
        pos: [S, N, 3] float32; label: [S] int64 index into ``classes``; classes: list[str];
        layout: the layout read; folder: where it was read; files: [S] source of each cloud
        (path relative to ``folder``, or ``shard#row`` for hdf5).

    ``dataset[i]`` is ``(pos [N, 3], label [])``.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        name: str = "modelnet40",
        split: str = "train",
        num_points: int = 1024,
        cache_dir: str | Path | None = None,
        seed: int = 0,
        layout: str | None = None,
        normalize: bool = True,
        workers: int = 8,
    ) -> None:
        if name not in _NAMES:
            raise ValueError(f"name must be 'modelnet40' or 'modelnet10', got {name!r}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test' (ModelNet has no other split), got {split!r}")
        if num_points < 2:
            raise ValueError(f"num_points must be >= 2, got {num_points}")
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS} or None (auto-detect), got {layout!r}")
        self.name, self.split, self.num_points, self.seed = name, split, num_points, seed
        self.layout, self.folder = find_modelnet(root, name, layout)
        if cache_dir is None:
            cache_dir = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "geocanon"
        self.cache_dir = Path(cache_dir)
        if self.layout == "hdf5":
            pos, label, self.files = self._load_hdf5()
        else:
            pos, label, self.files = self._load_files(workers)
        if normalize:
            try:
                pos = normalize_unit_sphere(pos)
            except ValueError:
                r = (pos - pos.mean(1, keepdim=True)).norm(dim=-1).amax(-1)
                bad = [self.files[i] for i in (~(r > 0)).nonzero().flatten().tolist()]
                raise ValueError(f"{self.folder}: degenerate cloud(s) (all points coincide): {bad[:10]}") from None
        self.pos, self.label = pos, label

    def _classes(self, names_file: Path | None) -> list[str]:
        if names_file is not None and names_file.is_file():
            return _read_names(names_file)
        return list(_NAMES[self.name])

    def _load_files(self, workers: int) -> tuple[Tensor, Tensor, list[str]]:
        data_dir = self.folder if self.layout == "resampled" else self.folder.parent
        self.classes = self._classes(data_dir / f"{self.name}_shape_names.txt")
        if self.layout == "resampled":
            files = self._resampled_files()
        else:
            files = _shape_files(self.folder, self.classes, self.split, "." + self.layout)
        if not files:
            raise ValueError(
                f"No {self.name} {self.split} shapes in {self.folder} (layout {self.layout}).\n" + _expected(data_dir)
            )
        rels = [str(p.relative_to(self.folder)) for p, _ in files]
        fingerprint = hashlib.sha256()
        for (p, lab), rel in zip(files, rels, strict=True):
            st = p.stat()
            fingerprint.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\t{lab}\n".encode())
        manifest = {
            "version": CACHE_VERSION,
            "layout": self.layout,
            "name": self.name,
            "split": self.split,
            "folder": str(self.folder.resolve()),
            "num_points": self.num_points,
            "seed": self.seed if self.layout == "off" else None,
            "files_sha256": fingerprint.hexdigest(),
            "count": len(files),
        }
        label = torch.tensor([lab for _, lab in files], dtype=torch.int64)
        pos = self._cached(manifest, lambda: self._read_all(files, rels, workers))
        return pos, label, rels

    def _resampled_files(self) -> list[tuple[Path, int]]:
        split_file = self.folder / f"modelnet40_{self.split}.txt"
        if not split_file.is_file():
            raise ValueError(f"{split_file} is missing: the resampled layout needs the split list")
        listed = [(s, s.rsplit("_", 1)[0]) for s in _read_names(split_file)]
        listed = [(s, c) for s, c in listed if c in self.classes]
        files = [(self.folder / c / f"{s}.txt", self.classes.index(c)) for s, c in listed]
        present = [(p, lab) for p, lab in files if p.is_file()]
        if files and len(present) < len(files):
            warnings.warn(
                f"{len(files) - len(present)} of the {len(files)} shapes listed in {split_file} are missing "
                f"under {self.folder}; loading the {len(present)} present",
                stacklevel=3,
            )
        return present

    def _read_one(self, path: Path, rel: str) -> np.ndarray:
        if self.layout == "npy":
            return _read_npy(path, self.num_points)
        if self.layout == "off":
            return _sample_off(path, self.num_points, self.seed, rel)
        return _read_resampled(path, self.num_points)

    def _read_all(self, files: list[tuple[Path, int]], rels: list[str], workers: int) -> Tensor:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            clouds = list(pool.map(self._read_one, [p for p, _ in files], rels))
        return torch.from_numpy(np.stack(clouds))

    def _cached(self, manifest: dict, build: Callable[[], Tensor]) -> Tensor:
        key = f"{self.name}_{self.layout}_{self.split}_n{self.num_points}_s{manifest['seed']}"
        key += "_" + hashlib.sha256(manifest["folder"].encode()).hexdigest()[:12]
        data_path = self.cache_dir / "processed" / f"{key}.pt"
        manifest_path = data_path.with_suffix(".json")
        if manifest_path.is_file() and data_path.is_file():
            try:
                stored = json.loads(manifest_path.read_text())
            except json.JSONDecodeError:
                stored = None
            if stored == manifest:
                pos = torch.load(data_path, weights_only=True)
                if isinstance(pos, Tensor) and pos.shape == (manifest["count"], self.num_points, 3):
                    return pos
        pos = build()
        try:
            data_path.parent.mkdir(parents=True, exist_ok=True)
            manifest_path.unlink(missing_ok=True)  # no manifest while the data is being replaced
            tmp = data_path.with_suffix(f".tmp{os.getpid()}")
            torch.save(pos, tmp)
            os.replace(tmp, data_path)
            manifest_path.write_text(json.dumps(manifest, indent=1))
        except OSError as err:
            warnings.warn(f"could not write the ModelNet cache in {data_path.parent}: {err}", stacklevel=3)
        return pos

    def _load_hdf5(self) -> tuple[Tensor, Tensor, list[str]]:
        names_file = self.folder / "shape_names.txt"
        all_names = _read_names(names_file) if names_file.is_file() else list(MODELNET40_CLASSES)
        if self.name == "modelnet40":
            self.classes = all_names
        else:
            self.classes = self._classes(self.folder / "modelnet10_shape_names.txt")
        unknown = set(self.classes) - set(all_names)
        if unknown:
            raise ValueError(f"{self.folder}/shape_names.txt lacks the {self.name} classes {sorted(unknown)}")
        remap = torch.tensor([self.classes.index(c) if c in self.classes else -1 for c in all_names])
        list_file = self.folder / f"{self.split}_files.txt"
        if list_file.is_file():  # its lines carry the authors' paths: keep the file names only
            shards = [self.folder / Path(s).name for s in _read_names(list_file)]
        else:
            shards = sorted(
                self.folder.glob(f"ply_data_{self.split}*.h5"),
                key=lambda p: int(re.sub(r"\D", "", p.stem.rsplit("_", 1)[-1]) or 0),
            )
        if not shards:
            raise ValueError(f"No {self.split} shards (ply_data_{self.split}<k>.h5) in {self.folder}")
        clouds, labels, files = [], [], []
        for shard in shards:
            if not shard.is_file():
                raise ValueError(f"{shard} (listed in {list_file.name}) is missing")
            try:
                with h5py.File(shard, "r") as f:
                    data, lab = f["data"], np.asarray(f["label"][:]).reshape(-1).astype(np.int64)
                    if data.ndim != 3 or data.shape[2] < 3 or data.shape[0] != len(lab):
                        raise ValueError(f"data {list(data.shape)} / label {len(lab)} do not form [S, P, 3] / [S]")
                    if data.shape[1] < self.num_points:
                        raise ValueError(f"{data.shape[1]} points per cloud, fewer than num_points={self.num_points}")
                    pts = np.asarray(data[:, : self.num_points, :3], dtype=np.float32)
            except (OSError, KeyError) as err:
                raise ValueError(
                    f"{shard}: not a ModelNet HDF5 shard with datasets 'data' and 'label' ({err})"
                ) from None
            except ValueError as err:
                raise ValueError(f"{shard}: {err}") from None
            if len(lab) and (lab.min() < 0 or lab.max() >= len(all_names)):
                raise ValueError(
                    f"{shard}: labels span [{lab.min()}, {lab.max()}], shape_names.txt has {len(all_names)}"
                )
            if not np.isfinite(pts).all():
                raise ValueError(f"{shard}: contains NaN or Inf")
            keep = remap[lab] >= 0
            clouds.append(torch.from_numpy(pts)[keep])
            labels.append(remap[lab][keep])
            files += [f"{shard.name}#{i}" for i in keep.nonzero().flatten().tolist()]
        return torch.cat(clouds), torch.cat(labels), files

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.pos[i], self.label[i]
