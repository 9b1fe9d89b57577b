"""SphericalScorer: scores of a cloud in many orientations from its rotated spherical-harmonic moments."""

from __future__ import annotations

import pytest
import torch

from geocanon.canonicalizers import rotation_grid
from geocanon.nn.spherical_scorer import SphericalScorer

from .conftest import tolerance


def _scorer(k: int = 60) -> SphericalScorer:
    scorer = SphericalScorer(rotation_grid(k, seed=1), lmax=4, num_radial=3, hidden=16)
    for p in scorer.parameters():  # well away from a near-constant initial MLP
        torch.nn.init.normal_(p, std=0.5)
    return scorer


def test_orientation_k_scores_the_cloud_rotated_by_g_k(dtype):
    """Score k of p equals score 0 (the identity) of Gₖᵀp: the Wigner matrices follow the convention."""
    scorer = _scorer()
    pos = torch.randn(3, 50, 3) * torch.tensor([2.0, 1.0, 0.5])
    grid = rotation_grid(60, seed=1)
    assert torch.equal(grid[0], torch.eye(3, dtype=dtype))
    mask = torch.ones(3, 50, dtype=torch.bool)
    scores = scorer(pos, mask, torch.arange(60))
    for k in (5, 24, 59):
        rotated = scorer(pos @ grid[k], mask, torch.tensor([0]))[:, 0]  # row vectors times G = Gᵀp
        assert torch.allclose(rotated, scores[:, k], atol=100 * tolerance(dtype), rtol=0)
    assert scores.std() > 1e-2  # the orientations do score differently


def test_scores_ignore_translation_padding_and_chunking(monkeypatch):
    scorer = _scorer()
    pos = torch.randn(2, 30, 3)
    full = torch.ones(2, 30, dtype=torch.bool)
    index = torch.arange(60)
    with torch.no_grad():
        reference = scorer(pos, full, index)
        assert torch.allclose(scorer(pos + torch.tensor([3.0, -1.0, 2.0]), full, index), reference, atol=1e-4)
        padded = torch.cat([pos, torch.full((2, 5, 3), float("nan"))], 1)  # padding may hold anything
        mask = (torch.arange(35) < 30).expand(2, 35)
        assert torch.allclose(scorer(padded, mask, index), reference, atol=1e-5)
        per_cloud = torch.stack([index.flip(0), index])  # [B, K'] indices, each cloud its own order
        assert torch.allclose(scorer(pos, full, per_cloud), torch.stack([reference[0].flip(0), reference[1]]), atol=1e-5)
        monkeypatch.setattr("geocanon.nn.spherical_scorer._FEATURES_PER_CHUNK", 2 * 48 * 7)  # chunks of 7
        assert torch.allclose(scorer(pos, full, index), reference, atol=1e-5)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match=r"rotations must be \[K, 3, 3\]"):
        SphericalScorer(torch.eye(3))
    with pytest.raises(ValueError, match="lmax, num_radial and hidden"):
        SphericalScorer(rotation_grid(24), lmax=0)
    with pytest.raises(ValueError, match=r"index must be \[K'\] or \[B, K'\]"):
        _scorer()(torch.randn(2, 10, 3), torch.ones(2, 10, dtype=torch.bool), torch.zeros(3, 4, dtype=torch.long))
