"""Every canonicalizer and group: exact equivariance of frames, invariance of canonical coordinates."""

from __future__ import annotations

import pytest
import torch

from geocanon import (
    E3nnCanonicalizer,
    Frame,
    IdentityCanonicalizer,
    OctahedralChoice,
    RegressedOrientation,
    PCACanonicalizer,
    PoseSearch,
    random_group_element,
)
from geocanon.canonicalizers.frame_averaging import pca_frames
from geocanon.frames import has_reflections, has_translations
from geocanon.testing import frame_sensitivity

from .conftest import tolerance

GROUPS = ["SO3", "O3", "SE3", "E3"]


def _small_learned(group: str, **kw) -> E3nnCanonicalizer:
    return E3nnCanonicalizer(group=group, hidden_mul=4, layers=2, k=6, num_points=16, **kw)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _assert_equivariant_frame(canon, pos: torch.Tensor, group: str, tol: float, **kwargs) -> None:
    b = pos.shape[0]
    g = random_group_element(group, b, dtype=pos.dtype)
    f = canon(pos, **kwargs)
    moved = {k: (v @ g.rotation.transpose(1, 2)[:, None] if k == "vectors" else v) for k, v in kwargs.items()}
    f2 = canon(g.apply_points(pos), **moved)
    assert _rel(f2.rotation, g.rotation @ f.rotation) < tol
    assert _rel(f2.translation, g.apply_points(f.translation[:, None])[:, 0]) < tol if has_translations(group) else True
    assert _rel(f2.to_canonical_points(g.apply_points(pos)), f.to_canonical_points(pos)) < tol
    eye = torch.eye(3, dtype=pos.dtype).expand(b, 3, 3)
    assert (f.rotation.transpose(1, 2) @ f.rotation - eye).abs().max() < 10 * tol
    det = torch.linalg.det(f.rotation)
    if not has_reflections(group):
        assert torch.allclose(det, torch.ones_like(det), atol=10 * tol)
    else:
        # reflections of the input reflect the frame: det(R') = det(Q) det(R)
        assert torch.allclose(torch.linalg.det(f2.rotation), torch.linalg.det(g.rotation) * det, atol=1e-3)
    if not has_translations(group):
        assert (f.translation == 0).all()


@pytest.mark.parametrize("refinement", [{}, {"power_iterations": 4}, {"power_iterations": 4, "signs": "third-moment"}],
                         ids=["raw", "power", "power+moment-signs"])
@pytest.mark.parametrize("group", GROUPS)
def test_learned_frame_is_equivariant(group, refinement, dtype):
    canon = _small_learned(group, **refinement)
    pos = torch.randn(5, 40, 3) * 2 + 3
    _assert_equivariant_frame(canon, pos, group, tolerance(dtype))
    assert canon(pos).rotation.shape == (5, 3, 3) and canon(pos).translation.shape == (5, 3)


def test_power_iterations_pull_learned_axes_to_principal_axes():
    torch.manual_seed(0)
    pos = torch.randn(6, 200, 3) * torch.tensor([3.0, 1.5, 0.5])  # well separated variances
    pos = pos @ random_group_element("SO3", 6).rotation.transpose(1, 2)
    raw = _small_learned("SO3")(pos).rotation
    refined = _small_learned("SO3", power_iterations=30)
    pca = PCACanonicalizer("SO3")(pos).rotation
    cos = (refined(pos).rotation * pca).sum(1).abs()  # |cos| between matching axes
    assert (cos > 1 - 1e-4).all()
    cos_raw = (raw * pca).sum(1).abs()
    assert (cos_raw[:, 0] < 0.99).any()  # the unrefined network's axes are not the principal axes


@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_learned_translation_and_features(group, dtype):
    canon = _small_learned(group, translation="learned", num_scalar_features=2, num_vector_features=1)
    pos = torch.randn(4, 9, 3)
    scalars = torch.randn(4, 9, 2)
    vectors = torch.randn(4, 9, 1, 3)
    _assert_equivariant_frame(canon, pos, group, tolerance(dtype), scalars=scalars, vectors=vectors)
    centroid = pos.mean(1)
    assert (canon(pos, scalars=scalars, vectors=vectors).translation - centroid).abs().max() > 1e-3  # really learned


@pytest.mark.parametrize("group", GROUPS)
def test_pca_frame_is_equivariant(group, dtype):
    # anisotropic clouds: distinct variances and non-zero third moments (PCA's well-defined regime)
    pos = torch.randn(6, 60, 3) * torch.tensor([3.0, 2.0, 1.0]) + torch.randn(6, 60, 3) ** 2 * 0.3
    _assert_equivariant_frame(PCACanonicalizer(group), pos, group, tolerance(dtype))


@pytest.mark.parametrize("group", GROUPS)
def test_frame_averaging_frames_are_equivariant_as_a_set(group):
    pos = torch.randn(3, 50, 3, dtype=torch.float64) * torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    g = random_group_element(group, 3, dtype=torch.float64)
    frames = pca_frames(pos, group=group)
    k = 8 if has_reflections(group) else 4
    assert len(frames) == 3 * k
    moved = pca_frames(g.apply_points(pos), group=group)
    # the set of canonical clouds is invariant: each moved frame's canonical cloud matches one original
    can = frames.to_canonical_points(pos.repeat_interleave(k, 0)).view(3, k, 50, 3)
    can2 = moved.to_canonical_points(g.apply_points(pos).repeat_interleave(k, 0)).view(3, k, 50, 3)
    dist = (can[:, :, None] - can2[:, None]).flatten(3).norm(dim=-1)  # [3, k, k]
    assert dist.min(-1).values.max() < 1e-9
    assert torch.allclose(torch.linalg.det(moved.rotation).abs(), torch.ones(3 * k, dtype=torch.float64))


def test_identity_canonicalizer_is_identity_and_not_equivariant():
    canon = IdentityCanonicalizer()
    pos = torch.randn(2, 10, 3)
    f = canon(pos)
    assert torch.equal(f.rotation, torch.eye(3).expand(2, 3, 3)) and (f.translation == 0).all()
    g = random_group_element("SO3", 2)
    can_moved = canon(g.apply_points(pos)).to_canonical_points(g.apply_points(pos))
    assert _rel(can_moved, f.to_canonical_points(pos)) > 0.1  # a check that can fail does fail here


def test_so3_canonicalizer_sees_chirality():
    """SO3 frames (cross product) map a mirror image to the mirrored canonical cloud; O3 frames do not."""
    with torch.no_grad():
        pos = torch.randn(2, 30, 3, dtype=torch.float32)
        mirror = pos * torch.tensor([1.0, 1.0, -1.0])
        so3, o3 = _small_learned("SO3"), _small_learned("O3")
        c, cm = so3(pos).to_canonical_points(pos), so3(mirror).to_canonical_points(mirror)
        assert _rel(cm, c * torch.tensor([1.0, 1.0, -1.0])) < 1e-4
        c, cm = o3(pos).to_canonical_points(pos), o3(mirror).to_canonical_points(mirror)
        assert _rel(cm, c) < 1e-4


@pytest.mark.parametrize("power_iterations", [0, 3])
@pytest.mark.parametrize("group", ["SE3", "O3"])
def test_dense_flat_and_masked_layouts_agree(group, power_iterations):
    torch.set_default_dtype(torch.float64)
    try:
        canon = _small_learned(group, num_scalar_features=1, power_iterations=power_iterations)
        sizes = [7, 12, 20]
        clouds = [torch.randn(n, 3) for n in sizes]
        feats = [torch.randn(n, 1) for n in sizes]
        ref = [canon(c[None], scalars=s[None]) for c, s in zip(clouds, feats)]
        batch = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
        flat = canon(torch.cat(clouds), batch=batch, scalars=torch.cat(feats))
        dense = torch.zeros(3, 20, 3)
        dense_s = torch.zeros(3, 20, 1)
        mask = torch.zeros(3, 20, dtype=torch.bool)
        for i, (c, s) in enumerate(zip(clouds, feats)):
            dense[i, : len(c)], dense_s[i, : len(c)], mask[i, : len(c)] = c, s, True
        dense[~mask] = 1e3  # padding garbage must not matter
        masked = canon(dense, mask=mask, scalars=dense_s)
        for i in range(3):
            for f in (flat, masked):
                assert torch.allclose(f.rotation[i], ref[i].rotation[0], atol=1e-10)
                assert torch.allclose(f.translation[i], ref[i].translation[0], atol=1e-10)
    finally:
        torch.set_default_dtype(torch.float32)


def test_subsampling_keeps_equivariance_on_large_clouds():
    canon = E3nnCanonicalizer(group="E3", hidden_mul=4, k=6, num_points=32)
    with torch.no_grad():
        pos = torch.randn(3, 500, 3, dtype=torch.float32)
        _assert_equivariant_frame(canon, pos, "E3", tolerance(torch.float32))


@pytest.mark.parametrize("group", GROUPS)
def test_learned_gradients_finite(group):
    canon = _small_learned(group)
    pos = torch.randn(3, 20, 3, requires_grad=True)
    f = canon(pos)
    (f.to_canonical_points(pos) ** 2).sum().backward()
    assert torch.isfinite(pos.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in canon.parameters() if p.grad is not None)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in canon.parameters())


BAD_INPUTS = [
    (torch.randn(2, 5), "shape"),
    (torch.randn(2, 5, 4), "shape"),
    (torch.full((1, 5, 3), float("nan")), "NaN"),
    (torch.tensor([[[0.0, 0.0, float("inf")], [1.0, 2.0, 3.0]]]), "NaN or Inf"),
    (torch.zeros(1, 0, 3), "empty"),
    (torch.zeros(0, 5, 3), "no clouds"),
    (torch.randn(1, 1, 3), "single-point"),
    (torch.ones(2, 6, 3) * 4.2, "coincide"),
    (torch.linspace(0, 1, 8)[None, :, None] * torch.tensor([1.0, 2.0, 3.0]), "collinear"),
]


@pytest.mark.parametrize("pos, message", BAD_INPUTS)
@pytest.mark.parametrize(
    "make",
    [
        lambda: _small_learned("SE3"),
        lambda: _small_learned("SE3", power_iterations=4, signs="third-moment"),
        lambda: PCACanonicalizer("SO3"),
        lambda: OctahedralChoice(PCACanonicalizer("SO3"), hidden=8),
        lambda: RegressedOrientation(_small_learned("SE3", power_iterations=4), hidden=8),
    ],
    ids=["learned", "learned-refined", "pca", "octahedral-choice", "regressed-orientation"],
)
def test_bad_input_raises_value_error(pos, message, make):
    with pytest.raises(ValueError, match=message):
        make()(pos)


def test_coplanar_rejected_for_reflection_groups_only():
    pos = torch.randn(2, 20, 3)
    pos[..., 2] = 0
    with pytest.raises(ValueError, match="coplanar"):
        _small_learned("E3")(pos)
    with pytest.raises(ValueError, match="coplanar"):
        PCACanonicalizer("O3")(pos)
    f = _small_learned("SE3")(pos)  # rotation-only frames are defined for planar clouds
    assert torch.isfinite(f.rotation).all()


def test_bad_feature_shapes():
    canon = _small_learned("SE3", num_scalar_features=1, num_vector_features=1)
    pos = torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="needs scalars"):
        canon(pos, vectors=torch.randn(2, 5, 1, 3))
    with pytest.raises(ValueError, match="scalars must have"):
        canon(pos, scalars=torch.randn(2, 5, 2), vectors=torch.randn(2, 5, 1, 3))
    with pytest.raises(ValueError, match="NaN"):
        canon(pos, scalars=torch.full((2, 5, 1), float("nan")), vectors=torch.randn(2, 5, 1, 3))


def test_padding_nan_is_ignored_but_real_nan_is_reported():
    pos = torch.randn(2, 6, 3)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    pos[1, 4:] = float("nan")
    assert isinstance(PCACanonicalizer("SO3")(pos, mask=mask), Frame)
    pos[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"cloud\(s\) \[1\]"):
        PCACanonicalizer("SO3")(pos, mask=mask)


def test_too_few_hidden_channels_is_rejected():
    with pytest.raises(ValueError, match="hidden_mul"):
        E3nnCanonicalizer(group="E3", hidden_mul=2, translation="learned")


@pytest.mark.parametrize("group", ["SO3", "SE3"])
def test_pseudovector_outputs_rotation_exact_and_nonzero_on_centrally_symmetric_clouds(group, dtype):
    canon = E3nnCanonicalizer(group=group, hidden_mul=4, k=6, num_points=None, pseudovector_outputs=True)
    half = torch.randn(3, 20, 3) * torch.tensor([3.0, 2.0, 1.0])
    pos = torch.cat([half, -half], 1)  # exactly centrally symmetric
    _assert_equivariant_frame(canon, pos, group, tolerance(dtype))
    vec = canon.network(pos)  # no subsampling: the graph keeps the central symmetry
    assert vec.norm(dim=-1).min() > 1e-3 * pos.norm(dim=-1).mean()
    plain = E3nnCanonicalizer(group=group, hidden_mul=4, k=6, num_points=None)  # O(3)-equivariant 1o outputs vanish: f(-x) = -f(x)
    assert plain.network(pos).norm(dim=-1).max() < 1e-5 * pos.norm(dim=-1).mean()


def test_pseudovector_outputs_rejected_for_reflection_groups():
    with pytest.raises(ValueError, match="reflection"):
        E3nnCanonicalizer(group="O3", pseudovector_outputs=True)


def test_frame_sensitivity_measures_frame_jumps():
    torch.manual_seed(0)
    stretched = torch.randn(4, 300, 3) * torch.tensor([3.0, 1.5, 0.5])
    assert frame_sensitivity(IdentityCanonicalizer("SO3"), stretched).abs().max() < 1e-3
    assert frame_sensitivity(PCACanonicalizer("SO3"), stretched, noise=1e-3).max() < 1.0  # separated variances: smooth
    # a cube's corners tie all three variances: the PCA frame jumps for a tiny jitter
    cube = torch.tensor([[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)])
    assert frame_sensitivity(PCACanonicalizer("SO3"), cube.expand(4, 8, 3), noise=1e-4).median() > 10.0
    mask = torch.ones(4, 300, dtype=torch.bool)
    mask[:, 250:] = False
    padded = stretched.clone()
    padded[:, 250:] = 1e6  # padding must neither move nor count
    turns = frame_sensitivity(PCACanonicalizer("SO3"), padded, noise=1e-3, mask=mask)
    assert turns.shape == (4,) and turns.max() < 1.0


def test_power_iterations_make_the_learned_axes_stable_under_point_noise():
    """The axes (as lines) stop jumping; their signs still come from the network and may flip."""
    torch.manual_seed(0)
    pos = torch.randn(16, 256, 3) * torch.tensor([2.0, 1.0, 0.5])
    noisy = pos + 0.02 * torch.randn_like(pos)

    def worst_line_cos(canon) -> torch.Tensor:  # [B] smallest |cos| between matching axes before/after
        with torch.no_grad():
            return (canon(pos).rotation * canon(noisy).rotation).sum(1).abs().amin(-1)

    assert worst_line_cos(_small_learned("SO3")).median() < 0.9
    assert worst_line_cos(_small_learned("SO3", power_iterations=30)).min() > 0.999


def test_third_moment_signs_make_refined_frames_match_pca_on_skewed_clouds():
    torch.manual_seed(0)
    pos = torch.randn(6, 300, 3).abs() * torch.tensor([3.0, 1.5, 0.5])  # skewed along every axis
    pos = pos @ random_group_element("SO3", 6).rotation.transpose(1, 2)
    canon = _small_learned("SO3", power_iterations=40, signs="third-moment")
    with torch.no_grad():
        assert _rel(canon(pos).rotation, PCACanonicalizer("SO3")(pos).rotation) < 1e-4
    with pytest.raises(ValueError, match="power_iterations"):
        _small_learned("SO3", signs="third-moment")
    with pytest.raises(ValueError, match="signs"):
        _small_learned("SO3", power_iterations=2, signs="coin")


def test_skewness_along_principal_axes_is_standardized_and_invariant():
    from geocanon.canonicalizers.pca import principal_axes, skewness

    torch.manual_seed(0)
    half = torch.randn(1, 200, 3, dtype=torch.float64) * torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64) + 1.0
    sym = torch.cat([half, half * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)], 1)  # mirror x -> -x
    skewed = torch.randn(1, 400, 3, dtype=torch.float64).exp() * torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    pos = torch.cat([sym, skewed])
    mask = torch.ones(2, 400, dtype=torch.bool)

    def abs_skew(p):
        centroid, axes, variances = principal_axes(p, mask)
        return skewness(p, mask, centroid, axes, variances).abs()

    s = abs_skew(pos)
    assert s[0].min() < 1e-12  # the mirror direction
    assert (s[1] > 1.0).all()  # log-normal: strongly skewed along every axis
    moved = random_group_element("E3", 2, dtype=torch.float64).apply_points(pos) * 7.0  # any E(3) element and scale
    assert torch.allclose(abs_skew(moved), s, atol=1e-9)


def _every_canonicalizer(name: str, group: str):
    refined = dict(hidden_mul=4, k=6, num_points=16, power_iterations=8)
    return {
        "learned": lambda: _small_learned(group),
        "learned-refined": lambda: _small_learned(group, power_iterations=4, signs="third-moment"),
        "pca": lambda: PCACanonicalizer(group),
        "choice": lambda: OctahedralChoice(E3nnCanonicalizer(group, **refined), hidden=16),
        "orientation": lambda: RegressedOrientation(E3nnCanonicalizer(group, **refined), hidden=16),
        "search": lambda: PoseSearch(E3nnCanonicalizer(group, **refined), num_candidates=200, hidden=16, num_points=24, lmax=4, num_radial=3),
        "identity": lambda: IdentityCanonicalizer(group),
    }[name]()


@pytest.mark.parametrize("name", ["learned", "learned-refined", "pca", "choice", "orientation", "search", "identity"])
@pytest.mark.parametrize("group", GROUPS)
def test_every_canonicalizer_on_variable_size_flat_batches(name, group, dtype):
    """A PyG-style batch of clouds of different sizes (pos [M, 3], batch [M]): each cloud's frame is the frame of
    that cloud alone, and frames are exactly equivariant (canonical points invariant) under a random group
    element per cloud; the identity "canonicalizer" fails that check, so the check can fail."""
    canon = _every_canonicalizer(name, group).eval()
    sizes = [17, 30, 24]
    clouds = [torch.randn(n, 3) * torch.tensor([3.0, 2.0, 1.0]) + 1.0 for n in sizes]
    pos = torch.cat(clouds)
    batch = torch.arange(3).repeat_interleave(torch.tensor(sizes))
    with torch.no_grad():
        flat = canon(pos, batch=batch)
        assert flat.rotation.shape == (3, 3, 3) and flat.translation.shape == (3, 3)
        for i, cloud in enumerate(clouds):
            alone = canon(cloud[None])
            torch.testing.assert_close(flat.rotation[i], alone.rotation[0], atol=10 * tolerance(dtype), rtol=0)
            torch.testing.assert_close(flat.translation[i], alone.translation[0], atol=10 * tolerance(dtype), rtol=0)
        g = random_group_element(group, 3, dtype=pos.dtype)
        moved_pos = g.apply_points(pos, batch)
        moved = canon(moved_pos, batch=batch)
        canonical_error = _rel(moved.to_canonical_points(moved_pos, batch), flat.to_canonical_points(pos, batch))
    with pytest.raises(ValueError, match="either batch= .* or mask="):  # a mask beside batch= is not silently dropped
        canon(pos, batch=batch, mask=torch.ones(len(pos), dtype=torch.bool))
    if name == "identity":
        assert canonical_error > 1e-2
        return
    assert canonical_error < tolerance(dtype)
    assert _rel(moved.rotation, g.rotation @ flat.rotation) < tolerance(dtype)
    if has_translations(group):
        assert _rel(moved.translation, g.apply_points(flat.translation[:, None])[:, 0]) < tolerance(dtype)
