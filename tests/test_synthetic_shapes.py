"""SyntheticShapes: determinism by seed, splits, normalisation, and the mirror-image helix pair."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geocanon.data.synthetic_shapes import SyntheticShapes, helix_curve, make_shape

MIRROR_Y = torch.tensor([1.0, -1.0, 1.0])


@pytest.fixture(scope="module")
def small() -> SyntheticShapes:
    return SyntheticShapes("train", n_per_class=3, num_points=128, seed=0)


def test_shapes_labels_and_normalisation(small: SyntheticShapes) -> None:
    k = len(SyntheticShapes.CLASSES)
    assert k >= 12 and len(set(SyntheticShapes.CLASSES)) == k
    assert {"helix_left", "helix_right"} <= set(SyntheticShapes.CLASSES)
    assert small.pos.shape == (3 * k, 128, 3) and small.pos.dtype == torch.float32
    assert small.label.dtype == torch.int64
    assert torch.equal(small.label.bincount(minlength=k), torch.full((k,), 3))
    assert torch.isfinite(small.pos).all()
    radius = small.pos.norm(dim=-1).amax(-1)
    torch.testing.assert_close(radius, torch.ones_like(radius))
    assert small.pos.mean(1).abs().max() < 1e-5
    pos, label = small[4]
    assert pos.shape == (128, 3) and label.shape == () and int(label) == 1


def test_deterministic_by_seed_and_split(small: SyntheticShapes) -> None:
    again = SyntheticShapes("train", n_per_class=3, num_points=128, seed=0)
    assert torch.equal(small.pos, again.pos) and torch.equal(small.label, again.label)
    other_seed = SyntheticShapes("train", n_per_class=3, num_points=128, seed=1)
    test = SyntheticShapes("test", n_per_class=3, num_points=128, seed=0)
    for other in (other_seed, test):
        assert (small.pos - other.pos).abs().amax(dim=(1, 2)).min() > 1e-3  # every shape differs
    # a shape does not depend on how many shapes per class are drawn
    fewer = SyntheticShapes("train", n_per_class=1, num_points=128, seed=0)
    assert torch.equal(fewer.pos[1], small.pos[3])


def test_classes_differ_in_shape(small: SyntheticShapes) -> None:
    # within-class spread of a simple shape descriptor is smaller than the spread between classes
    ev = torch.linalg.eigvalsh(small.pos.transpose(1, 2) @ small.pos / small.pos.shape[1])  # [S, 3]
    per_class = ev.view(len(SyntheticShapes.CLASSES), 3, 3)
    assert per_class.std(dim=1).mean() < per_class.mean(dim=1).std(dim=0).mean()


def test_helix_curves_are_mirror_images_with_opposite_torsion() -> None:
    right = helix_curve(2.0, 1.0, 0.7, handedness=1, num=400)
    left = helix_curve(2.0, 1.0, 0.7, handedness=-1, num=400)
    np.testing.assert_allclose(left * np.array([1.0, -1.0, 1.0]), right, atol=1e-12)

    def torsion(curve: np.ndarray) -> float:
        d1, d2, d3 = (np.diff(curve, n=k, axis=0)[: len(curve) - 3] for k in (1, 2, 3))
        c = np.cross(d1, d2)
        return float(np.median(np.einsum("ij,ij->i", c, d3) / np.einsum("ij,ij->i", c, c)))

    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))  # a proper rotation
    assert torsion(right) > 0 > torsion(left)
    assert torsion(right @ q.T) == pytest.approx(torsion(right), rel=1e-6)  # rotations keep handedness


def test_helix_classes_are_exact_mirror_images() -> None:
    right = make_shape("helix_right", num_points=256, seed=7, noise=0.0)
    left = make_shape("helix_left", num_points=256, seed=7, noise=0.0)
    torch.testing.assert_close(left, right * MIRROR_Y, atol=1e-6, rtol=0)
    assert (left - right).abs().max() > 0.1


def test_rotate_z_only_turns_about_z() -> None:
    upright = make_shape("l_shape", num_points=256, seed=3, noise=0.0)
    turned = make_shape("l_shape", num_points=256, seed=3, noise=0.0, rotate_z=True)
    torch.testing.assert_close(turned[:, 2], upright[:, 2], atol=1e-5, rtol=0)
    torch.testing.assert_close(turned[:, :2].norm(dim=1), upright[:, :2].norm(dim=1), atol=1e-5, rtol=0)
    assert (turned[:, :2] - upright[:, :2]).abs().max() > 1e-2


def test_noise_moves_points_off_the_surface() -> None:
    clean = make_shape("box", num_points=512, seed=1, noise=0.0)
    noisy = make_shape("box", num_points=512, seed=1, noise=0.02)

    def off_faces(p: torch.Tensor) -> torch.Tensor:
        # distance to the nearest face of the axis-aligned box the points span: [N]
        return torch.minimum(p - p.amin(0), p.amax(0) - p).amin(1)

    assert (off_faces(clean) < 1e-5).all()
    assert (off_faces(noisy) > 1e-3).float().mean() > 0.5


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="split"):
        SyntheticShapes("validation")
    with pytest.raises(ValueError, match="n_per_class"):
        SyntheticShapes(n_per_class=0)
    with pytest.raises(ValueError, match="name must be one of"):
        make_shape("sphere")
    with pytest.raises(ValueError, match="noise"):
        make_shape("box", noise=-1.0)
