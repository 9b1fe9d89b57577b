"""The models committed under benchmarks/checkpoints/ are what the result files say they are, and exact.

Every result file that names a checkpoint under ``benchmarks/checkpoints/`` must name an existing file of
the same benchmark holding one of the file's own runs (a renamed configuration that was not re-collected
points at another configuration's model; a later stage that overwrote a checkpoint leaves the earlier
stage's file pointing at the later model). Every committed model
is checked for exact equivariance/invariance under random elements of its own group in float32.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from geocanon import checkpoint
from geocanon.data.molecules import one_hot_species
from geocanon.frames import GROUPS
from geocanon.testing import default_tolerance, equivariance_error

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = sorted((ROOT / "benchmarks" / "checkpoints").rglob("*.pt"))


def _named_checkpoints() -> list[tuple[str, str | None, str]]:
    """(result file, molecule or None, checkpoint path) for each committed checkpoint a result file names."""
    named = []
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        result = json.loads(path.read_text())
        pointers = result.get("checkpoints") or {None: result.get("checkpoint")}
        named += [(path.name, key, value) for key, value in pointers.items() if value and value.startswith("benchmarks/checkpoints/")]
    return named


def _group(model: torch.nn.Module) -> str:
    return next(m.group for m in model.modules() if getattr(m, "group", None) in GROUPS)


def test_checkpoints_are_committed():
    assert len(CHECKPOINTS) >= 3 and len(_named_checkpoints()) >= 3


@pytest.mark.parametrize("result_file, molecule, named", _named_checkpoints(), ids=lambda v: str(v))
def test_result_files_name_their_own_models(result_file: str, molecule: str | None, named: str):
    result = json.loads((ROOT / "benchmarks" / "results" / result_file).read_text())
    assert (ROOT / named).is_file(), f"{result_file} names {named}, which is not committed"
    _, meta = checkpoint.load(ROOT / named)
    assert meta["benchmark"] == result["benchmark"]
    if result["benchmark"] == "shapes":  # the model's training facts are those of one of the file's rows
        runs = result["results"]
        facts = {"method": meta["method"], "backbone": meta["backbone"], **meta["facts"]}
        own = {k: facts[k] for k in ("method", "backbone", "val_accuracy", "epochs", "train_time_s")}
    else:
        runs = result["runs"] if result["benchmark"] == "nbody" else result["molecules"][molecule]["runs"]
        keys = ("molecule", "method", "seed", "best_val_mse", "best_val_loss")
        own = {k: meta["row"][k] for k in keys if k in meta["row"]}
    assert any(all(run.get(k) == v for k, v in own.items()) for run in runs), f"{named} holds {own}, not a run of {result_file}"


@pytest.mark.parametrize("path", CHECKPOINTS, ids=lambda p: p.relative_to(ROOT / "benchmarks" / "checkpoints").as_posix())
def test_committed_model_is_exact_in_float32(path: Path):
    model, meta = checkpoint.load(path)
    model.eval()
    group = _group(model)
    gen = torch.Generator().manual_seed(0)
    if meta["benchmark"] == "nbody":
        pos, vel = torch.randn(6, 5, 3, generator=gen), 0.5 * torch.randn(6, 5, 3, generator=gen)
        charge = 2.0 * torch.randint(0, 2, (6, 5, 1), generator=gen).float() - 1.0
        err = equivariance_error(model, pos, group, "position", vectors={"vel": vel}, scalars={"charge": charge})
        assert err < 1e-5, err
        # each kind: the same check fails for the backbone alone (not equivariant), so the one above can fail
        assert equivariance_error(model.backbone, pos, group, "position", vectors={"vel": vel}, scalars={"charge": charge}) > 1e-3
    elif meta["benchmark"] == "molecules":
        n = 9  # a random geometry with the model's elements: exactness does not need a real molecule
        numbers = torch.tensor(model.species)[torch.arange(n) % len(model.species)].repeat(4, 1)
        pos = 1.2 * torch.randn(4, n, 3, generator=gen)
        err = equivariance_error(lambda p, numbers: model(p, numbers)[1], pos, group, "vector", scalars={"numbers": numbers})
        assert err < default_tolerance(torch.float32), err  # forces: autograd through the frames

        def bare_energy(p: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:  # the backbone without its frames
            return model.model.backbone(p, species=one_hot_species(numbers, model.species, p.dtype))

        with torch.no_grad():
            assert equivariance_error(bare_energy, pos, group, "invariant", scalars={"numbers": numbers}) > 1e-3
    else:
        pos = torch.randn(2, 256, 3, generator=gen) * torch.tensor([1.0, 0.7, 0.4])
        with torch.no_grad():
            assert equivariance_error(model, pos, group, "invariant") < 1e-5
            assert equivariance_error(model.backbone, pos, group, "invariant") > 1e-3
