"""PoseSearch: a base frame times the grid rotation under which the base-canonical cloud scores highest."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from geocanon import CanonicalizationPrior, E3nnCanonicalizer, PCACanonicalizer, PoseSearch, checkpoint, random_group_element
from geocanon.bench.adapt import AdaptBenchConfig, AdaptObjective
from geocanon.canonicalizers import cube_rotations, rotation_grid
from geocanon.prior import mean_angle_to_identity
from geocanon.wrap import Canonicalized

from .conftest import tolerance


def test_rotation_grid_starts_with_the_cube_and_is_reproducible(dtype):
    grid = rotation_grid(100, seed=3)
    assert grid.shape == (100, 3, 3) and grid.dtype == dtype
    assert torch.allclose(grid @ grid.transpose(1, 2), torch.eye(3, dtype=dtype).expand(100, 3, 3), atol=10 * tolerance(dtype))
    assert torch.allclose(torch.linalg.det(grid), torch.ones(100, dtype=dtype), atol=10 * tolerance(dtype))
    assert torch.equal(grid[:24], cube_rotations(False, dtype)) and torch.equal(grid[0], torch.eye(3, dtype=dtype))
    assert torch.equal(grid, rotation_grid(100, seed=3)) and not torch.equal(grid[24:], rotation_grid(100, seed=4)[24:])
    with pytest.raises(ValueError, match="size must be >= 24"):
        rotation_grid(10)


def _search(group: str, **kwargs) -> PoseSearch:
    base = E3nnCanonicalizer(group, hidden_mul=4, k=6, num_points=16, power_iterations=8)
    return PoseSearch(base, **{"num_candidates": 200, "hidden": 16, "num_points": 24, "lmax": 4, "num_radial": 3,
                               "train_candidates": 32, **kwargs})  # fmt: skip


@pytest.mark.parametrize("scorer", ["pointnet", "spherical"])
@pytest.mark.parametrize("group", ["SO3", "O3", "SE3", "E3"])
def test_searched_frame_is_equivariant_dense_flat_and_masked(group, scorer, dtype):
    canon = _search(group, scorer=scorer).eval()
    pos = torch.randn(5, 40, 3) * torch.tensor([2.0, 1.0, 0.5]) + 1.0
    g = random_group_element(group, 5, dtype=pos.dtype)
    f = canon(pos)
    choice = canon.last_logits.argmax(-1)
    assert canon.last_logits.shape == (5, 200) and canon.last_candidates.shape == (200, 3, 3)
    assert len(set(choice.tolist())) > 1 and (choice > 0).any()  # the scores, not the identity, decide
    assert torch.allclose(torch.linalg.det(f.rotation), torch.linalg.det(canon.last_base_rotation))
    f2 = canon(g.apply_points(pos))
    assert (f2.rotation - g.rotation @ f.rotation).abs().max() < 10 * tolerance(dtype)
    assert (f2.translation - g.apply_points(f.translation[:, None])[:, 0]).abs().max() < 10 * tolerance(dtype)
    flat = canon(pos.reshape(-1, 3), batch=torch.arange(5).repeat_interleave(40))
    assert (flat.rotation - f.rotation).abs().max() < 10 * tolerance(dtype)
    padded = torch.cat([pos, torch.full((5, 7, 3), float("nan"))], 1)  # padding may hold anything
    masked = canon(padded, mask=(torch.arange(47) < 40).expand(5, 47))
    assert (masked.rotation - f.rotation).abs().max() < 10 * tolerance(dtype)


def test_eval_scores_in_chunks_give_the_scores_of_one_pass(monkeypatch):
    canon = _search("SO3").eval()
    pos = torch.randn(3, 40, 3) * torch.tensor([2.0, 1.0, 0.5])
    canon(pos)
    whole = canon.last_logits
    monkeypatch.setattr("geocanon.canonicalizers.search._POINTS_PER_CHUNK", 3 * 24 * 7)  # chunks of 7 rotations
    canon(pos)
    assert torch.allclose(canon.last_logits, whole, atol=1e-5)


def test_training_scores_a_random_subset_of_the_grid():
    canon = _search("SO3").train()
    pos = torch.randn(4, 40, 3)
    frame = canon(pos)
    subset = canon.last_candidates
    assert canon.last_logits.shape == (4, 32) and subset.shape == (32, 3, 3)
    in_grid = (subset[:, None] - canon.candidates[None]).abs().amax((-1, -2)).min(1).values
    assert (in_grid == 0).all()  # every scored rotation is a grid rotation
    chosen = subset[canon.last_logits.argmax(-1)]
    assert torch.allclose(frame.rotation, canon.last_base_rotation @ chosen)
    canon(pos)
    assert not torch.equal(canon.last_candidates, subset)  # drawn anew per call


@pytest.mark.parametrize("scorer", ["pointnet", "spherical"])
def test_hard_candidates_add_each_clouds_best_rotations_so_training_picks_the_evaluation_frame(scorer):
    canon = _search("SO3", scorer=scorer, hard_candidates=5)
    pos = torch.randn(4, 40, 3) * torch.tensor([2.0, 1.0, 0.5])
    evaluated = canon.eval()(pos).rotation
    best = canon.last_logits.topk(5, dim=1).indices
    trained = canon.train()(pos).rotation
    assert canon.last_candidates.shape == (4, 32 + 5, 3, 3) and canon.last_logits.shape == (4, 37)
    assert torch.equal(canon.last_candidates[:, 32:], canon.candidates[best])
    assert torch.allclose(trained, evaluated)
    loss = CanonicalizationPrior("identity", 1.0).choice_loss(canon.last_base_rotation, canon.last_logits, canon.last_candidates)
    loss.backward()  # per-cloud candidates
    assert sum(p.grad.abs().sum() for p in canon.scorer.parameters()) > 0
    with pytest.raises(ValueError, match="hard_candidates must be >= 0"):
        _search("SO3", hard_candidates=-1)
    with pytest.raises(ValueError, match="scorer must be 'pointnet' or 'spherical'"):
        _search("SO3", scorer="mlp")


def test_identity_prior_teaches_the_scorer_to_put_clouds_back_upright():
    """Trained by the prior's choice loss alone, the frames of upright training clouds approach the identity."""
    torch.manual_seed(0)
    pos = torch.randn(16, 64, 3).abs() * torch.tensor([2.0, 1.0, 0.5])  # upright, asymmetric
    canon = PoseSearch(PCACanonicalizer("SO3"), num_candidates=576, hidden=32, num_points=32, train_candidates=64)
    prior = CanonicalizationPrior("identity", 1.0)
    before = mean_angle_to_identity(canon.eval()(pos).rotation)
    optimizer = torch.optim.Adam(canon.scorer.parameters(), lr=3e-3)
    canon.train()
    for _ in range(150):
        optimizer.zero_grad()
        canon(pos)
        prior.choice_loss(canon.last_base_rotation, canon.last_logits, canon.last_candidates).backward()
        optimizer.step()
    after = mean_angle_to_identity(canon.eval()(pos).rotation)
    assert before > 60.0 and after < 30.0, (before, after)


def test_adapt_objective_adds_the_choice_loss_of_a_pose_search():
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40 * 3, 3))
    model = Canonicalized(backbone, _search("SO3"), output="invariant").train()
    pos, label = torch.randn(4, 40, 3), torch.tensor([0, 1, 2, 0])
    with_prior = AdaptObjective(CanonicalizationPrior("identity", 1.0))(model, (pos, label), "train")
    canon = model.canonicalizer
    choice = CanonicalizationPrior("identity", 1.0).choice_loss(canon.last_base_rotation, canon.last_logits, canon.last_candidates)
    frame = CanonicalizationPrior("identity", 1.0)(model.last_frame.rotation)
    assert torch.allclose(with_prior["prior"], frame + choice)
    with_prior["loss"].backward()
    assert canon.scorer.head[-1].weight.grad.abs().sum() > 0  # the choice loss reaches the scorer


def test_pose_search_checkpoint_round_trip(tmp_path: Path):
    spec = {"name": "pose_search", "config": {"base": {"name": "pca", "config": {"group": "SO3"}}, "num_candidates": 50,
                                              "hidden": 8, "num_points": 16}}  # fmt: skip
    canon = checkpoint.build(spec).eval()
    checkpoint.save(tmp_path / "c.pt", canon)
    loaded, _ = checkpoint.load(tmp_path / "c.pt")
    pos = torch.randn(3, 20, 3)
    assert isinstance(loaded, PoseSearch) and torch.equal(loaded.candidates, canon.candidates)
    assert torch.equal(loaded.eval()(pos).rotation, canon(pos).rotation)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="num_points, train_candidates and hidden"):
        PoseSearch(PCACanonicalizer("SO3"), num_points=0)
    with pytest.raises(ValueError, match="size must be >= 24"):
        PoseSearch(PCACanonicalizer("SO3"), num_candidates=12)
    with pytest.raises(ValueError, match="canon_search and canon_choice"):
        AdaptBenchConfig(canon_search=True, canon_choice=True)
