"""Every committed benchmark configuration loads, and its learned canonicalizer can be built."""

from __future__ import annotations

from pathlib import Path

import pytest

from geocanon import checkpoint
from geocanon.bench import adapt, molecules, nbody, shapes
from geocanon.bench.common import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.yaml"))
KINDS = {"nbody": nbody.NBodyBenchConfig, "shapes": shapes.ShapesBenchConfig, "modelnet": shapes.ShapesBenchConfig,
         "molecules": molecules.MoleculesBenchConfig, "adapt": adapt.AdaptBenchConfig}  # fmt: skip


def test_every_config_has_a_kind():
    assert CONFIGS and all(any(p.name.startswith(k) for k in KINDS) for p in CONFIGS), CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_builds_its_canonicalizer(path: Path):
    cls = next(c for k, c in KINDS.items() if path.name.startswith(k))
    cfg = load_config(cls, path)
    if isinstance(cfg, shapes.ShapesBenchConfig) and any(m.startswith("learned") for m in cfg.methods):
        spec = shapes.model_spec("learned", cfg.backbones[0], cfg, 10)["config"]["canonicalizer"]
    elif isinstance(cfg, nbody.NBodyBenchConfig) and "canonicalized" in cfg.methods:
        spec = nbody.model_spec("canonicalized", cfg)["config"]["canonicalizer"]
    elif isinstance(cfg, adapt.AdaptBenchConfig):
        spec = cfg.canonicalizer_spec(10)
    else:
        return
    assert checkpoint.build(spec).group in ("SO3", "O3", "SE3", "E3")
