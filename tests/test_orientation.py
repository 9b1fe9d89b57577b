"""RegressedOrientation: a base frame times a rotation regressed from the invariant base-canonical cloud."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from geocanon import (
    CanonicalizationPrior,
    E3nnCanonicalizer,
    OctahedralChoice,
    PCACanonicalizer,
    RegressedOrientation,
    checkpoint,
    random_group_element,
)
from geocanon.prior import mean_angle_to_identity

from .conftest import tolerance


def _regressed(group: str, choice: bool = False) -> RegressedOrientation:
    base = E3nnCanonicalizer(group, hidden_mul=4, k=6, num_points=16, power_iterations=8)
    canon = RegressedOrientation(OctahedralChoice(base, hidden=8) if choice else base, hidden=16)
    torch.nn.init.normal_(canon.regressor.head[-1].weight, std=0.5)  # away from the identity start
    return canon


@pytest.mark.parametrize("choice", [False, True], ids=["on-e3nn", "on-choice"])
@pytest.mark.parametrize("group", ["SO3", "O3", "SE3", "E3"])
def test_regressed_frame_is_equivariant_dense_flat_and_masked(group, choice, dtype):
    canon = _regressed(group, choice)
    pos = torch.randn(5, 40, 3) * torch.tensor([2.0, 1.0, 0.5]) + 1.0
    g = random_group_element(group, 5, dtype=pos.dtype)
    f, f2 = canon(pos), canon(g.apply_points(pos))
    assert (f2.rotation - g.rotation @ f.rotation).abs().max() < 10 * tolerance(dtype)
    assert (f2.translation - g.apply_points(f.translation[:, None])[:, 0]).abs().max() < 10 * tolerance(dtype)
    # the correction really turns the base frame
    assert mean_angle_to_identity(canon.last_correction) > 5.0
    flat = canon(pos.reshape(-1, 3), batch=torch.arange(5).repeat_interleave(40))
    assert (flat.rotation - f.rotation).abs().max() < 10 * tolerance(dtype)
    padded = torch.cat([pos, torch.full((5, 7, 3), 99.0)], 1)
    mask = torch.arange(47) < 40
    masked = canon(padded, mask=mask.expand(5, 47))
    assert (masked.rotation - f.rotation).abs().max() < 10 * tolerance(dtype)


def test_correction_starts_at_the_identity():
    base = PCACanonicalizer("SO3")
    canon = RegressedOrientation(base, hidden=8)
    pos = torch.randn(4, 30, 3) * torch.tensor([3.0, 2.0, 1.0])
    assert torch.allclose(canon(pos).rotation, base(pos).rotation, atol=1e-6)
    assert torch.allclose(canon.last_correction, torch.eye(3).expand(4, 3, 3), atol=1e-6)


def test_identity_prior_teaches_the_head_to_put_clouds_back_upright():
    """Trained by the identity prior alone, the frames of the training clouds approach the identity."""
    torch.manual_seed(0)
    pos = torch.randn(16, 64, 3).abs() * torch.tensor([2.0, 1.0, 0.5])  # upright, asymmetric
    canon = RegressedOrientation(E3nnCanonicalizer("SO3", hidden_mul=4, k=6, num_points=16, power_iterations=8), 32)
    prior = CanonicalizationPrior("identity", 1.0)
    before = mean_angle_to_identity(canon(pos).rotation.detach())
    optimizer = torch.optim.Adam(canon.regressor.parameters(), lr=1e-2)
    for _ in range(200):
        optimizer.zero_grad()
        prior(canon(pos).rotation).backward()
        optimizer.step()
    after = mean_angle_to_identity(canon(pos).rotation.detach())
    assert before > 60.0 and after < 25.0, (before, after)


def test_regressed_orientation_checkpoint_round_trip(tmp_path: Path):
    base = {"name": "octahedral_choice", "config": {"base": {"name": "pca", "config": {"group": "SO3"}}, "hidden": 8}}
    canon = checkpoint.build({"name": "regressed_orientation", "config": {"base": base, "hidden": 8}})
    torch.nn.init.normal_(canon.regressor.head[-1].weight)
    checkpoint.save(tmp_path / "c.pt", canon)
    loaded, _ = checkpoint.load(tmp_path / "c.pt")
    pos = torch.randn(3, 20, 3)
    assert isinstance(loaded, RegressedOrientation) and isinstance(loaded.base, OctahedralChoice)
    assert torch.equal(loaded(pos).rotation, canon(pos).rotation)
