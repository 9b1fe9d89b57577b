"""Canonicalization priors and diagnostics on known rotations."""

from __future__ import annotations

import math

import pytest
import torch
from e3nn import o3

from geocanon import CanonicalizationPrior, axis_prior, fraction_within, identity_prior, mean_angle_to_identity
from geocanon.canonicalizers import cube_rotations
from geocanon.prior import appearance_prior


def rot_z(theta: float) -> torch.Tensor:
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def rot_x(theta: float) -> torch.Tensor:
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]], dtype=torch.float64)


@pytest.mark.parametrize("theta", [0.0, 0.3, 1.2, math.pi])
def test_identity_prior_formula(theta):
    r = rot_z(theta)[None]
    assert identity_prior(r).item() == pytest.approx(4 * (1 - math.cos(theta)), abs=1e-12)
    assert identity_prior(r, reference=r[0]).item() == pytest.approx(0.0, abs=1e-12)


def test_axis_prior_ignores_rotation_about_the_axis():
    assert axis_prior(rot_z(1.1)[None]).item() == pytest.approx(0.0, abs=1e-12)
    theta = 0.5
    # R u - u for u = z, R = rot_x(θ): |(0, -sin θ, cos θ - 1)|² = 2(1 - cos θ)
    assert axis_prior(rot_x(theta)[None]).item() == pytest.approx(2 * (1 - math.cos(theta)), abs=1e-12)
    assert axis_prior(rot_x(theta)[None], axis=(1.0, 0.0, 0.0)).item() == pytest.approx(0.0, abs=1e-12)


def test_prior_module_kinds():
    r = torch.stack([rot_x(0.4), rot_z(0.4)])
    assert CanonicalizationPrior("none")(r).item() == 0.0
    assert CanonicalizationPrior("identity", beta=2.0)(r).item() == pytest.approx(2 * 4 * (1 - math.cos(0.4)), abs=1e-12)
    assert CanonicalizationPrior("axis", beta=1.0)(r).item() == pytest.approx((2 * (1 - math.cos(0.4))) / 2, abs=1e-12)
    with pytest.raises(ValueError, match="prior kind"):
        CanonicalizationPrior("upright")


def test_diagnostics():
    r = torch.stack([rot_z(math.radians(5)), rot_z(math.radians(9)), rot_x(math.radians(30)), rot_x(math.radians(90))])
    assert fraction_within(r, 10.0) == pytest.approx(0.5)
    assert mean_angle_to_identity(r) == pytest.approx((5 + 9 + 30 + 90) / 4, abs=1e-6)
    reflected = -torch.eye(3, dtype=torch.float64)[None]
    assert fraction_within(reflected, 10.0) == 0.0


def test_prior_gradient_pulls_towards_identity():
    angle = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    c, s = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros(()), torch.ones(())
    r = torch.stack([torch.stack([c, -s, zero]), torch.stack([s, c, zero]), torch.stack([zero, zero, one])])[None]
    identity_prior(r).backward()
    assert angle.grad.item() > 0  # descending reduces the angle


def test_prior_batch_mean_reference_reflection_and_axis_scale():
    thetas = [0.2, 0.9, 2.5]
    r = torch.stack([rot_z(t) for t in thetas])
    expected = sum(4 * (1 - math.cos(t)) for t in thetas) / 3
    assert identity_prior(r).item() == pytest.approx(expected, abs=1e-12)
    assert identity_prior(r, reference=r).item() == pytest.approx(0.0, abs=1e-12)  # per-cloud references [B, 3, 3]
    mirror = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    for t in (0.0, 0.7, math.pi):  # a reflected frame is at least 4 away from I
        assert identity_prior((rot_x(t) @ mirror)[None]).item() >= 4.0 - 1e-12
    # the axis is normalised: (0, 0, 5) is the z axis
    tilted = rot_x(0.6)[None]
    assert axis_prior(tilted, axis=(0.0, 0.0, 5.0)).item() == pytest.approx(axis_prior(tilted).item(), abs=1e-12)
    assert fraction_within(r, 10.0, reference=rot_z(0.25)) == pytest.approx(1 / 3)  # 0.2 rad is 2.9° from 0.25


def _square_prism() -> torch.Tensor:
    """A point set mapped onto itself by 90° turns about z (and by 180° turns about x): [1, 48, 3]."""
    g = torch.linspace(-1.0, 1.0, 4)
    xy = torch.cartesian_prod(g, g)
    return torch.cat([torch.cat([xy, torch.full((16, 1), z)], 1) for z in (-0.5, 0.0, 0.5)])[None]


def test_appearance_prior_is_zero_at_the_identity_and_at_the_shapes_symmetries():
    prism = _square_prism()
    quarter = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])[None]  # 90° about z
    tilt = o3.axis_angle_to_matrix(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([0.3]))
    assert appearance_prior(torch.eye(3)[None], prism, num_points=48).item() == pytest.approx(0.0, abs=1e-12)
    assert appearance_prior(quarter, prism, num_points=48).item() == pytest.approx(0.0, abs=1e-10)
    assert appearance_prior(tilt, prism, num_points=48).item() > 1e-3
    assert identity_prior(quarter) > 1.0  # the identity prior tells the two symmetric poses apart
    # translation of the input does not matter (both clouds are centred at the input's centroid)
    shifted = appearance_prior(tilt, prism + torch.tensor([5.0, -2.0, 1.0]), num_points=48)
    assert shifted.item() == pytest.approx(appearance_prior(tilt, prism, num_points=48).item(), rel=1e-4)


def test_appearance_choice_loss_spreads_its_target_over_symmetric_candidates():
    prism = _square_prism()
    prior = CanonicalizationPrior("appearance", 1.0, appearance_points=48)
    candidates = cube_rotations()
    logits = torch.zeros(1, 24, requires_grad=True)
    prior.choice_loss(torch.eye(3)[None], logits, candidates, pos=prism).backward()
    # d loss / d logits = softmax(logits) - target: the target is where the gradient is most negative
    target = (1.0 / 24 - logits.grad[0]).clamp_min(0)
    keeps_z = (candidates[:, 2, 2] == 1.0) & (candidates[:, :2, 2] == 0).all(-1)  # the 4 turns about z
    flips_z = candidates[:, 2, 2] == -1.0  # the 4 half turns about horizontal axes: also symmetries of the prism
    assert torch.allclose(target[keeps_z | flips_z], torch.full((8,), 1 / 8), atol=1e-3)
    with pytest.raises(ValueError, match="pass pos"):
        prior.choice_loss(torch.eye(3)[None], logits, candidates)
    with pytest.raises(ValueError, match="pass pos"):
        prior(torch.eye(3)[None])
    with pytest.raises(ValueError, match="prior kind must be"):
        CanonicalizationPrior("upright")
    with pytest.raises(ValueError, match="NaN or Inf"):
        prior(torch.eye(3)[None], prism.index_fill(1, torch.tensor([3]), float("nan")))
    with pytest.raises(ValueError, match=r"pos must be \[B, N, 3\] with B = 1"):
        prior(torch.eye(3)[None], prism[0])
