"""Equivariant adaptation: a frozen backbone does not move (weights and BatchNorm buffers), the adapted
model is exactly SO(3)-invariant (float32 and float64), and pretrain -> adapt -> fine-tune runs through
the CLI on a tiny synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from geocanon import (
    CanonicalizationPrior,
    Canonicalized,
    E3nnCanonicalizer,
    IdentityCanonicalizer,
    OctahedralChoice,
    RegressedOrientation,
    checkpoint,
)
from geocanon.bench.adapt import AdaptBenchConfig, AdaptObjective, adapt, evaluate, finetune, frozen
from geocanon.bench.harness import TrainConfig
from geocanon.cli import main as cli_main
from geocanon.nn.pointnet import PointNet
from geocanon.testing import default_tolerance, equivariance_error

from .conftest import default_dtype

QUICK = Path(__file__).resolve().parents[1] / "benchmarks" / "adapt_quick.yaml"
CLASSES = 3


def _loaders(dtype: torch.dtype = torch.float32) -> tuple[DataLoader, DataLoader]:
    """Two classes of anisotropic Gaussian clouds (+ one elongated along z): [12, 32, 3], labels [12]."""
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([[1.0, 0.5, 0.2], [0.2, 1.0, 0.5], [0.5, 0.2, 1.0]], dtype=dtype)
    label = torch.arange(12) % CLASSES
    pos = torch.randn(12, 32, 3, generator=g, dtype=dtype) * scales[label][:, None]
    data = TensorDataset(pos, label)
    return DataLoader(data, batch_size=6), DataLoader(data, batch_size=12)


def _config(lr: float = 1e-2) -> TrainConfig:
    return TrainConfig(max_epochs=1, lr=lr, progress=False)


def _models() -> tuple[PointNet, E3nnCanonicalizer]:
    backbone = PointNet(CLASSES, width_scale=0.0625)
    backbone.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after pretraining
        backbone(torch.randn(8, 32, 3))
    return backbone.eval(), E3nnCanonicalizer("SO3", hidden_mul=4, layers=1, k=6, num_points=16)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: nn.Module) -> list[str]:
    return [k for k, v in module.state_dict().items() if not torch.equal(before[k], v)]


def test_frozen_keeps_eval_mode_under_a_parent_train_call() -> None:
    backbone, _ = _models()
    parent = nn.Sequential(backbone)
    before = _snapshot(backbone)
    with frozen(backbone):
        parent.train()  # what Lightning does every epoch
        backbone(torch.randn(4, 32, 3))
        assert not any(p.requires_grad for p in backbone.parameters())
    assert _changed(before, backbone) == []
    assert all(p.requires_grad for p in backbone.parameters())  # restored
    parent.train()
    backbone(torch.randn(4, 32, 3))  # control: unfrozen, the same call moves the BatchNorm statistics
    assert any("running_mean" in k for k in _changed(before, backbone))


def test_adaptation_moves_only_the_canonicalizer_and_fine_tuning_moves_the_backbone(tmp_path: Path) -> None:
    backbone, canon = _models()
    train, val = _loaders()
    backbone_before, canon_before = _snapshot(backbone), _snapshot(canon)
    model = adapt(backbone, canon, train, val, CanonicalizationPrior("identity", 1.0), _config(), tmp_path)
    assert isinstance(model, Canonicalized) and model.backbone is backbone and not model.training
    assert _changed(backbone_before, backbone) == []  # weights AND BatchNorm buffers
    assert _changed(canon_before, canon) != []
    assert all(p.requires_grad for p in backbone.parameters())
    assert (tmp_path / "adapt" / "result.json").is_file()
    finetune(model, train, val, CanonicalizationPrior("identity", 1.0), _config(1e-3), tmp_path)
    changed = _changed(backbone_before, backbone)
    assert any("running_var" in k for k in changed) and any(k.endswith("weight") for k in changed)


def test_adapted_model_is_exactly_so3_invariant_float32(tmp_path: Path) -> None:
    backbone, canon = _models()
    train, val = _loaders()
    model = adapt(backbone, canon, train, val, CanonicalizationPrior("identity", 0.1), _config(), tmp_path)
    pos = next(iter(val))[0][:6]
    assert equivariance_error(model, pos, group="SO3", output="invariant", trials=3) < default_tolerance(torch.float32)
    assert equivariance_error(backbone, pos, group="SO3", output="invariant", trials=3) > 1e-3  # the backbone is not


def test_adapted_model_is_exactly_so3_invariant_float64(tmp_path: Path) -> None:
    with default_dtype(torch.float64):
        backbone, canon = _models()
        train, val = _loaders(torch.float64)
        model = adapt(backbone, canon, train, val, CanonicalizationPrior("axis", 1.0), _config(), tmp_path)
        pos = next(iter(val))[0][:6]
        assert next(model.parameters()).dtype == torch.float64
        assert equivariance_error(model, pos, group="SO3", output="invariant", trials=3) < default_tolerance(torch.float64)


def test_objective_adds_the_weighted_prior_and_needs_a_canonicalized_model() -> None:
    backbone, _ = _models()
    pos, label = next(iter(_loaders()[0]))
    model = Canonicalized(backbone, IdentityCanonicalizer("SO3"))
    plain = AdaptObjective(CanonicalizationPrior("none"))(model, (pos, label), "val")
    weighted = AdaptObjective(CanonicalizationPrior("identity", 10.0))(model, (pos, label), "val")
    assert weighted["prior"].item() == 0.0 and torch.allclose(weighted["loss"], plain["loss"])  # R = I: no penalty
    assert 0.0 <= plain["acc"].item() <= 1.0
    with pytest.raises(ValueError, match="Canonicalized"):
        AdaptObjective(CanonicalizationPrior("none"))(backbone, (pos, label), "train")


def test_evaluate_reports_frame_diagnostics() -> None:
    backbone, _ = _models()
    pos, label = next(iter(_loaders()[1]))
    row = evaluate(Canonicalized(backbone, IdentityCanonicalizer("SO3")), pos, label, seed=0)
    assert row["within_10deg"] == 1.0 and row["mean_angle_deg"] == 0.0 and row["up_angle_deg"] == 0.0
    assert row["n_test"] == 12 and 0.0 <= row["accuracy_so3"] <= 100.0
    bare = evaluate(backbone, pos, label, seed=0)
    assert bare["within_10deg"] is None and bare["accuracy_upright"] == row["accuracy_upright"]
    # per class: 14 entries, None for classes without test clouds, averaging back to the overall accuracy
    wide = evaluate(backbone, pos, label, seed=0, num_classes=14)["per_class"]
    assert len(wide["upright"]) == 14 and wide["choice_ceiling"] is None
    present = torch.bincount(label, minlength=14)
    assert all((v is None) == (n == 0) for v, n in zip(wide["upright"], present.tolist()))
    weighted = sum(v * n for v, n in zip(wide["upright"], present.tolist()) if v is not None) / len(label)
    assert weighted == pytest.approx(bare["accuracy_upright"])


def test_config_rejects_bad_runs() -> None:
    with pytest.raises(ValueError, match=r"runs\[1\]: prior must be"):
        AdaptBenchConfig(runs=[{"prior": "none"}, {"prior": "upright"}])
    with pytest.raises(ValueError, match=r"runs\[0\] must be a mapping"):
        AdaptBenchConfig(runs=[{"prior": "identity", "gamma": 1.0}])
    with pytest.raises(ValueError, match="pretrain_rotation"):
        AdaptBenchConfig(pretrain_rotation="SO3")


def test_cli_pretrain_adapt_finetune_then_benchmark(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pretrained = tmp_path / "pretrained.pt"
    common = ["--threads", "1", "adapt", "--config", str(QUICK), "--backbone", str(pretrained), "--no-progress"]
    # no checkpoint and no --pretrain: a clear error
    assert cli_main([*common, "--run-dir", str(tmp_path / "none")]) == 2
    assert "--pretrain" in capsys.readouterr().err
    # pretrain -> adapt -> fine-tune, 1 epoch each
    finetuned = tmp_path / "finetuned.pt"
    args = ["--pretrain", "--prior", "identity", "--beta", "1", "--finetune", "--output", str(finetuned)]
    assert cli_main([*common, *args, "--run-dir", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    rows = json.loads(out[out.index("[\n") :])  # the rows, printed last as indented JSON
    assert [r["model"] for r in rows] == ["pretrained", "adapted + fine-tuned, identity prior β=1"]
    backbone, meta = checkpoint.load(pretrained)
    assert meta["train_rotation"] == "none" and len(meta["classes"]) == 14
    model, _ = checkpoint.load(finetuned)
    assert isinstance(model, Canonicalized) and isinstance(model.canonicalizer, RegressedOrientation)
    assert isinstance(model.canonicalizer.base, OctahedralChoice)  # the quick config chains both heads
    assert isinstance(model.canonicalizer.base.base, E3nnCanonicalizer)
    pos = torch.randn(4, 48, 3)
    assert equivariance_error(model, pos, group="SO3", output="invariant", trials=2) < default_tolerance(torch.float32)
    key = "head.1.running_mean"  # fine-tuning moved the backbone's BatchNorm statistics
    assert not torch.equal(model.backbone.state_dict()[key], backbone.state_dict()[key])
    # the benchmark of the existing checkpoint: every run of the quick config, results with provenance
    stem = tmp_path / "results" / "adapt_quick"
    bench = ["--benchmark", "--results", str(stem), "--run-dir", str(tmp_path / "c")]
    assert cli_main([*common, *bench]) == 0
    payload = json.loads(stem.with_suffix(".json").read_text())
    assert payload["complete"] and [r["model"] for r in payload["results"]] == [
        "pretrained", "adapted, no prior", "adapted, identity prior β=1", "adapted + fine-tuned, identity prior β=1"
    ]  # fmt: skip
    assert {"command", "commit", "hardware", "seeds", "wall_time_s"} <= set(payload["provenance"])
    for row in payload["results"][1:]:
        assert row["invariance_error"] < default_tolerance(torch.float32) and 0.0 <= row["within_10deg"] <= 1.0
        assert 0.0 <= row["choice_ceiling"] <= 100.0  # the oracle choice of the OctahedralChoice
    text = stem.with_suffix(".md").read_text()
    assert "## Target" in text and "## Per class" in text
    assert all(f"| {name} |" in text for name in payload["classes"])  # one row per class
    # adaptation only: the saved backbone is the pretrained one, bit for bit (weights and BatchNorm buffers)
    model, meta = checkpoint.load(tmp_path / "c" / "identity_beta1" / "model.pt")
    assert meta["run"] == {"prior": "identity", "beta": 1.0, "finetune": False}
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in model.backbone.state_dict().items())


def test_verdict_reports_adaptation_and_fine_tuning_against_the_upright_accuracy() -> None:
    from geocanon.bench.adapt import _verdict

    def row(model, prior, beta, finetuned, so3, val=50.0):
        return {"model": model, "prior": prior, "beta": beta, "finetuned": finetuned, "accuracy_so3": so3,
                "accuracy_upright": so3, "val_accuracy": val}  # fmt: skip

    rows = [row("pretrained", None, None, False, 26.4) | {"accuracy_upright": 91.1},
            row("none", "none", 0.0, False, 36.8), row("axis", "axis", 1.0, False, 83.6, val=90.5),
            row("axis ft", "axis", 1.0, True, 90.4)]  # fmt: skip
    text = _verdict(rows, n_test=280)
    assert "-7.5 points from the pretrained upright accuracy — target (within 1 point) **NOT met**" in text
    assert "the prior adds +46.8 points (+131 test clouds)" in text
    assert "fine-tuned, axis prior β = 1 (still on while fine-tuning): 90.4%, -0.7 points — within 1 point." in text
    rows[-1]["accuracy_so3"] = 89.0
    assert "-2.1 points — not within 1 point." in _verdict(rows, n_test=280)


def test_results_table_orders_every_prior() -> None:
    from geocanon.bench.adapt import PRIORS, _order

    rows = [{"prior": p, "finetuned": f, "beta": b} for p in reversed(PRIORS) for f in (True, False) for b in (1.0, 0.1)]
    rows.append({"prior": None, "finetuned": False, "beta": None})
    ordered = sorted(rows, key=_order)
    assert ordered[0]["prior"] is None and [r["prior"] for r in ordered[1::4]] == list(PRIORS)
    assert [(r["finetuned"], r["beta"]) for r in ordered[1:5]] == [(False, 0.1), (False, 1.0), (True, 0.1), (True, 1.0)]
