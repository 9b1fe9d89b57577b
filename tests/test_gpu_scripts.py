"""The GPU-run helpers of benchmarks/gpu/: the ModelNet40 transport format, the epoch planner, and that the
ModelNet benchmark imports without open3d (the GPU machine's image has none)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

GPU_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, GPU_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _npy_layout(root: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "modelnet40_shape_names.txt").write_text("airplane\nbathtub\n")
    clouds = {}
    for cls in ("airplane", "bathtub"):
        for split, count in (("train", 3), ("test", 2)):
            for i in range(count):
                rel = f"ModelNet40/{cls}/{split}/{cls}_{split}_{i:04d}.npy"
                cloud = rng.normal(size=(16, 3)).astype(np.float32)
                cloud /= np.linalg.norm(cloud, axis=1).max()
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                np.save(root / rel, cloud)
                clouds[rel] = cloud
    return clouds


def test_transport_round_trip_is_within_its_stated_error(tmp_path: Path) -> None:
    transport = _script("modelnet40_transport")
    clouds = _npy_layout(tmp_path / "src", np.random.default_rng(0))
    parts = [tmp_path / "a", tmp_path / "b"]
    transport.pack(tmp_path / "src", parts)
    with pytest.raises(FileNotFoundError, match="need all 2 parts"):
        transport.unpack(tmp_path / "half", parts[:1])
    transport.unpack(tmp_path / "dst", parts)
    assert (tmp_path / "dst" / "modelnet40_shape_names.txt").read_text() == "airplane\nbathtub\n"
    restored = sorted(p.relative_to(tmp_path / "dst").as_posix() for p in (tmp_path / "dst").rglob("*.npy"))
    assert restored == sorted(clouds)
    errors = [np.abs(np.load(tmp_path / "dst" / rel) - cloud).max() for rel, cloud in clouds.items()]
    assert 0 < max(errors) <= 1 / 65535 + 1e-7


def test_transport_rejects_clouds_outside_the_unit_ball(tmp_path: Path) -> None:
    transport = _script("modelnet40_transport")
    clouds = _npy_layout(tmp_path, np.random.default_rng(1))
    bad = next(iter(clouds))
    np.save(tmp_path / bad, 2 * clouds[bad])
    with pytest.raises(ValueError, match=f"{bad}: coordinates must be finite and within"):
        transport.pack(tmp_path, [tmp_path / "part"])


def test_epoch_plan_fits_the_time_budget() -> None:
    calibrate = _script("calibrate")
    steps = [{"name": "dgcnn", "batch_size": 128, "s_per_step": 0.5}, {"name": "pointnet", "batch_size": 32, "s_per_step": 0.01}]
    lines = calibrate.plan(400.0, 9351, steps)
    epochs = {line.split("=")[0]: int(line.split("=")[1]) for line in lines}
    for s in steps:
        n = epochs[f"{s['name'].upper()}_EPOCHS"]
        epoch_s = (9351 // s["batch_size"]) * s["s_per_step"] * calibrate.OVERHEAD
        assert n * epoch_s <= 400.0 < (n + 1) * epoch_s
    assert calibrate.plan(1.0, 9351, steps[:1]) == ["DGCNN_EPOCHS=1"]  # at least one epoch


def test_modelnet_benchmark_imports_without_open3d() -> None:
    code = (
        "import sys; sys.modules['open3d'] = None\n"
        "import geocanon.bench.shapes, geocanon.data\n"
        "from geocanon.data import ModelNet\n"
        "try:\n    from geocanon.data import SyntheticShapes\nexcept ImportError as e:\n    print('lazy', e)\n"
        "try:\n    geocanon.data.NoSuchThing\nexcept AttributeError as e:\n    print('missing', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "lazy import of open3d halted" in out and "has no attribute 'NoSuchThing'" in out, out


def test_gpu_configs_differ_only_in_backbone() -> None:
    """The two GPU configs train the same way (what makes their numbers comparable)."""
    from geocanon.bench.common import load_config
    from geocanon.bench.shapes import ShapesBenchConfig

    root = GPU_DIR.parents[0]
    dgcnn, pointnet = (vars(load_config(ShapesBenchConfig, root / f"modelnet40_gpu_{b}.yaml")) for b in ("dgcnn", "pointnet"))
    differing = {k for k in dgcnn if dgcnn[k] != pointnet[k]}
    assert differing == {"backbones", "run_dir", "results", "checkpoint", "checkpoint_backbone", "label"}
