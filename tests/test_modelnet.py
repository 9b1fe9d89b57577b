"""ModelNet loader on small generated data in every layout, the .off reader's quirks and errors, the
cache manifest, and (when present) the real shared samples and the shared 1024-point set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from geocanon.data import modelnet as modelnet_module
from geocanon.data.mesh_io import normalize_unit_sphere, read_off, sample_surface
from geocanon.data.modelnet import MODELNET10_CLASSES, MODELNET40_CLASSES, ModelNet

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE = SHARED / "modelnet40-sample"
NPY_SET = SHARED / "modelnet40-1024"

# a unit cube [0, 1]^3 as 8 vertices and 12 triangles, plus one vertex no face uses
CUBE_V = [(x, y, z) for x in (0, 1) for y in (0, 1) for z in (0, 1)] + [(5, 5, 5)]
CUBE_F = [(0, 1, 3), (0, 3, 2), (4, 6, 7), (4, 7, 5), (0, 4, 5), (0, 5, 1),
          (2, 3, 7), (2, 7, 6), (0, 2, 6), (0, 6, 4), (1, 5, 7), (1, 7, 3)]  # fmt: skip


def off_text(scale: float = 1.0, shift: float = 0.0, glued: bool = False, trailing: str = "") -> str:
    counts = f"{len(CUBE_V)} {len(CUBE_F)} 0"
    lines = [f"OFF{counts}"] if glued else ["OFF", counts]
    lines += [" ".join(f"{scale * c + shift:g}" for c in v) + trailing for v in CUBE_V]
    lines += ["3 " + " ".join(map(str, f)) + trailing for f in CUBE_F]
    return "\n".join(lines) + "\n"


def write(path: Path, text: str, newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.replace("\n", newline).encode())
    return path


# ---------------------------------------------------------------- .off reader and sampling


def test_read_off_quirks_give_the_same_mesh(tmp_path: Path) -> None:
    clean = read_off(write(tmp_path / "clean.off", off_text()))
    variants = {
        "glued.off": write(tmp_path / "glued.off", off_text(glued=True)),
        "crlf.off": write(tmp_path / "crlf.off", off_text(), newline="\r\n"),
        "trailing.off": write(tmp_path / "trailing.off", off_text(trailing="  ")),
        "all.off": write(tmp_path / "all.off", "# comment\n\n" + off_text(glued=True, trailing=" "), "\r\n"),
    }
    assert clean[0].shape == (9, 3) and clean[1].shape == (12, 3) and clean[1].dtype == np.int64
    for path in variants.values():
        v, f = read_off(path)
        np.testing.assert_array_equal(v, clean[0])
        np.testing.assert_array_equal(f, clean[1])


def test_read_off_polygons_are_fan_triangulated(tmp_path: Path) -> None:
    quad = "OFF\n4 1 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3 255 0 0\n"
    _, f = read_off(write(tmp_path / "quad.off", quad))
    np.testing.assert_array_equal(f, [[0, 1, 2], [0, 2, 3]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("OFF\n9 12 0\n0 0 0\n1 0 0\n", "truncated"),
        (off_text().replace("0 1 1", "0 x 1", 1), "non-numeric"),
        (off_text() + "0 0 0\n", "wrong counts"),
        (off_text().replace("3 1 7 3", "3 1 7 30"), "face indices"),
        ("PLY\n", "missing 'OFF' header"),
        ("OFF\n8 twelve 0\n", "bad counts"),
    ],
    ids=["truncated", "non-numeric", "extra-lines", "missing-vertex", "no-header", "bad-counts"],
)
def test_read_off_corrupt_files_raise_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "broken_0001.off", text)
    with pytest.raises(ValueError, match=message) as err:
        read_off(path)
    assert "broken_0001.off" in str(err.value)


def test_sample_surface_is_area_weighted_and_seeded() -> None:
    v, f = np.array(CUBE_V, dtype=float), np.array(CUBE_F)
    g = torch.Generator().manual_seed(0)
    p = sample_surface(v, f, 6000, g)
    assert p.shape == (6000, 3) and p.dtype == torch.float32
    on_face = torch.minimum(p, 1 - p).abs().amin(1)
    assert on_face.max() < 1e-6 and p.min() >= 0 and p.max() <= 1  # on the cube's surface
    face_counts = torch.stack([(p[:, k] < 1e-6).sum() for k in range(3)])  # the 3 faces at 0
    assert (face_counts - 1000).abs().max() < 150  # each face has 1/6 of the area
    again = sample_surface(v, f, 6000, torch.Generator().manual_seed(0))
    assert torch.equal(p, again)
    # uniform inside a triangle: mean at the centroid, a quarter of the points in the corner half-size triangle
    tri = sample_surface(np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]), np.array([[0, 1, 2]]), 20000, g)
    torch.testing.assert_close(tri.mean(0), torch.tensor([1 / 3, 1 / 3, 0.0]), atol=0.01, rtol=0)
    assert abs((tri[:, 0] + tri[:, 1] < 0.5).float().mean().item() - 0.25) < 0.02
    with pytest.raises(ValueError, match="zero surface area"):
        sample_surface(np.zeros((3, 3)), np.array([[0, 1, 2]]), 10, g)


def test_normalize_unit_sphere() -> None:
    pos = torch.randn(2, 50, 3) * 100 + 30
    out = normalize_unit_sphere(pos)
    torch.testing.assert_close(out.norm(dim=-1).amax(-1), torch.ones(2))
    assert out.mean(1).abs().max() < 1e-5
    with pytest.raises(ValueError, match=r"cloud\(s\) \[1\]"):
        normalize_unit_sphere(torch.stack([pos[0], torch.ones(50, 3)]))


# ---------------------------------------------------------------- off layout


@pytest.fixture
def off_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    m = root / "ModelNet40"
    write(m / "airplane" / "train" / "airplane_0001.off", off_text(scale=800, shift=140, glued=True))
    write(m / "airplane" / "train" / "airplane_0002.off", off_text(scale=0.01), newline="\r\n")
    write(m / "chair" / "train" / "chair_0001.off", off_text(trailing=" "))
    write(m / "chair" / "test" / "chair_0002.off", off_text())
    write(m / "guitar" / "test" / "guitar_0001.off", off_text())
    return root


def test_off_layout_loads_quirky_meshes(off_root: Path, tmp_path: Path) -> None:
    ds = ModelNet(off_root, split="train", num_points=64, cache_dir=tmp_path / "cache")
    assert ds.layout == "off" and ds.classes == list(MODELNET40_CLASSES)
    assert ds.pos.shape == (3, 64, 3) and ds.pos.dtype == torch.float32
    assert ds.label.tolist() == [0, 0, 8]
    assert ds.files[0] == str(Path("airplane/train/airplane_0001.off"))
    torch.testing.assert_close(ds.pos.norm(dim=-1).amax(-1), torch.ones(3))  # wild scales removed
    assert ds.pos.mean(1).abs().max() < 1e-5
    # same mesh at scale 800 (shifted) and 0.01 -> same normalised cube surface
    for cloud in ds.pos:
        on_face = torch.minimum(cloud - cloud.amin(0), cloud.amax(0) - cloud).amin(1)
        assert on_face.max() < 1e-4
    test = ModelNet(off_root, split="test", num_points=64, cache_dir=tmp_path / "cache")
    assert test.label.tolist() == [8, 17]
    ten = ModelNet(off_root, name="modelnet10", split="test", num_points=64, cache_dir=tmp_path / "cache")
    assert ten.classes == list(MODELNET10_CLASSES) and ten.label.tolist() == [2]  # guitar is not in ModelNet10


def test_off_layout_seed_changes_the_sample(off_root: Path, tmp_path: Path) -> None:
    a = ModelNet(off_root, num_points=32, seed=0, cache_dir=tmp_path / "c1")
    b = ModelNet(off_root, num_points=32, seed=0, cache_dir=tmp_path / "c2")
    c = ModelNet(off_root, num_points=32, seed=1, cache_dir=tmp_path / "c1")
    assert torch.equal(a.pos, b.pos)
    assert not torch.equal(a.pos, c.pos)


def test_off_layout_corrupt_file_is_named(off_root: Path, tmp_path: Path) -> None:
    write(off_root / "ModelNet40" / "chair" / "train" / "chair_0003.off", "OFF\n9 12 0\n0 0 0\n")
    with pytest.raises(ValueError, match="chair_0003.off"):
        ModelNet(off_root, num_points=16, cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------- locating the data


def test_missing_or_unrecognised_data_says_where_to_put_it(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ValueError, match="does not exist") as err:
        ModelNet(tmp_path / "nowhere", cache_dir=tmp_path / "cache")
    assert "ModelNet40/<class>/<train|test>/<class>_<id>.off" in str(err.value)
    assert "ply_data_<train|test><k>.h5" in str(err.value) and "_<id>.npy" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No modelnet40 data found in .*empty"):
        ModelNet(tmp_path / "empty", cache_dir=tmp_path / "cache")
    monkeypatch.delenv("GEOCANON_DATA", raising=False)
    with pytest.raises(ValueError, match="GEOCANON_DATA"):
        ModelNet(cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="layout must be one of"):
        ModelNet(tmp_path / "empty", layout="zip")
    with pytest.raises(ValueError, match="split"):
        ModelNet(tmp_path / "empty", split="val")


def test_root_argument_wins_over_environment(off_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GEOCANON_DATA", str(tmp_path / "nowhere"))
    assert len(ModelNet(off_root, num_points=16, cache_dir=tmp_path / "cache")) == 3
    monkeypatch.setenv("GEOCANON_DATA", str(off_root))
    assert len(ModelNet(num_points=16, cache_dir=tmp_path / "cache")) == 3


def test_forced_layout_not_present(off_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="layout 'hdf5'"):
        ModelNet(off_root, layout="hdf5", cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------- hdf5 layout


@pytest.fixture
def h5_root(tmp_path: Path) -> Path:
    root = tmp_path / "data" / "modelnet40_ply_hdf5_2048"
    root.mkdir(parents=True)
    (root / "shape_names.txt").write_text("\n".join(MODELNET40_CLASSES) + "\n")
    rng = np.random.default_rng(0)
    listed = []
    for name, labels in [
        ("ply_data_train0.h5", [0, 2, 8]),
        ("ply_data_train1.h5", [35, 1]),
        ("ply_data_test0.h5", [4]),
    ]:
        with h5py.File(root / name, "w") as f:
            f["data"] = rng.normal(size=(len(labels), 40, 3)).astype(np.float32)
            f["label"] = np.array(labels, dtype=np.uint8)[:, None]
        listed.append(f"data/modelnet40_ply_hdf5_2048/{name}")
    (root / "train_files.txt").write_text("\n".join(listed[:2]) + "\n")
    (root / "test_files.txt").write_text(listed[2] + "\n")
    return tmp_path / "data"


def test_hdf5_layout(h5_root: Path, tmp_path: Path) -> None:
    ds = ModelNet(h5_root, split="train", num_points=16, cache_dir=tmp_path / "cache")
    assert ds.layout == "hdf5" and ds.folder.name == "modelnet40_ply_hdf5_2048"
    assert ds.pos.shape == (5, 16, 3) and ds.label.tolist() == [0, 2, 8, 35, 1]
    with h5py.File(ds.folder / "ply_data_train1.h5") as f:
        expected = torch.from_numpy(f["data"][0, :16])
    torch.testing.assert_close(ds.pos[3], normalize_unit_sphere(expected))
    raw = ModelNet(h5_root, split="train", num_points=16, normalize=False, cache_dir=tmp_path / "cache")
    torch.testing.assert_close(raw.pos[3], expected)
    ten = ModelNet(h5_root, name="modelnet10", split="train", num_points=16, cache_dir=tmp_path / "cache")
    assert ten.label.tolist() == [1, 2, 9, 0]  # bed, chair, toilet, bathtub in ModelNet10 order
    assert ten.files == ["ply_data_train0.h5#1", "ply_data_train0.h5#2", "ply_data_train1.h5#0", "ply_data_train1.h5#1"]
    assert len(ModelNet(h5_root, split="test", num_points=16, cache_dir=tmp_path / "cache")) == 1
    with pytest.raises(ValueError, match="fewer than num_points=64"):
        ModelNet(h5_root, num_points=64, cache_dir=tmp_path / "cache")


def test_hdf5_bad_shard_is_named(h5_root: Path, tmp_path: Path) -> None:
    with h5py.File(h5_root / "modelnet40_ply_hdf5_2048" / "ply_data_test0.h5", "w") as f:
        f["data"] = np.zeros((2, 40, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="ply_data_test0.h5"):
        ModelNet(h5_root, split="test", num_points=16, cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------- npy layout and the cache


@pytest.fixture
def npy_root(tmp_path: Path) -> Path:
    root = tmp_path / "data" / "modelnet40-1024"
    (root / "ModelNet40").mkdir(parents=True)
    (root / "modelnet40_shape_names.txt").write_text("\n".join(MODELNET40_CLASSES) + "\n")
    (root / "modelnet10_shape_names.txt").write_text("\n".join(MODELNET10_CLASSES) + "\n")
    rng = np.random.default_rng(0)
    for cls, split, i in [("airplane", "train", 1), ("toilet", "train", 2), ("bed", "test", 3), ("xbox", "test", 4)]:
        (root / "ModelNet40" / cls / split).mkdir(parents=True, exist_ok=True)
        np.save(root / "ModelNet40" / cls / split / f"{cls}_{i:04d}.npy", rng.normal(size=(32, 3)).astype(np.float32))
    return tmp_path / "data"


def test_npy_layout(npy_root: Path, tmp_path: Path) -> None:
    ds = ModelNet(npy_root, split="train", num_points=24, cache_dir=tmp_path / "cache")
    assert ds.layout == "npy" and ds.label.tolist() == [0, 35]
    raw = np.load(npy_root / "modelnet40-1024" / "ModelNet40" / "toilet" / "train" / "toilet_0002.npy")
    torch.testing.assert_close(ds.pos[1], normalize_unit_sphere(torch.from_numpy(raw[:24])))
    ten = ModelNet(npy_root, name="modelnet10", split="test", num_points=24, cache_dir=tmp_path / "cache")
    assert ten.label.tolist() == [1] and ten.files == [str(Path("bed/test/bed_0003.npy"))]
    np.save(npy_root / "modelnet40-1024" / "ModelNet40" / "bed" / "test" / "bed_0009.npy", np.zeros((32, 2)))
    with pytest.raises(ValueError, match="bed_0009.npy"):
        ModelNet(npy_root, split="test", num_points=24, cache_dir=tmp_path / "cache")


def test_cache_is_used_and_invalidated(npy_root: Path, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    first = ModelNet(npy_root, split="train", num_points=24, cache_dir=cache)
    (manifest_path,) = (cache / "processed").glob("*.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["layout"] == "npy" and manifest["count"] == 2 and manifest["num_points"] == 24
    assert {"version", "seed", "files_sha256", "split"} <= manifest.keys()

    def no_reading(*args, **kwargs):
        raise AssertionError("a shape file was read although the cache is valid")

    with monkeypatch.context() as m:
        m.setattr(modelnet_module, "_read_npy", no_reading)
        cached = ModelNet(npy_root, split="train", num_points=24, cache_dir=cache)
    assert torch.equal(cached.pos, first.pos)

    # a rewritten file (same size, new content and modification time) invalidates the cache
    target = npy_root / "modelnet40-1024" / "ModelNet40" / "airplane" / "train" / "airplane_0001.npy"
    before = target.stat()
    np.save(target, np.random.default_rng(1).normal(size=(32, 3)).astype(np.float32))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert target.stat().st_size == before.st_size
    changed = ModelNet(npy_root, split="train", num_points=24, cache_dir=cache)
    assert not torch.equal(changed.pos[0], first.pos[0]) and torch.equal(changed.pos[1], first.pos[1])

    # a manifest from another version is not trusted
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "version": -1}))
    with monkeypatch.context() as m:
        m.setattr(modelnet_module, "_read_npy", no_reading)
        with pytest.raises(AssertionError, match="cache is valid"):
            ModelNet(npy_root, split="train", num_points=24, cache_dir=cache)
    # another num_points gets its own cache entry
    ModelNet(npy_root, split="train", num_points=8, cache_dir=cache)
    assert len(list((cache / "processed").glob("*.json"))) == 2


# ---------------------------------------------------------------- real data (skipped when absent)


@pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"shared ModelNet sample meshes not found at {SAMPLE}")
def test_shared_sample_meshes(tmp_path: Path) -> None:
    train = ModelNet(SAMPLE, split="train", num_points=256, cache_dir=tmp_path)
    test = ModelNet(SAMPLE, split="test", num_points=256, cache_dir=tmp_path)
    assert train.layout == "off" and len(train) == 9 and len(test) == 4
    assert [train.classes[i] for i in test.label] == ["chair", "desk", "monitor", "sofa"]
    assert str(Path("bathtub/train/bathtub_0002.off")) in train.files  # the glued "OFF700 664 0" header
    for ds in (train, test):
        assert torch.isfinite(ds.pos).all()
        torch.testing.assert_close(ds.pos.norm(dim=-1).amax(-1), torch.ones(len(ds)))
    v, f = read_off(SAMPLE / "ModelNet40" / "chair" / "test" / "chair_0890.off")  # CRLF
    assert v.shape == (1658, 3) and f.shape == (2996, 3)


@pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"shared ModelNet sample not found at {SAMPLE}")
def test_shared_resampled_cloud_matches_its_mesh(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="missing"):  # the sample holds 1 of the 9,843 listed clouds
        cloud = ModelNet(SAMPLE, layout="resampled", num_points=2048, cache_dir=tmp_path)
    assert cloud.files == [str(Path("airplane/airplane_0003.txt"))] and cloud.label.tolist() == [0]
    v, f = read_off(SAMPLE / "ModelNet40" / "airplane" / "train" / "airplane_0003.off")
    mesh = normalize_unit_sphere(sample_surface(v, f, 4096, torch.Generator().manual_seed(0)))

    def chamfer(a: torch.Tensor) -> float:
        return torch.cdist(a, mesh).amin(1).mean().item()

    rotated_raw = cloud.pos[0] * torch.tensor([1.0, 1.0, -1.0])  # raw file axes, properly rotated to z-up
    assert chamfer(cloud.pos[0]) < 0.5 * chamfer(rotated_raw)
    assert chamfer(cloud.pos[0]) < 0.03


@pytest.mark.skipif(not NPY_SET.is_dir(), reason=f"shared ModelNet40 1024-point set not found at {NPY_SET}")
def test_shared_npy_set_modelnet10_test(tmp_path: Path) -> None:
    ds = ModelNet(SHARED, name="modelnet10", split="test", cache_dir=tmp_path)
    assert ds.layout == "npy" and ds.folder == NPY_SET / "ModelNet40"
    assert ds.pos.shape == (908, 1024, 3)
    # per-class test counts from the data set's README, in ModelNet10 order
    assert ds.label.bincount().tolist() == [50, 100, 100, 86, 86, 100, 86, 100, 100, 100]
    assert torch.isfinite(ds.pos).all()
    torch.testing.assert_close(ds.pos.norm(dim=-1).amax(-1), torch.ones(908))
    raw = np.load(NPY_SET / "ModelNet40" / "bathtub" / "test" / "bathtub_0107.npy")
    i = ds.files.index(str(Path("bathtub/test/bathtub_0107.npy")))
    torch.testing.assert_close(ds.pos[i], torch.from_numpy(raw), atol=1e-5, rtol=0)  # stored already normalised
