"""Shape benchmark smoke test: every method trains for 1 epoch on a tiny synthetic set, trained
canonicalized models are invariant, the results follow their schema, and ``--evaluate`` reads a
per-shape .npy ModelNet layout."""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from geocanon import checkpoint
from geocanon.bench.common import load_config
from geocanon.bench.shapes import (
    INVARIANT_METHODS,
    METHODS,
    ShapesBenchConfig,
    ShapesObjective,
    _warm_start,
    canonicalizer_overhead,
    classify,
    eval_device,
    model_spec,
    random_rotations,
    rotate_clouds,
    run,
    scores,
)
from geocanon.bench.shapes_cli import QUICK_CONFIG
from geocanon.cli import main as cli_main
from geocanon.data.modelnet import MODELNET10_CLASSES
from geocanon.nn.vector_net import EquivariantVectorNetwork
from geocanon.testing import default_tolerance, equivariance_error

ROW_KEYS = {
    "method": str, "backbone": str, "protocol": str, "accuracy": float, "mean_class_accuracy": float, "epochs": int,
    "points": int, "train_time_s": float, "hardware": str, "seed": int, "train_rotation": str,
    "invariance_error": float,
}  # fmt: skip


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[ShapesBenchConfig, dict]:
    """The quick configuration (all methods on PointNet, learned on DGCNN), 1 epoch, in a temp folder."""
    out = tmp_path_factory.mktemp("shapes")
    cfg = load_config(
        ShapesBenchConfig,
        QUICK_CONFIG,
        run_dir=str(out / "runs"),
        results=str(out / "results" / "shapes_quick"),
        checkpoint=str(out / "best.pt"),
        progress=False,
        budgets={"dgcnn": {"methods": ["learned"]}},
    )
    return cfg, run(cfg)


def test_every_method_trains_and_rows_follow_the_schema(quick: tuple[ShapesBenchConfig, dict]) -> None:
    cfg, payload = quick
    assert payload["complete"] is True and payload["dataset"] == "synthetic"
    rows = payload["results"]
    expected = {(m, "pointnet", p) for m in METHODS for p in cfg.protocols}
    expected |= {("learned", "dgcnn", p) for p in cfg.protocols}
    assert {(r["method"], r["backbone"], r["protocol"]) for r in rows} == expected and len(rows) == len(expected)
    for r in rows:
        for key, kind in ROW_KEYS.items():
            assert isinstance(r[key], kind), (key, r[key])
        assert 0.0 <= r["accuracy"] <= 100.0 and 0.0 <= r["mean_class_accuracy"] <= 100.0
        assert r["epochs"] == 1 and r["points"] == cfg.points and r["n_test"] == 14
        assert r["train_rotation"] == (
            "SO3" if r["method"] == "augment" or r["protocol"] == "SO3/SO3" and r["method"] == "plain" else "z"
        )
    # written to disk as JSON (identical to the payload) and Markdown, with provenance
    stored = json.loads(Path(cfg.results).with_suffix(".json").read_text())
    assert stored["results"] == json.loads(json.dumps(rows)) and stored["complete"] is True
    assert {"command", "commit", "hardware", "date", "wall_time_s"} <= set(stored["provenance"])
    md = Path(cfg.results).with_suffix(".md").read_text()
    assert "— complete" in md and "| learned | pointnet |" in md
    # throughput: one row per method except augment, with the canonicalizer's share for canonicalized ones
    tp = {(t["method"], t["backbone"]): t for t in payload["throughput"]}
    assert set(tp) == {(m, "pointnet") for m in METHODS if m != "augment"} | {("plain", "dgcnn"), ("learned", "dgcnn")}
    assert (
        tp[("plain", "pointnet")]["cost_vs_plain"] == 1.0 and tp[("learned", "pointnet")]["canonicalizer_overhead"] > 0
    )
    assert all(t["clouds_per_s"] > 0 for t in tp.values())


def test_trained_canonicalized_models_are_invariant(quick: tuple[ShapesBenchConfig, dict]) -> None:
    cfg, payload = quick
    pos = torch.randn(4, cfg.points, 3)
    errors = {}
    for path in sorted(Path(cfg.run_dir).glob("*/model.pt")):
        model, meta = checkpoint.load(path)
        group = "O3" if meta["method"] == "learned-o3" else "SO3"
        errors[(meta["method"], meta["backbone"])] = equivariance_error(
            model, pos, group=group, output="invariant", trials=2, seed=1
        )
    assert {m for m, _ in errors} == {"plain", *INVARIANT_METHODS}
    invariant = [e for (m, _), e in errors.items() if m in INVARIANT_METHODS]
    assert max(invariant) < default_tolerance(torch.float32), errors
    # the check can fail: the plain backbone is not invariant
    assert min(e for (m, _), e in errors.items() if m == "plain") > 100 * max(invariant), errors
    # rows carry the same measurement, taken on the test clouds
    for r in payload["results"]:
        assert (r["invariance_error"] < default_tolerance(torch.float32)) == (r["method"] in INVARIANT_METHODS), r
        # frames are measured for the canonicalized models only (frame averaging has a set of frames)
        has_frame = r["method"] in ("pca", "learned", "learned-o3")
        assert (r["frame_turn_deg"] is not None) == has_frame, r
        assert not has_frame or 0.0 <= r["frame_turn_deg"] <= 180.0


def test_best_checkpoint_and_figures(quick: tuple[ShapesBenchConfig, dict]) -> None:
    cfg, payload = quick
    assert payload["checkpoint"] == cfg.checkpoint
    model, meta = checkpoint.load(cfg.checkpoint)
    assert meta["method"].startswith("learned") and meta["backbone"] == "pointnet" and len(meta["classes"]) == 14
    assert model(torch.randn(2, cfg.points, 3)).shape == (2, 14)
    results = Path(cfg.results)
    for suffix in ("_gallery.png", "_confusion.png"):
        png = results.with_name(results.name + suffix)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.name in payload["figures"].values()


def _write_npy_layout(root: Path, classes: list[str], per_class: int, points: int) -> None:
    root.mkdir(parents=True)
    (root / "modelnet10_shape_names.txt").write_text("\n".join(MODELNET10_CLASSES) + "\n")
    g = np.random.default_rng(0)
    for name in classes:
        folder = root / "ModelNet40" / name / "test"
        folder.mkdir(parents=True)
        for i in range(per_class):
            cloud = g.normal(size=(points, 3)) * np.array([1.0, 0.6, 0.3])
            cloud -= cloud.mean(0)
            cloud /= np.linalg.norm(cloud, axis=1).max()
            np.save(folder / f"{name}_{i:04d}.npy", cloud.astype(np.float32))


def test_evaluate_command_on_npy_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data_dir, points = tmp_path / "data", 32
    present = ["bed", "chair", "toilet"]
    _write_npy_layout(data_dir, present, per_class=3, points=points)
    cfg = replace(load_config(ShapesBenchConfig, QUICK_CONFIG), points=points)
    torch.manual_seed(0)
    model = checkpoint.build(model_spec("learned", "pointnet", cfg, len(MODELNET10_CLASSES))).eval()
    ckpt = checkpoint.save(
        tmp_path / "m.pt", model, meta={"dataset": "modelnet10", "classes": list(MODELNET10_CLASSES), "points": points}
    )

    # expected: the model on the clouds exactly as stored, labels = index in modelnet10_shape_names.txt
    files = sorted(data_dir.glob("ModelNet40/*/test/*.npy"))
    pos = torch.from_numpy(np.stack([np.load(f) for f in files]))
    label = torch.tensor([MODELNET10_CLASSES.index(f.parent.parent.name) for f in files])
    with torch.no_grad():
        pred = model(pos).argmax(-1)
    expected = scores(pred, label, len(MODELNET10_CLASSES))

    answers = {}
    for rotate in ("none", "so3"):
        code = cli_main(
            ["bench", "shapes", "--evaluate", str(ckpt), "--data-dir", str(data_dir), "--rotate", rotate, "--seed", "3"]
        )
        assert code == 0
        answers[rotate] = json.loads(capsys.readouterr().out)
    got = answers["none"]
    assert got["n"] == 9 and got["dataset"] == "modelnet10" and got["points"] == points
    assert math.isclose(got["accuracy"], expected["accuracy"]) and math.isclose(
        got["mean_class_accuracy"], expected["mean_class_accuracy"]
    )
    assert answers["so3"]["accuracy"] == got["accuracy"]  # an invariant model does not care

    assert cli_main(["bench", "shapes", "--evaluate", str(ckpt)]) == 2  # no --data-dir
    assert "--data-dir" in capsys.readouterr().err
    wrong = checkpoint.save(
        tmp_path / "w.pt", model, meta={"dataset": "modelnet10", "classes": ["a", "b"], "points": points}
    )
    assert cli_main(["bench", "shapes", "--evaluate", str(wrong), "--data-dir", str(data_dir)]) == 2
    assert "trained on classes" in capsys.readouterr().err


def test_warm_start_continues_earlier_models(quick: tuple[ShapesBenchConfig, dict], tmp_path: Path) -> None:
    cfg, payload = quick
    later = replace(
        cfg, methods=["learned", "frame-averaging"], backbones=["pointnet"], protocols=["z/SO3"], budgets={},
        fa_train_frames="sampled", train_scale=[0.8, 1.25], train_jitter=0.01, warm_start_dir=cfg.run_dir, run_dir=str(tmp_path / "runs"),
        results=str(tmp_path / "results"), checkpoint=str(tmp_path / "best.pt"), throughput=False,
    )  # fmt: skip
    key = ("learned", "pointnet", "z")
    earlier, _ = checkpoint.load(Path(cfg.run_dir) / "_".join(key) / "model.pt")
    torch.manual_seed(1)
    classes = earlier.backbone.head[-1].out_features
    model = checkpoint.build(model_spec("learned", "pointnet", later, classes))
    fresh = tmp_path / "fresh"
    assert _warm_start(model, key, replace(later, warm_start_dir=None), fresh, resume=False) == {}
    facts = _warm_start(model, key, later, fresh, resume=False)
    assert facts["epochs"] == 1 and facts["path"].endswith("learned_pointnet_z/model.pt")
    for name, value in earlier.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    (fresh / "checkpoints").mkdir()  # a run begun here resumes from its own checkpoints, with its record
    assert _warm_start(model, key, replace(later, warm_start_dir=None), fresh, resume=True) == facts
    rows = run(later)["results"]
    assert {r["method"] for r in rows} == {"learned", "frame-averaging"}
    assert all(r["epochs"] == 2 and r["warm_start"].endswith("model.pt") for r in rows)
    assert {r["train_augmentation"] for r in rows} == {
        "rotation z; then rotation z, per-axis scale U(0.8, 1.25), jitter N(0, 0.01²) clipped at ±0.05"
    }
    resumed = run(replace(later, train_scale=None, train_jitter=0.0), resume=True)["results"]
    assert all(r["epochs"] == 2 for r in resumed)  # resumed: not counted twice
    # ... and described by how it was trained, not by the configuration it is resumed with
    assert {r["train_augmentation"] for r in resumed} == {r["train_augmentation"] for r in rows}
    assert all(r["invariance_error"] < default_tolerance(torch.float32) for r in rows)
    mismatched = replace(later, canon_hidden_mul=later.canon_hidden_mul + 1)
    with pytest.raises(ValueError, match="does not match"):
        _warm_start(checkpoint.build(model_spec("learned", "pointnet", mismatched, classes)), key, mismatched, fresh, False)


def test_learned_with_a_regression_head_is_invariant() -> None:
    from geocanon import RegressedOrientation

    model = checkpoint.build(model_spec("learned", "pointnet", ShapesBenchConfig(canon_regression=True, width_scale=0.1), 5))
    assert isinstance(model.canonicalizer, RegressedOrientation)
    torch.nn.init.normal_(model.canonicalizer.regressor.head[-1].weight)
    pos = torch.randn(4, 64, 3) * torch.tensor([2.0, 1.0, 0.5])
    assert equivariance_error(model.eval(), pos, group="SO3", output="invariant") < default_tolerance(torch.float32)


def test_rotations_are_seeded_and_of_the_right_kind() -> None:
    pos = torch.randn(5, 20, 3)
    z = rotate_clouds(pos, "z", 7)
    assert torch.equal(z, rotate_clouds(pos, "z", 7)) and not torch.allclose(z, rotate_clouds(pos, "z", 8))
    torch.testing.assert_close(z[..., 2], pos[..., 2])  # about the up axis: heights unchanged
    assert not torch.allclose(z[..., :2], pos[..., :2])
    assert torch.equal(rotate_clouds(pos, "none", 7), pos)
    q = random_rotations("SO3", 50, torch.Generator().manual_seed(0))
    torch.testing.assert_close(q @ q.transpose(1, 2), torch.eye(3).expand(50, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(q), torch.ones(50), atol=1e-5, rtol=0)
    assert (q[:, 2, 2].abs() < 0.9).any()  # not only rotations about z
    with pytest.raises(ValueError, match="rotation must be one of"):
        random_rotations("xyz", 2)


def test_training_augmentation_scales_jitters_and_rotates_only_in_training() -> None:
    torch.manual_seed(0)
    pos = torch.randn(64, 100, 3, dtype=torch.float64)
    scaled = ShapesObjective("none", scale=[0.5, 2.0]).augment(pos)
    factors = scaled / pos  # one factor per cloud and axis
    torch.testing.assert_close(factors, factors[:, :1].expand_as(factors))
    assert factors.min() >= 0.5 and factors.max() <= 2.0 and factors[:, 0].std(0).min() > 0.1
    jittered = ShapesObjective("none", jitter=0.01).augment(pos) - pos
    assert jittered.abs().max() <= 0.05 and 0.008 < jittered.std() < 0.012
    rotated = ShapesObjective("SO3").augment(pos)
    torch.testing.assert_close(rotated.norm(dim=-1), pos.norm(dim=-1))
    assert not torch.allclose(rotated, pos)
    seen = []
    objective = ShapesObjective("SO3", scale=[0.5, 2.0], jitter=0.01)
    model = lambda x: seen.append(x) or x.sum(1)[:, :3]  # noqa: E731 - records what the model gets
    label = torch.zeros(64, dtype=torch.long)
    objective(model, (pos, label), "val")
    objective(model, (pos, label), "train")
    assert torch.equal(seen[0], pos) and not torch.allclose(seen[1], pos)
    for bad in ([0.0, 1.0], [1.2, 0.8], [1.0], [1.0, float("nan")]):
        with pytest.raises(ValueError, match="scale augmentation must be"):
            ShapesBenchConfig(train_scale=bad)
    with pytest.raises(ValueError, match="jitter must be"):
        ShapesBenchConfig(train_jitter=-0.1)


def test_scores_and_config_validation() -> None:
    s = scores(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 1]), 3)
    assert s["accuracy"] == 50.0 and s["mean_class_accuracy"] == pytest.approx(100 * (1 + 1 / 3) / 2)
    assert s["confusion"].tolist() == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]
    with pytest.raises(ValueError, match="unknown shape-benchmark methods"):
        ShapesBenchConfig(methods=["learned", "vn"])
    with pytest.raises(ValueError, match="budgets.dgcnn: unknown keys"):
        ShapesBenchConfig(budgets={"dgcnn": {"epochs": 3}})
    with pytest.raises(ValueError, match="canon_group"):
        ShapesBenchConfig(canon_group="SE3")
    with pytest.raises(ValueError, match="fa_train_frames"):
        ShapesBenchConfig(fa_train_frames="one")
    with pytest.raises(ValueError, match="checkpoint_backbone must be one of"):
        ShapesBenchConfig(checkpoint_backbone="vn-dgcnn")
    with pytest.raises(ValueError, match="max_time_s must be a positive"):
        ShapesBenchConfig(max_time_s=0)


def test_classify_on_a_given_device_and_eval_device() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    pos = torch.randn(5, 4, 3)
    expected = model(pos).argmax(-1)
    for device in (None, "cpu"):
        pred = classify(model, pos, batch_size=2, device=device)
        assert torch.equal(pred, expected) and pred.device.type == "cpu"
        assert next(model.parameters()).device.type == "cpu"
    assert eval_device(ShapesBenchConfig(accelerator="cpu")) == torch.device("cpu")
    assert eval_device(ShapesBenchConfig(accelerator="gpu")) == torch.device("cuda")
    assert eval_device(ShapesBenchConfig(accelerator="auto")).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_overhead_benchmark_schema(tmp_path: Path) -> None:
    small = {"num_points": 16, "k": 4, "hidden_mul": 2, "layers": 1}
    payload = canonicalizer_overhead(
        settings=({}, small), batch_size=2, points=48, num_classes=4, repeats=1, results=tmp_path / "overhead"
    )
    rows = payload["results"]
    defaults = inspect.signature(EquivariantVectorNetwork).parameters
    assert [r["default"] for r in rows] == [True, False]
    assert all(rows[0][k] == defaults[k].default for k in small)  # {} = the network's defaults, spelled out
    assert all(rows[1][k] == v for k, v in small.items())
    for r in rows:
        assert r["overhead"] == pytest.approx(r["canonicalizer_ms"] / r["pointnet_ms"], rel=0.5)
        assert r["meets_target"] == (r["overhead"] <= 0.3)
    stored = json.loads((tmp_path / "overhead.json").read_text())
    assert stored["target"] == 0.3 and len(stored["load_average_before"]) == 3
    assert "overhead" in (tmp_path / "overhead.md").read_text()


def test_harness_keeps_the_latest_epoch_for_resume(tmp_path: Path) -> None:
    """last.ckpt must be the latest epoch even when validation stops improving (what --resume continues from)."""
    from torch.utils.data import DataLoader, TensorDataset

    from geocanon.bench.harness import TrainConfig, fit

    calls = {"val": 0}

    def objective(model: torch.nn.Module, batch: list[torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        loss = ((model(batch[0]) - batch[1]) ** 2).mean()
        if stage == "val":  # a validation loss that only gets worse: the best epoch stays the first
            calls["val"] += 1
            loss = loss.detach() + calls["val"]
        return {"loss": loss}

    data = DataLoader(TensorDataset(torch.randn(8, 1), torch.randn(8, 1)), batch_size=8)
    result = fit(torch.nn.Linear(1, 1), objective, data, data, TrainConfig(max_epochs=3, progress=False), tmp_path)
    assert result.best_epoch == 0 and result.epochs_run == 3
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2
    (tmp_path / "moved").mkdir()
    for name in ("checkpoints", "result.json"):  # a finished run, moved: --resume reloads its best weights
        (tmp_path / name).rename(tmp_path / "moved" / name)
    model = torch.nn.Linear(1, 1)
    again = fit(model, objective, data, data, TrainConfig(max_epochs=3, progress=False), tmp_path / "moved", True)
    best = torch.load(tmp_path / "moved" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert again == result and torch.equal(model.weight, best["state_dict"]["model.weight"])


def test_harness_ema_weights_are_validated_saved_and_returned(tmp_path: Path) -> None:
    """With ema_decay the returned model is the moving average of the weights, not the last iterate: with a slow
    average it stays near the start of the descent while plain training reaches the optimum (w = 3)."""
    from torch.utils.data import DataLoader, TensorDataset

    from geocanon.bench.harness import TrainConfig, fit

    def objective(model: torch.nn.Module, batch: list[torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        return {"loss": ((model(batch[0]) - batch[1]) ** 2).mean()}

    x = torch.randn(64, 1)
    data = DataLoader(TensorDataset(x, 3 * x), batch_size=8)
    weights = {}
    for ema in (None, 0.99):
        model = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.zeros_(model.weight)
        config = TrainConfig(max_epochs=10, lr=0.1, scheduler="none", ema_decay=ema, progress=False)
        result = fit(model, objective, data, data, config, tmp_path / str(ema))
        best = torch.load(result.best_checkpoint, map_location="cpu", weights_only=False)
        assert torch.equal(model.weight, best["state_dict"]["model.weight"])
        weights[ema] = model.weight.item()
    assert abs(weights[None] - 3.0) < 0.1 and 0.0 < weights[0.99] < 2.0
    with pytest.raises(ValueError, match="ema_decay"):
        fit(torch.nn.Linear(1, 1), objective, data, data, TrainConfig(ema_decay=1.0, progress=False), tmp_path / "bad")


def test_harness_stops_at_its_time_cap(tmp_path: Path) -> None:
    """max_time_s stops training before max_epochs; the best epoch so far is still loaded and reported."""
    from torch.utils.data import DataLoader, TensorDataset

    from geocanon.bench.harness import TrainConfig, fit

    def objective(model: torch.nn.Module, batch: list[torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        return {"loss": ((model(batch[0]) - batch[1]) ** 2).mean()}

    data = DataLoader(TensorDataset(torch.randn(64, 1), torch.randn(64, 1)), batch_size=1)
    config = TrainConfig(max_epochs=1000, max_time_s=1e-3, progress=False)
    result = fit(torch.nn.Linear(1, 1), objective, data, data, config, tmp_path)
    assert result.epochs_run <= 1 and math.isfinite(result.best_val_loss)
