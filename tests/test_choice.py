"""OctahedralChoice: a base frame times a learned, invariant choice among the cube rotations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from geocanon import CanonicalizationPrior, E3nnCanonicalizer, OctahedralChoice, checkpoint, random_group_element
from geocanon.canonicalizers import cube_rotations
from geocanon.frames import has_reflections

from .conftest import tolerance


def _choice(group: str, **base) -> OctahedralChoice:
    return OctahedralChoice(E3nnCanonicalizer(group, hidden_mul=4, k=6, num_points=16, power_iterations=8, **base), hidden=16)


@pytest.mark.parametrize("reflections, count", [(False, 24), (True, 48)])
def test_cube_rotations_are_the_signed_permutations(reflections, count):
    mats = cube_rotations(reflections, dtype=torch.float64)
    assert mats.shape == (count, 3, 3) and torch.equal(mats[0], torch.eye(3, dtype=torch.float64))
    eye = torch.eye(3, dtype=torch.float64).expand(count, 3, 3)
    assert torch.equal(mats @ mats.transpose(1, 2), eye)
    assert len({tuple(m.flatten().tolist()) for m in mats}) == count
    dets = torch.linalg.det(mats)
    assert (dets > 0).all() if not reflections else (dets < 0).sum() == 24


@pytest.mark.parametrize("group", ["SO3", "O3", "SE3", "E3"])
def test_choice_frame_is_equivariant_with_flat_and_dense_layouts(group, dtype):
    canon = _choice(group)
    pos = torch.randn(6, 40, 3) * torch.tensor([2.0, 1.0, 0.5]) + 1.0
    g = random_group_element(group, 6, dtype=pos.dtype)
    f, f2 = canon(pos), canon(g.apply_points(pos))
    assert ((f2.rotation - g.rotation @ f.rotation).abs().max() < 10 * tolerance(dtype))
    assert (f2.to_canonical_points(g.apply_points(pos)) - f.to_canonical_points(pos)).abs().max() < 100 * tolerance(dtype)
    assert canon.last_logits.shape == (6, 48 if has_reflections(group) else 24)
    # the choice is not always the identity: the head really picks
    base = canon.base(pos).rotation
    assert not torch.allclose(f.rotation, base)
    flat = canon(pos.reshape(-1, 3), batch=torch.arange(6).repeat_interleave(40))
    assert (flat.rotation - f.rotation).abs().max() < 10 * tolerance(dtype)


def test_choice_loss_targets_the_candidate_closest_to_the_prior():
    cands = cube_rotations()
    base = cands[[5, 17]].transpose(1, 2)  # R0 = P^T: the candidate P itself gives the identity frame
    logits = torch.zeros(2, 24)
    prior = CanonicalizationPrior("identity", 2.0)
    uniform = prior.choice_loss(base, logits, cands)
    assert torch.isclose(uniform, 2.0 * torch.log(torch.tensor(24.0)), atol=1e-3)  # one-hot target
    logits[0, 5] = logits[1, 17] = 20.0
    assert prior.choice_loss(base, logits, cands) < 1e-3
    assert CanonicalizationPrior("none").choice_loss(base, logits, cands) == 0
    # the axis prior cannot tell the 4 rotations about "up" apart: its target spreads over them
    axis = CanonicalizationPrior("axis", 1.0)
    spread = axis.choice_loss(torch.eye(3).expand(1, 3, 3), torch.zeros(1, 24), cands)
    assert torch.isclose(spread, torch.log(torch.tensor(24.0)), atol=1e-3)
    up_fixed = (cands[:, 2, 2] == 1).nonzero().flatten()
    assert len(up_fixed) == 4
    peaked = torch.full((1, 24), -20.0)
    peaked[0, up_fixed] = 0.0
    assert axis.choice_loss(torch.eye(3).expand(1, 3, 3), peaked, cands) < 1.4  # ~log 4


def test_choice_head_learns_to_put_upright_clouds_back_upright():
    """Trained with the identity prior's choice loss alone, the head picks the best candidate on its training clouds."""
    torch.manual_seed(0)
    skewed = torch.randn(16, 64, 3).abs() * torch.tensor([2.0, 1.0, 0.5])
    pos = skewed @ cube_rotations()[torch.randint(24, (16,))].transpose(1, 2)  # upright up to the cube group
    canon = _choice("SO3", signs="third-moment")
    prior = CanonicalizationPrior("identity", 1.0)
    optimizer = torch.optim.Adam(canon.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        canon(pos)
        loss = prior.choice_loss(canon.last_base_rotation, canon.last_logits, canon.candidates)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        frame = canon(pos).rotation
        distance = ((canon.last_base_rotation[:, None] @ canon.candidates - torch.eye(3)) ** 2).sum((-1, -2))
        assert len(distance.argmin(1).unique()) > 4  # the right choice differs between clouds
        assert torch.allclose(((frame - torch.eye(3)) ** 2).sum((-1, -2)), distance.amin(1), atol=1e-5)


def test_choice_checkpoint_round_trip(tmp_path: Path):
    spec = {"name": "octahedral_choice", "config": {"base": {"name": "pca", "config": {"group": "SO3"}}, "hidden": 8}}
    canon = checkpoint.build(spec)
    checkpoint.save(tmp_path / "c.pt", canon)
    loaded, _ = checkpoint.load(tmp_path / "c.pt")
    pos = torch.randn(3, 20, 3)
    assert isinstance(loaded, OctahedralChoice) and torch.equal(loaded(pos).rotation, canon(pos).rotation)
