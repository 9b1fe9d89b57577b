"""Smoke run of every N-body method through the real harness and CLI, on a tiny generated set."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
import yaml

from geocanon import checkpoint
from geocanon.bench.nbody import METHODS, SAVED_METHODS, NBodyBenchConfig, floor_breakdown, model_spec, orientation_floor, run
from geocanon.cli import main
from geocanon.data.nbody import NBodyConfig, load_nbody
from geocanon.testing import default_tolerance, equivariance_error

TINY = dict(n_train=40, n_valid=20, n_test=20)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("nbody")
    cfg = NBodyBenchConfig(
        methods=list(METHODS), seeds=[0], data_root=str(root / "data"), max_epochs=1, check_val_every_n_epoch=1,
        hidden=16, layers=2, canon_hidden_mul=4, canon_layers=1, batch_size=20, run_dir=str(root / "runs"),
        results=str(root / "results" / "nbody"), checkpoint=str(root / "best.pt"), progress=False, **TINY,
    )
    return cfg, run(cfg)


def test_every_method_trains_and_is_reported(smoke):
    cfg, payload = smoke
    assert payload["complete"] and [s["method"] for s in payload["summary"]] == list(METHODS)
    for row in payload["runs"]:
        assert row["test_mse"] > 0 and row["parameters"] > 0 and row["train_time_s"] > 0
        assert 0.05 <= row["worst5_share"] <= 1.0
    with open(cfg.results + ".json") as handle:
        saved = json.load(handle)
    assert saved["checkpoint"] == cfg.checkpoint
    for key in ("command", "commit", "hardware", "date", "wall_time_s", "seeds"):
        assert key in saved["provenance"]
    errors = {s["method"]: s["equivariance_error_max"] for s in payload["summary"]}
    for method in ("canonicalized", "canonicalized-offset", "pca", "frame-averaging", "egnn", "linear"):
        assert errors[method] < default_tolerance(torch.float32), (method, errors[method])
    assert errors["plain"] > 1e-3  # the measurement can fail: the bare GNN is not equivariant
    floor = saved["orientation_floor"]
    assert floor["orientations"] == 16 and 0.0 <= floor["systems_affected"] <= 1.0 and floor["test_mse"] >= 0.0
    assert f"{floor['test_mse']:.5f}" in open(cfg.results + ".md").read()
    for row in payload["runs"]:
        assert row["excess_over_floor"] == pytest.approx(row["test_mse"] - floor["test_mse"], rel=1e-6, abs=1e-12)
        assert 0.0 <= row["orientation_dependent_share"] <= 1.0


def test_trained_checkpoint_is_equivariant_and_evaluates(smoke, capsys):
    cfg, payload = smoke
    model, meta = checkpoint.load(cfg.checkpoint)
    assert meta["benchmark"] == "nbody"
    data = load_nbody(cfg.data_root, "test", NBodyConfig(**TINY))
    err = equivariance_error(model, data.pos, "E3", "position", vectors={"vel": data.vel}, scalars={"charge": data.charge})
    assert err < 1e-5
    assert main(["bench", "nbody", "--evaluate", cfg.checkpoint, "--data-dir", cfg.data_root]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == TINY["n_test"]
    saved = min((r for r in payload["runs"] if r["method"] in SAVED_METHODS), key=lambda r: r["best_val_mse"])
    assert meta["row"]["method"] == saved["method"]  # the best by validation among the learned / averaged frames
    assert result["test_mse"] == pytest.approx(saved["test_mse"], rel=1e-5)


def test_evaluate_without_data_is_one_clear_line(tmp_path, smoke, capsys):
    cfg, _ = smoke
    assert main(["bench", "nbody", "--evaluate", cfg.checkpoint, "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("geocanon: error: no N-body test split") and err.count("\n") == 1


def test_evaluate_with_orientations_rebuilds_the_frame_averaged_model(tmp_path, smoke, capsys):
    cfg, _ = smoke
    torch.manual_seed(0)
    small = NBodyBenchConfig(hidden=16, layers=2)
    fa, plain = (checkpoint.save(tmp_path / f"{m}.pt", checkpoint.build(model_spec(m, small))) for m in ("frame-averaging", "plain"))
    results = []
    for extra in ([], ["--orientations", "1"], ["--orientations", "3"]):
        assert main(["bench", "nbody", "--evaluate", str(fa), "--data-dir", cfg.data_root, *extra]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[1]["test_mse"] == results[0]["test_mse"] and "orientations" not in results[0]
    assert results[2]["orientations"] == 3 and results[2]["test_mse"] != pytest.approx(results[0]["test_mse"], rel=1e-4)
    assert main(["bench", "nbody", "--evaluate", str(plain), "--data-dir", cfg.data_root, "--orientations", "3"]) == 2
    assert "orientations apply to frame-averaged models" in capsys.readouterr().err


@pytest.mark.parametrize("comoving", [False, True])
def test_model_specs_build_for_every_method(comoving, tmp_path):
    cfg = NBodyBenchConfig(comoving=comoving, substeps=2)
    pos, vel, charge = torch.randn(2, 5, 3), torch.randn(2, 5, 3), torch.ones(2, 5, 1)
    boost = torch.tensor([0.3, -0.2, 0.1])
    for method in METHODS:
        model = checkpoint.build(model_spec(method, cfg)).eval()
        with torch.no_grad():
            out = model(pos, vel=vel, charge=charge)
            assert out.shape == (2, 5, 3)
            moved = (model(pos, vel=vel + boost, charge=charge) - out - boost).abs().max()  # horizon 1.0
        assert (moved < 1e-5) if comoving else (method == "linear" or moved > 1e-4), (method, moved)
        checkpoint.save(tmp_path / "m.pt", model)
        with torch.no_grad():
            assert torch.equal(checkpoint.load(tmp_path / "m.pt")[0](pos, vel=vel, charge=charge), out)


def test_seed_ensemble_row(tmp_path):
    """``ensemble: true`` adds the mean of each method's seed models as one more, exactly equivariant model whose
    test MSE cannot exceed its members' mean (convexity of the squared error)."""
    cfg = NBodyBenchConfig(
        methods=["frame-averaging"], seeds=[0, 1], ensemble=True, data_root=str(tmp_path / "data"), max_epochs=1,
        check_val_every_n_epoch=1, hidden=16, layers=2, batch_size=20, run_dir=str(tmp_path / "runs"),
        results=str(tmp_path / "results" / "nbody"), checkpoint=str(tmp_path / "best.pt"), progress=False, **TINY,
    )
    payload = run(cfg)
    members = [r for r in payload["runs"] if r["method"] == "frame-averaging"]
    (ensemble,) = [r for r in payload["runs"] if r["method"] == "frame-averaging-ensemble"]
    assert payload["complete"] and ensemble["seed"] == [0, 1]
    assert ensemble["test_mse"] <= sum(r["test_mse"] for r in members) / 2 + 1e-12
    assert ensemble["test_mse"] != members[0]["test_mse"]  # the members differ: it is not one of them
    assert ensemble["parameters"] == 2 * members[0]["parameters"] and ensemble["equivariance_error"] < 1e-5
    assert [s["method"] for s in payload["summary"]] == ["frame-averaging", "frame-averaging-ensemble"]
    assert "`<m>-ensemble` is the mean" in (tmp_path / "results" / "nbody.md").read_text()



def test_finished_only_reports_finished_runs_without_training(smoke):
    """A snapshot of trainings still going on: only runs with a result.json are reported (with the numbers they
    were trained to), nothing is trained, no ensemble of a method with missing seeds, and the results say PARTIAL."""
    cfg, payload = smoke
    results = cfg.results + "_snapshot"
    snapshot = run(replace(cfg, seeds=[0, 1], ensemble=True, results=results, checkpoint=cfg.checkpoint + ".snap"), finished_only=True)
    assert payload["complete"] and not snapshot["complete"]
    assert [(r["method"], r["seed"]) for r in snapshot["runs"]] == [(m, 0) for m in METHODS]
    for before, after in zip(payload["runs"], snapshot["runs"]):
        assert after["test_mse"] == pytest.approx(before["test_mse"], rel=1e-6)
    assert not any(Path(cfg.run_dir, m, "seed1").exists() for m in METHODS)
    assert "PARTIAL" in Path(results + ".md").read_text()


def test_finished_only_from_the_command_line(smoke, tmp_path, capsys):
    cfg, _ = smoke
    config = tmp_path / "snapshot.yaml"
    values = {**asdict(cfg), "results": str(tmp_path / "snapshot"), "checkpoint": str(tmp_path / "snapshot.pt")}
    config.write_text(yaml.safe_dump(values))
    assert main(["bench", "nbody", "--config", str(config), "--seeds", "0", "1", "--finished-only", "--no-progress"]) == 1
    assert "PARTIAL" in capsys.readouterr().out
    assert not any(Path(cfg.run_dir, m, "seed1").exists() for m in METHODS)

def test_worst_share_of_the_error():
    from geocanon.bench.nbody import worst_share

    errors = torch.tensor([1.0] * 95 + [19.0] * 5)  # the worst 5 systems carry 95 of 190
    assert worst_share(errors) == pytest.approx(0.5)
    assert worst_share(torch.ones(100)) == pytest.approx(0.05)
    assert worst_share(torch.tensor([3.0, 1.0]), fraction=0.05) == pytest.approx(0.75)  # at least one system
    assert worst_share(torch.zeros(100)) == 0.0  # a model without error: no share, not 0/0


def test_error_shares_of_a_model_without_error_are_zero_not_nan():
    from geocanon.bench.nbody import encounter_breakdown

    errors = torch.zeros(4)
    assert encounter_breakdown(errors, torch.tensor([0.1, 1.0, 0.2, 2.0]))["encounter_share"] == 0.0
    out = floor_breakdown(errors, torch.tensor([0.5, 0.0, 0.0, 1.5]))
    assert out["orientation_dependent_share"] == 0.0 and out["excess_over_floor"] == pytest.approx(-0.5)



def test_floor_breakdown_by_hand():
    errors = torch.tensor([1.0, 3.0, 0.0, 4.0])
    spread = torch.tensor([0.5, 0.0, 1e-9, 1.5])  # systems 0 and 3 depend on the orientation
    out = floor_breakdown(errors, spread)
    assert out["orientation_dependent_share"] == pytest.approx(5.0 / 8.0)
    assert out["excess_over_floor"] == pytest.approx(2.0 - 0.5)
    floor = orientation_floor(spread)
    assert floor["test_mse"] == pytest.approx(0.5) and floor["systems_affected"] == pytest.approx(0.5)

def test_encounter_distance_and_breakdown():
    """System 0: opposite charges 2 apart pass each other at closest distance 0.3 (t* = 0.5); a like-charged pair
    would come closer but does not count. System 1: opposite charges that separate (t* = 0, distance 1). System 2:
    like charges only."""
    from geocanon.bench.nbody import encounter_breakdown, encounter_distance
    from geocanon.data.nbody import NBodyDataset

    pos = torch.tensor([[[1.0, 0.3, 0.0], [-1.0, 0.0, 0.0], [5.0, 0.0, 0.0], [5.0, 0.1, 0.0]],
                        [[0.5, 0.0, 0.0], [-0.5, 0.0, 0.0], [9.0, 0.0, 0.0], [-9.0, 0.0, 0.0]],
                        [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [3.0, 0.0, 0.0]]])  # fmt: skip
    vel = torch.zeros(3, 4, 3)
    vel[0, 0, 0], vel[0, 1, 0] = -2.0, 2.0
    vel[1, 0, 0], vel[1, 1, 0] = 1.0, -1.0
    charge = torch.tensor([[1.0, -1.0, 1.0, 1.0], [1.0, -1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])[..., None]
    data = NBodyDataset(pos, vel, charge, pos)
    distance = encounter_distance(data, horizon=1.0)
    assert distance[0].item() == pytest.approx(0.3) and distance[1].item() == pytest.approx(1.0)
    assert distance[2].item() == float("inf")
    assert encounter_distance(data, horizon=0.25)[0].item() == pytest.approx((1.0 + 0.09) ** 0.5)  # not met yet
    breakdown = encounter_breakdown(torch.tensor([6.0, 1.0, 3.0]), distance)
    assert breakdown == pytest.approx({"encounter_fraction": 1 / 3, "encounter_share": 0.6, "mse_without_encounters": 2.0})


def test_input_noise_perturbs_training_inputs_only():
    from geocanon.bench.nbody import NBodyObjective

    seen = []
    model = lambda pos, vel, charge: seen.append((pos, vel)) or pos  # noqa: E731 - records its inputs
    batch = {"pos": torch.randn(4, 5, 3), "vel": torch.randn(4, 5, 3), "charge": torch.ones(4, 5, 1)}
    batch["target"] = batch["pos"].clone()
    objective = NBodyObjective(input_noise=0.1)
    assert objective(model, batch, "val")["loss"] == 0.0
    loss = objective(model, batch, "train")["loss"]
    assert 0.005 < loss < 0.02  # noise of variance 0.01 on the positions
    assert 0.05 < (seen[1][1] - batch["vel"]).std() < 0.15
    with pytest.raises(ValueError, match="input_noise must be"):
        NBodyBenchConfig(input_noise=-1.0)


def test_config_rejects_unknown_method():
    with pytest.raises(ValueError, match="unknown N-body methods"):
        NBodyBenchConfig(methods=["transformer"])
    with pytest.raises(ValueError, match="fa_train_frames"):
        NBodyBenchConfig(fa_train_frames="one")
    with pytest.raises(ValueError, match="fa_orientations must be a positive integer"):
        NBodyBenchConfig(fa_orientations=0)


def test_fa_orientations_reach_the_frame_averaged_model():
    from geocanon import checkpoint
    from geocanon.bench.nbody import model_spec

    model = checkpoint.build(model_spec("frame-averaging", NBodyBenchConfig(fa_orientations=3)))
    assert model.turns.shape == (3, 3, 3)
    assert checkpoint.build(model_spec("frame-averaging", NBodyBenchConfig())).turns.shape == (1, 3, 3)
