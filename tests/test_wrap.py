"""Canonicalized and FrameAveraged around random non-equivariant backbones, plus equivariance_error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from geocanon import Canonicalized, Comoving, E3nnCanonicalizer, Ensemble, FrameAveraged, IdentityCanonicalizer, PCACanonicalizer
from geocanon.canonicalizers.frame_averaging import pca_frames, smooth_step, weighted_pca_frames
from geocanon.frames import Frame
from geocanon.testing import assert_equivariant, equivariance_error
from geocanon.wrap import map_back

from .conftest import PointMLP, charged_clouds, tolerance


def _learned(group: str, **kw) -> E3nnCanonicalizer:
    return E3nnCanonicalizer(group=group, hidden_mul=4, k=6, num_points=16, **kw)


@pytest.mark.parametrize("group", ["SO3", "O3", "SE3", "E3"])
@pytest.mark.parametrize("output", ["invariant", "vector", "position"])
def test_canonicalized_backbone_is_exact(group, output, dtype):
    model = Canonicalized(PointMLP(per_point=output != "invariant"), _learned(group), output=output)
    pos = torch.randn(4, 15, 3)
    err = equivariance_error(model, pos, group=group, output=output, trials=3)
    assert err < tolerance(dtype), err
    bare = equivariance_error(model.backbone, pos, group=group, output=output, trials=3)
    assert bare > 1e-2  # the check can fail: the bare backbone is not equivariant


def test_canonicalized_with_features_nbody_style(dtype):
    canon = _learned("E3", num_scalar_features=1, num_vector_features=1, translation="learned")
    model = Canonicalized(
        PointMLP(per_point=True, vel=True, charge=True), canon, "position", vector_features=["vel"], scalar_features=["charge"]
    )
    pos, vel = torch.randn(3, 5, 3), torch.randn(3, 5, 3)
    charge = torch.randint(0, 2, (3, 5, 1)).to(pos.dtype) * 2 - 1
    err = equivariance_error(model, pos, "E3", "position", vectors={"vel": vel}, scalars={"charge": charge})
    assert err < tolerance(dtype)
    assert model.last_frame is not None and model.last_frame.rotation.shape == (3, 3, 3)


def test_pyg_batch_matches_dense(dtype):
    torch.manual_seed(3)
    model = Canonicalized(PointMLP(per_point=True), _learned("SE3"), output="position")
    sizes = [6, 9]
    clouds = [torch.randn(n, 3) for n in sizes]
    batch = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    flat = model(torch.cat(clouds), batch=batch)
    for i, c in enumerate(clouds):
        assert torch.allclose(flat[batch == i], model(c[None])[0], atol=10 * tolerance(dtype))
    err = equivariance_error(model, torch.cat(clouds), "SE3", "position", batch=batch)
    assert err < tolerance(dtype)


def test_pyg_data_batch_objects():
    from torch_geometric.data import Batch, Data

    data = Batch.from_data_list([Data(pos=torch.randn(n, 3)) for n in (5, 8, 11)])
    model = Canonicalized(PointMLP(per_point=False), _learned("SO3"), output="invariant")
    out = model(data.pos, batch=data.batch)
    assert out.shape == (3, 4)
    assert equivariance_error(model, data.pos, "SO3", batch=data.batch) < tolerance(torch.float32)


def test_masked_dense_batch(dtype):
    model = Canonicalized(PointMLP(per_point=False), _learned("E3"), output="invariant")
    pos = torch.randn(2, 10, 3)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 6:] = False
    out = model(pos, mask=mask)
    assert torch.allclose(out[0], model(pos[:1, :6])[0], atol=10 * tolerance(dtype))
    assert equivariance_error(model, pos, "E3", mask=mask) < tolerance(dtype)


@pytest.mark.parametrize("group", ["SO3", "O3"])
def test_frame_averaging_is_exact(group, dtype):
    pos = torch.randn(3, 30, 3) * torch.tensor([3.0, 2.0, 1.0])
    model = FrameAveraged(PointMLP(per_point=False), group=group)
    assert equivariance_error(model, pos, group) < tolerance(dtype)
    vec_model = FrameAveraged(PointMLP(per_point=True), group=group, output="vector")
    assert equivariance_error(vec_model, pos, group, "vector") < tolerance(dtype)


@pytest.mark.parametrize("group", ["SO3", "O3", "SE3", "E3"])
@pytest.mark.parametrize("output", ["invariant", "vector", "position"])
@pytest.mark.parametrize("sign_tolerance", [None, 0.3], ids=["uniform", "weighted"])
def test_frame_averaging_on_flat_pyg_batches_matches_dense_and_is_exact(group, output, sign_tolerance, dtype):
    torch.manual_seed(6)
    sizes = [7, 12, 9]
    clouds, charges, pos, charge, batch = charged_clouds(sizes)
    model = FrameAveraged(PointMLP(per_point=output != "invariant", charge=True), group=group, output=output, scalar_features=["charge"],
                          sign_tolerance=sign_tolerance, point_weights="charge", point_weight_values=[1.0], orientations=2)
    flat = model(pos, charge=charge, batch=batch)
    assert flat.shape == ((3, 4) if output == "invariant" else (sum(sizes), 3))
    for i, (c, q) in enumerate(zip(clouds, charges)):  # each cloud as it comes out of a dense call on its own
        alone = model(c[None], charge=q[None])[0]
        torch.testing.assert_close(flat[i] if output == "invariant" else flat[batch == i], alone, atol=10 * tolerance(dtype), rtol=0)
    err = equivariance_error(model, pos, group, output, scalars={"charge": charge}, batch=batch)
    assert err < tolerance(dtype), err
    assert equivariance_error(model.backbone, pos, group, output, scalars={"charge": charge}, batch=batch) > 1e-2  # the check can fail
    model.train()  # one frame per cloud in training, flat as well
    assert model(pos, charge=charge, batch=batch).shape == flat.shape
    with pytest.raises(ValueError, match="either batch= .* or mask="):
        model.eval()(pos[None], charge=charge[None], batch=batch, mask=torch.ones(1, len(pos), dtype=torch.bool))
    with pytest.raises(ValueError, match=r"must be \[M, 1\] to take 1 point_weight_values"):
        model(pos, charge=charge[:, 0], batch=batch)


def test_frame_averaging_takes_pyg_batch_objects_with_per_point_invariant_outputs(dtype):
    from torch_geometric.data import Batch, Data

    torch.manual_seed(7)
    data = Batch.from_data_list([Data(pos=torch.randn(n, 3) * torch.tensor([3.0, 2.0, 1.0])) for n in (5, 8, 11)])
    model = FrameAveraged(PointMLP(per_point=True), group="E3", output="invariant")  # e.g. per-point segmentation logits
    out = model(data.pos, batch=data.batch)
    assert out.shape == (24, 3)
    assert equivariance_error(model, data.pos, "E3", "invariant", batch=data.batch) < tolerance(dtype)
    torch.testing.assert_close(out[data.batch == 1], model(data.pos[data.batch == 1][None])[0], atol=10 * tolerance(dtype), rtol=0)
    with pytest.raises(ValueError, match="empty"):
        model(data.pos[:5], batch=torch.tensor([0, 0, 0, 2, 2]))


def test_wrappers_reject_features_that_are_not_per_point():
    pos, batch = torch.randn(7, 3), torch.tensor([0, 0, 0, 1, 1, 1, 1])
    wrappers = [FrameAveraged(PointMLP(per_point=False, charge=True), group="E3", scalar_features=["charge"]),
                Canonicalized(PointMLP(per_point=False, charge=True), PCACanonicalizer("E3"), scalar_features=["charge"])]
    for model in wrappers:
        with pytest.raises(ValueError, match=r"feature 'charge' must be per point, shape \[7\]"):
            model(pos, charge=torch.ones(9, 1), batch=batch)  # longer than pos: a gather would not notice
        with pytest.raises(ValueError, match=r"feature 'charge' must be per point, shape \[2, 5\]"):
            model(torch.randn(2, 5, 3), charge=torch.ones(2, 4, 1))


def test_sampled_frame_averaging_trains_through_one_frame_and_evaluates_all(dtype):
    pos = torch.randn(4, 30, 3) * torch.tensor([3.0, 2.0, 1.0])
    model = FrameAveraged(PointMLP(per_point=False), group="SO3", train_frames="sampled")
    frames = pca_frames(pos, group="SO3")
    per_frame = model.backbone(frames.to_canonical_points(pos.repeat_interleave(4, 0))).unflatten(0, (4, 4))
    torch.manual_seed(0)
    out = model.train()(pos)  # one of the 4 frames per cloud
    gap = (out[:, None] - per_frame).abs().amax(-1)  # [B, K]
    assert (gap.amin(1) < tolerance(dtype)).all()
    assert (gap.amax(1) > 1e-3).all()  # the frames do give different outputs: the check can fail
    model.eval()
    assert torch.allclose(model(pos), per_frame.mean(1), atol=tolerance(dtype))
    assert equivariance_error(model, pos, "SO3") < tolerance(dtype)
    with pytest.raises(ValueError, match="train_frames"):
        FrameAveraged(PointMLP(per_point=False), train_frames="one")


@pytest.mark.parametrize("group", ["SE3", "E3"])
def test_random_frame_training_sees_random_orientations_and_evaluates_the_pca_frames(dtype, group):
    """train_frames="random": in training the backbone sees each cloud about its centroid (the frames' origin for
    SE3/E3) in a random orientation (never one of the K PCA frames: its covariance is not diagonal), improper
    ones too where the group has reflections, and the output is mapped back exactly; in eval the K PCA frames
    are averaged as ever, so a non-equivariant backbone becomes exactly equivariant."""
    pos = torch.randn(64, 30, 3) * torch.tensor([3.0, 2.0, 1.0]) + 5.0
    seen: list[torch.Tensor] = []

    class Recorder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return x

    model = FrameAveraged(Recorder(), group=group, output="position", train_frames="random").train()
    torch.manual_seed(0)
    out = model(pos)
    assert torch.allclose(out, pos, atol=tolerance(dtype))  # an equivariant backbone stays exact in training
    canonical = seen[-1]
    assert canonical.shape == pos.shape and canonical.mean(1).abs().max() < tolerance(dtype)
    cov = canonical.transpose(1, 2) @ canonical
    off_diagonal = (cov - torch.diag_embed(cov.diagonal(dim1=1, dim2=2))).abs().amax((1, 2)) / cov.abs().amax((1, 2))
    assert (off_diagonal > 1e-3).all()  # not a PCA frame
    det = torch.linalg.det(torch.linalg.lstsq(pos - pos.mean(1, keepdim=True), canonical).solution)
    assert torch.allclose(det.abs(), torch.ones_like(det), atol=1e-6)
    assert (det < 0).any() == (group == "E3") and (det > 0).any()
    model.eval()
    model(pos)
    frames = pca_frames(pos, group=group)
    assert torch.allclose(seen[-1], frames.to_canonical_points(pos.repeat_interleave(len(frames) // 64, 0)), atol=tolerance(dtype))
    vec_model = FrameAveraged(PointMLP(per_point=True), group=group, output="vector", train_frames="random").eval()
    assert equivariance_error(vec_model, pos, group, "vector") < tolerance(dtype)


@pytest.mark.parametrize("group", ["SO3", "O3", "SE3", "E3"])
@pytest.mark.parametrize("output", ["invariant", "vector", "position"])
@pytest.mark.parametrize("sign_tolerance", [None, 0.3])
def test_orientations_average_every_frame_in_fixed_turns_exactly(group, output, sign_tolerance, dtype):
    """orientations=M: in eval the backbone sees each PCA frame F_k turned by Q_0 = I, Q_1 ... Q_{M-1} (fixed), the
    outputs averaged (weights split evenly); the result stays exactly equivariant with a non-equivariant backbone."""
    torch.manual_seed(3)
    pos = torch.randn(5, 30, 3) * torch.tensor([3.0, 2.0, 1.0])
    per_point = output != "invariant"
    kw = {"group": group, "output": output, "sign_tolerance": sign_tolerance}
    model = FrameAveraged(PointMLP(per_point=per_point), orientations=3, **kw).eval()
    single = FrameAveraged(model.backbone, **kw).eval()
    assert model.turns.shape == (3, 3, 3) and torch.equal(model.turns[0], torch.eye(3, dtype=torch.float64))
    assert torch.allclose(model.turns.transpose(1, 2) @ model.turns, torch.eye(3, dtype=torch.float64).expand(3, 3, 3))
    # by hand: the turned frames are what the backbone sees, and the outputs are mapped back through them
    if sign_tolerance is None:
        frames, weights = pca_frames(pos, group=group), torch.full((5, len(pca_frames(pos[:1], group=group))), 1.0)
        weights = weights / weights.shape[1]
    else:
        frames, weights = weighted_pca_frames(pos, group=group, sign_tolerance=sign_tolerance)
    k = weights.shape[1]
    rotation = frames.rotation.unflatten(0, (5, k))[:, :, None] @ model.turns.to(dtype)  # [B, K, M, 3, 3]
    expected = torch.zeros_like(single(pos))
    for m in range(3):
        for j in range(k):
            turned = Frame(rotation[:, j, m], frames.translation.unflatten(0, (5, k))[:, j])
            out = map_back(model.backbone(turned.to_canonical_points(pos)), turned, output)
            expected = expected + (weights[:, j] / 3).reshape(-1, *[1] * (out.ndim - 1)) * out
    assert torch.allclose(model(pos), expected, atol=tolerance(dtype))
    assert (model(pos) - single(pos)).abs().max() > 1e-3  # the turns change the output: the comparison can fail
    assert equivariance_error(model, pos, group, output) < tolerance(dtype)
    # rebuilt models draw the same turns; they are not in the state dict, so checkpoints without them still load
    assert torch.equal(FrameAveraged(PointMLP(per_point=per_point), orientations=3, **kw).turns, model.turns)
    assert "turns" not in model.state_dict()
    single.load_state_dict(model.state_dict())
    single.set_orientations(3)  # re-set on a built model: the same turns, the same outputs
    assert torch.equal(single.turns, model.turns) and torch.equal(single(pos), model(pos))
    with pytest.raises(ValueError, match="orientations"):
        single.set_orientations(0)


def test_orientations_leave_sampled_training_alone_and_reject_bad_counts():
    calls: list[int] = []

    class Counter(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(len(x))
            return x.sum(1)

    pos = torch.randn(4, 30, 3) * torch.tensor([3.0, 2.0, 1.0])
    for train_frames, per_step in (("random", 4), ("sampled", 4), ("all", 4 * 4 * 2)):
        FrameAveraged(Counter(), group="SO3", train_frames=train_frames, orientations=2).train()(pos)
        assert calls[-1] == per_step
    FrameAveraged(Counter(), group="SO3", train_frames="random", orientations=2).eval()(pos)
    assert calls[-1] == 4 * 4 * 2
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="orientations must be a positive integer"):
            FrameAveraged(Counter(), orientations=bad)


def test_smooth_step_is_a_c1_step_with_complementary_halves():
    z = torch.linspace(-2, 2, 401, dtype=torch.float64)
    h = smooth_step(z)
    assert torch.allclose(h + smooth_step(-z), torch.ones_like(z))
    assert (h[z <= -1] == 0).all() and (h[z >= 1] == 1).all() and (h.diff() >= 0).all()
    slope = h.diff() / z.diff()
    assert slope.max() <= 0.75 + 1e-9 and slope[:10].abs().max() < 1e-12  # flat where it joins 0: C¹


@pytest.mark.parametrize("group", ["SO3", "E3"])
def test_weighted_frames_sum_to_one_and_keep_one_frame_for_skewed_clouds(group):
    torch.manual_seed(0)
    skewed = torch.randn(3, 40, 3, dtype=torch.float64).exp() * torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    frames, weights = weighted_pca_frames(skewed, group=group, sign_tolerance=0.1)
    k = 8 if group == "E3" else 4
    assert len(frames) == 3 * k and weights.shape == (3, k)
    assert torch.allclose(weights.sum(1), torch.ones(3, dtype=torch.float64)) and (weights >= 0).all()
    assert ((weights == 1).sum(1) == 1).all()  # log-normal clouds: every axis clearly skewed, PCA's single frame
    # a cloud mirror-symmetric across x = 0 (x: the axis of least variance) has zero skewness along x: with
    # reflections, the frames differing only in that axis' sign (the last sign, fastest in the order) weigh the same
    half = torch.randn(1, 20, 3, dtype=torch.float64) * torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64) + torch.tensor([1.0, 0, 0], dtype=torch.float64)
    sym = torch.cat([half, half * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)], 1)
    _, w = weighted_pca_frames(sym, group=group, sign_tolerance=0.1)
    if group == "E3":
        pairs = w.view(4, 2)
        assert torch.allclose(pairs[:, 0], pairs[:, 1]) and (pairs.sum(1) > 0).sum() >= 1 and (w > 0).sum() >= 2
    with pytest.raises(ValueError, match="sign_tolerance"):
        weighted_pca_frames(sym, group=group, sign_tolerance=0.0)
    with pytest.raises(ValueError, match="sign_tolerance"):
        FrameAveraged(PointMLP(per_point=False), sign_tolerance=-1.0)


@pytest.mark.parametrize("group", ["SO3", "O3", "SE3", "E3"])
@pytest.mark.parametrize("output", ["invariant", "vector", "position"])
def test_weighted_frame_averaging_is_exact(group, output, dtype):
    torch.manual_seed(1)
    pos = torch.randn(5, 30, 3) * torch.tensor([3.0, 2.0, 1.0])
    model = FrameAveraged(PointMLP(per_point=output != "invariant"), group=group, output=output, sign_tolerance=0.3)
    _, weights = weighted_pca_frames(pos, group=group, sign_tolerance=0.3)
    assert ((weights > 0).sum(1) > 1).any() and ((weights > 0).sum(1) < weights.shape[1]).any()  # both regimes tested
    assert equivariance_error(model, pos, group, output) < tolerance(dtype)
    assert equivariance_error(model.backbone, pos, group, output) > 1e-2  # the check can fail
    mask = torch.ones(5, 30, dtype=torch.bool)
    mask[1, 20:] = False
    alone = model(pos[1:2, :20])[0]
    assert torch.allclose(model(pos, mask=mask)[1][: len(alone)], alone, atol=10 * tolerance(dtype))


@pytest.mark.parametrize("group", ["O3", "E3"])
@pytest.mark.parametrize("sign_tolerance", [None, 0.3], ids=["uniform", "weighted"])
@pytest.mark.parametrize("output", ["invariant", "vector"])
def test_frame_averaging_is_exact_on_coplanar_clouds(group, sign_tolerance, output, dtype):
    """A coplanar cloud is its own mirror image through its plane: no single O3/E3 frame is equivariant there
    (PCA rejects it), but the frame set holds both signs of the normal, with equal weights, so the average is."""
    from geocanon.frames import random_rotation

    torch.manual_seed(3)
    flat = torch.randn(4, 25, 3) * torch.tensor([3.0, 2.0, 0.0])
    pos = flat @ random_rotation(1, dtype=flat.dtype)[0] + 1.0  # a generic plane, off the origin
    with pytest.raises(ValueError, match="coplanar"):
        PCACanonicalizer(group)(pos)
    model = FrameAveraged(PointMLP(per_point=output != "invariant"), group=group, output=output, sign_tolerance=sign_tolerance)
    assert equivariance_error(model, pos, group, output) < tolerance(dtype)
    assert equivariance_error(model.backbone, pos, group, output) > 1e-2  # the check can fail
    _, weights = weighted_pca_frames(pos, group=group, sign_tolerance=0.3)
    by_normal_sign = weights.view(4, 4, 2)  # sign patterns (s1, s2, s3) with s3 varying fastest
    torch.testing.assert_close(by_normal_sign[..., 0], by_normal_sign[..., 1], rtol=0, atol=tolerance(dtype))
    mask = torch.ones(4, 25, dtype=torch.bool)
    mask[1, 20:] = False  # a smaller planar cloud padded to the batch
    alone = model(pos[1:2, :20])[0]
    assert torch.allclose(model(pos, mask=mask)[1][: len(alone)], alone, atol=10 * tolerance(dtype))
    line = torch.randn(2, 10, 1) * torch.tensor([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="collinear"):
        model(line)


@pytest.mark.parametrize("group", ["O3", "E3"])
@pytest.mark.parametrize("sign_tolerance", [None, 0.3], ids=["uniform", "weighted"])
@pytest.mark.parametrize("output", ["invariant", "vector", "position"])
def test_mass_weighted_frames_are_exact_and_centred_on_the_centre_of_mass(group, sign_tolerance, output, dtype):
    torch.manual_seed(4)
    pos = torch.randn(3, 12, 3) * torch.tensor([3.0, 2.0, 1.0])
    mass = torch.tensor([1.0, 12.0, 16.0])[torch.randint(0, 3, (3, 12, 1))]  # a per-point scalar feature [B, N, 1]
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 8:] = False
    mass[1, 8:] = 0.0  # padding's weight is ignored, whatever it is
    kw = dict(group=group, output=output, scalar_features=["charge"], sign_tolerance=sign_tolerance)
    model = FrameAveraged(PointMLP(per_point=output != "invariant", charge=True), point_weights="charge", point_weight_values=[1.0], **kw)
    err = equivariance_error(model, pos, group, output, scalars={"charge": mass}, mask=mask)
    assert err < tolerance(dtype), err
    assert equivariance_error(model.backbone, pos, group, output, scalars={"charge": mass}, mask=mask) > 1e-2  # the check can fail
    uniform = FrameAveraged(model.backbone, **kw)
    assert (model(pos, charge=mass, mask=mask) - uniform(pos, charge=mass, mask=mask)).abs().max() > 1e-3  # the weights are used
    alone = model(pos[1:2, :8], charge=mass[1:2, :8])[0]
    assert torch.allclose(model(pos, charge=mass, mask=mask)[1][: len(alone)], alone, atol=10 * tolerance(dtype))
    # the translation is the centre of mass, on dense and on flat (PyG) batches alike
    w = mass[..., 0]
    frames = pca_frames(pos, mask=mask, group=group, point_weights=w)
    centre = (pos * (w * mask)[..., None]).sum(1) / (w * mask).sum(1, keepdim=True)
    torch.testing.assert_close(frames.translation.view(3, 8, 3)[:, 0], centre if group == "E3" else torch.zeros_like(centre))
    flat = pca_frames(pos[mask], batch=mask.nonzero()[:, 0], group=group, point_weights=w[mask])
    torch.testing.assert_close(flat.rotation, frames.rotation)


@pytest.mark.parametrize("sign_tolerance", [None, 0.3], ids=["uniform", "weighted"])
def test_zero_weight_points_take_no_part_in_the_frames(sign_tolerance, dtype):
    torch.manual_seed(5)
    pos = torch.randn(2, 9, 3) * torch.tensor([3.0, 2.0, 1.0])
    heavy = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])  # e.g. 0 for hydrogens, 1 for heavy atoms
    charge = heavy.expand(2, 9)[..., None]
    model = FrameAveraged(PointMLP(per_point=True, charge=True), group="E3", output="vector", scalar_features=["charge"],
                          point_weights="charge", point_weight_values=[1.0], sign_tolerance=sign_tolerance)
    err = equivariance_error(model, pos, "E3", "vector", scalars={"charge": charge})
    assert err < tolerance(dtype), err
    assert equivariance_error(model.backbone, pos, "E3", "vector", scalars={"charge": charge}) > 1e-2  # the check can fail
    # the frames are those of the positive-weight points alone: moving the others leaves them as they were
    keep = heavy > 0
    frames = pca_frames(pos, group="E3", point_weights=heavy.expand(2, 9))
    alone = pca_frames(pos[:, keep], group="E3")
    torch.testing.assert_close(frames.rotation, alone.rotation)
    torch.testing.assert_close(frames.translation, alone.translation)
    moved = pos.clone()
    moved[:, ~keep] += torch.randn_like(moved[:, ~keep])
    torch.testing.assert_close(pca_frames(moved, group="E3", point_weights=heavy.expand(2, 9)).rotation, frames.rotation)
    # three positive-weight points span only a plane (ethanol's C, C, O): accepted, both normals averaged
    three = torch.zeros(9)
    three[:3] = 1.0
    skeleton = pos.clone()
    skeleton[:, :3] = torch.tensor([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [2.0, 1.3, 0.0]]) + 0.1 * torch.randn(2, 3, 3)
    err = equivariance_error(model, skeleton, "E3", "vector", scalars={"charge": three.expand(2, 9)[..., None]})
    assert err < tolerance(dtype), err


def test_point_weights_reject_bad_input():
    pos = torch.randn(2, 6, 3) * torch.tensor([3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match=r"point_weights must have the points' shape \[2, 6\]"):
        pca_frames(pos, point_weights=torch.ones(2, 5))
    for bad in (-1.0, float("nan"), float("inf")):
        w = torch.ones(2, 6)
        w[1, 3] = bad
        with pytest.raises(ValueError, match="finite and non-negative on every real point"):
            weighted_pca_frames(pos, point_weights=w)
    w = torch.ones(2, 6)
    w[1, 2:] = 0.0  # two points of positive weight: a line
    with pytest.raises(ValueError, match=r"pos \(its points of positive weight\): points are collinear in cloud\(s\) \[1\]"):
        pca_frames(pos, point_weights=w)
    w[1] = 0.0
    with pytest.raises(ValueError, match=r"pos \(its points of positive weight\) has empty cloud\(s\) \[1\]"):
        pca_frames(pos, point_weights=w)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 3:] = False
    w = torch.ones(2, 6)
    w[1, 3:] = torch.tensor([-5.0, float("nan"), float("inf")])
    assert torch.isfinite(pca_frames(pos, mask=mask, point_weights=w).rotation).all()  # padding may hold anything
    with pytest.raises(ValueError, match="point_weights must name one of the scalar features"):
        FrameAveraged(PointMLP(per_point=False, charge=True), scalar_features=["charge"], point_weights="mass")
    with pytest.raises(ValueError, match="point_weight_values needs point_weights"):
        FrameAveraged(PointMLP(per_point=False), point_weight_values=[1.0])
    model = FrameAveraged(PointMLP(per_point=False, charge=True), scalar_features=["charge"], point_weights="charge", point_weight_values=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"must be \[B, N, 2\] to take 2 point_weight_values"):
        model(pos, charge=torch.ones(2, 6, 1))


def _skewness_flip(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A cloud (not mirror-symmetric) at which the skewness along its least-variance axis is 0, and a bump
    direction along which that skewness changes sign: ([1, 30, 3], [1, 30, 3])."""
    from geocanon.canonicalizers.pca import principal_axes

    g = torch.Generator().manual_seed(2)
    half = torch.randn(1, 15, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64)
    half = half + torch.tensor([1.0, 0, 0], dtype=torch.float64)
    other = half * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64) + 2.0 * torch.randn(1, 15, 3, generator=g, dtype=torch.float64) * torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    cloud = torch.cat([half, other], 1)  # x-values mirror each other, y/z do not: no mirror symmetry
    bump = torch.zeros_like(cloud)
    bump[0, 0, 0] = 1.0

    def skew(t: float) -> float:
        pos = cloud + t * bump
        centroid, axes, _ = principal_axes(pos, torch.ones(1, 30, dtype=torch.bool))
        axis = axes[0, :, 2] * torch.sign(axes[0, 0, 2])  # least-variance axis, oriented along +x
        return float((((pos[0] - centroid[0]) @ axis) ** 3).mean())

    lo, hi = -1.0, 1.0
    assert skew(lo) * skew(hi) < 0
    for _ in range(60):  # bisection to the sign change
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if skew(mid) * skew(lo) > 0 else (lo, mid)
    return (cloud + lo * bump).to(dtype), bump.to(dtype)


def test_weighted_frame_averaging_is_continuous_where_pca_jumps(dtype):
    torch.manual_seed(2)
    flip, bump = _skewness_flip(dtype)
    weighted = FrameAveraged(PointMLP(per_point=False), group="E3", sign_tolerance=0.1)
    pca = Canonicalized(weighted.backbone, PCACanonicalizer("E3"))
    eps = 1e-3
    plus, minus = flip + eps * bump, flip - eps * bump
    assert (weighted(plus) - weighted(minus)).abs().max() < 0.01  # continuous (Lipschitz) across the flip
    assert (pca(plus) - pca(minus)).abs().max() > 0.3  # the single PCA frame jumps there: the check can fail
    huge = FrameAveraged(weighted.backbone, group="E3", sign_tolerance=1e9)  # τ -> ∞: plain frame averaging
    assert torch.allclose(huge(plus), FrameAveraged(weighted.backbone, group="E3")(plus), atol=tolerance(dtype))


def test_weighted_sampled_training_draws_frames_of_positive_weight(dtype):
    torch.manual_seed(3)
    pos = torch.randn(6, 30, 3) * torch.tensor([3.0, 2.0, 1.0])
    model = FrameAveraged(PointMLP(per_point=False), group="SO3", train_frames="sampled", sign_tolerance=0.3)
    frames, weights = weighted_pca_frames(pos, group="SO3", sign_tolerance=0.3)
    per_frame = model.backbone(frames.to_canonical_points(pos.repeat_interleave(4, 0))).unflatten(0, (6, 4))
    for _ in range(5):
        out = model.train()(pos)
        gap = (out[:, None] - per_frame).abs().amax(-1)  # [B, K]
        drawn = gap.argmin(1)
        assert (gap.amin(1) < tolerance(dtype)).all() and (weights.gather(1, drawn[:, None]) > 0).all()
    model.eval()
    assert torch.allclose(model(pos), (weights[..., None] * per_frame).sum(1), atol=tolerance(dtype))


def test_pca_canonicalized_exact_on_generic_clouds(dtype):
    pos = torch.randn(3, 30, 3) * torch.tensor([3.0, 2.0, 1.0])
    model = Canonicalized(PointMLP(per_point=False), PCACanonicalizer("SE3"))
    assert equivariance_error(model, pos, "SE3") < tolerance(dtype)


def test_nan_outputs_fail_the_check():
    """max() ignores NaN (max(0.0, nan) == 0.0): a model returning NaN must still fail, not pass with error 0."""
    pos = torch.randn(2, 10, 3)
    assert equivariance_error(lambda p: torch.full_like(p, float("nan")), pos, "SO3", "vector") == float("inf")
    assert equivariance_error(lambda p: p.sum(1) * float("inf"), pos, "SO3", "vector") == float("inf")
    with pytest.raises(AssertionError, match="exceeds tolerance"):
        assert_equivariant(lambda p: p.norm(dim=-1) * float("nan"), pos, group="SO3")


def test_identity_canonicalizer_fails_the_check():
    model = Canonicalized(PointMLP(per_point=False), IdentityCanonicalizer())
    with pytest.raises(AssertionError, match="exceeds tolerance"):
        assert_equivariant(model, torch.randn(2, 10, 3), group="SO3")


def test_equivariance_error_compares_per_point_outputs_on_real_points_only(dtype):
    """Padding's per-point outputs are not part of the contract: garbage there passes, an error on a real point fails."""
    pos = torch.randn(2, 6, 3)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False

    def centred(p, mask, garbage_at):
        centre = (p * mask[..., None]).sum(1, keepdim=True) / mask.sum(1)[:, None, None]
        out = p - centre  # equivariant vectors on the real points
        out[garbage_at] = p[garbage_at].abs()  # not equivariant where it is written
        return out

    assert equivariance_error(lambda p, mask: centred(p, mask, (1, 5)), pos, "E3", "vector", mask=mask) < tolerance(dtype)
    nan_padding = lambda p, mask: centred(p, mask, (1, 5)).index_put((torch.tensor(1), torch.tensor(4)), torch.tensor(float("nan")))
    assert equivariance_error(nan_padding, pos, "E3", "vector", mask=mask) < tolerance(dtype)
    assert equivariance_error(lambda p, mask: centred(p, mask, (1, 3)), pos, "E3", "vector", mask=mask) > 1e-2
    assert equivariance_error(lambda p: centred(p, mask, (1, 5)), pos, "E3", "vector") > 1e-2  # no mask: every point counts


def test_gradients_flow_to_canonicalizer_and_backbone():
    model = Canonicalized(PointMLP(per_point=True), _learned("SE3"), output="position")
    pos = torch.randn(2, 12, 3, requires_grad=True)
    model(pos).pow(2).sum().backward()
    assert torch.isfinite(pos.grad).all()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.canonicalizer.parameters())
    assert all(p.grad is not None for p in model.backbone.parameters())


def test_feature_routing_errors():
    model = Canonicalized(PointMLP(per_point=True, vel=True), _learned("SE3"), "vector", vector_features=["vel"])
    pos = torch.randn(1, 5, 3)
    with pytest.raises(ValueError, match="missing features"):
        model(pos)
    with pytest.raises(ValueError, match="unexpected features"):
        model(pos, vel=torch.randn(1, 5, 3), spin=torch.randn(1, 5, 3))
    with pytest.raises(ValueError, match="output must be one of"):
        Canonicalized(PointMLP(per_point=True), _learned("SE3"), "pseudovector")
    with pytest.raises(ValueError, match="both as vectors and as scalars"):
        Canonicalized(PointMLP(per_point=True), _learned("SE3"), vector_features=["a"], scalar_features=["a"])


def _boost_error(model: nn.Module, pos, vel, charge, horizon: float, **layout) -> float:
    """Largest |f(x, v + u) - f(x, v) - horizon·u| over a random boost u per cloud (relative to |f|)."""
    torch.manual_seed(5)
    if "batch" in layout:
        u = torch.randn(int(layout["batch"].max()) + 1, 3, dtype=pos.dtype)[layout["batch"]]
    else:
        u = torch.randn(pos.shape[0], 1, 3, dtype=pos.dtype).expand_as(vel)
    out = model(pos, vel=vel, charge=charge, **layout)
    boosted = model(pos, vel=vel + u, charge=charge, **layout)
    real = layout["mask"][..., None] if "mask" in layout else torch.ones_like(out, dtype=torch.bool)
    return ((boosted - out - horizon * u) * real).abs().max().item() / out.abs().max().item()


def test_comoving_is_exact_under_boosts_and_keeps_e3_equivariance(dtype):
    pos, vel = torch.randn(3, 5, 3), torch.randn(3, 5, 3)
    charge = torch.randint(0, 2, (3, 5, 1)).to(pos.dtype) * 2 - 1
    fa = FrameAveraged(PointMLP(per_point=True, vel=True, charge=True), "E3", "position", ["vel"], ["charge"])
    assert _boost_error(fa.eval(), pos, vel, charge, 0.7) > 1e-2  # E(3) equivariant, but not under boosts
    model = Comoving(fa, horizon=0.7).eval()
    assert _boost_error(model, pos, vel, charge, 0.7) < tolerance(dtype)
    err = equivariance_error(model, pos, "E3", "position", vectors={"vel": vel}, scalars={"charge": charge})
    assert err < tolerance(dtype)
    seen = []
    probe = Comoving(lambda p, vel, charge: seen.append(vel) or p, horizon=2.0)
    out = probe(pos, vel=vel, charge=charge)
    torch.testing.assert_close(seen[0].mean(1), torch.zeros(3, 3, dtype=pos.dtype), atol=tolerance(dtype), rtol=0)
    torch.testing.assert_close(out, pos + 2.0 * vel.mean(1, keepdim=True))
    velocity = Comoving(lambda p, vel, charge: vel, horizon=2.0, output="velocity")
    torch.testing.assert_close(velocity(pos, vel=vel, charge=charge), vel)  # v - v̄ + v̄


def test_comoving_on_padded_and_flat_batches(dtype):
    sizes = [3, 5]
    pos, vel = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    charge = torch.ones(2, 5, 1)
    mask = torch.arange(5)[None] < torch.tensor(sizes)[:, None]
    pos[0, 3:], vel[0, 3:] = 1e3, -1e3  # padding must not reach the centre of mass or be moved
    model = Comoving(PointMLP(per_point=True, vel=True, charge=True), horizon=1.0).eval()
    out = model(pos, vel=vel, charge=charge, mask=mask)
    alone = model(pos[:1, :3], vel=vel[:1, :3], charge=charge[:1, :3])
    torch.testing.assert_close(out[0, :3], alone[0], atol=10 * tolerance(dtype), rtol=0)
    assert _boost_error(model, pos, vel, charge, 1.0, mask=mask) < tolerance(dtype)
    batch = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    flat = model(pos[mask], vel=vel[mask], charge=charge[mask], batch=batch)
    torch.testing.assert_close(flat, out[mask], atol=10 * tolerance(dtype), rtol=0)
    assert _boost_error(model, pos[mask], vel[mask], charge[mask], 1.0, batch=batch) < tolerance(dtype)


def test_comoving_rejects_bad_settings_and_input():
    backbone = PointMLP(per_point=True, vel=True)
    with pytest.raises(ValueError, match="horizon must be a finite number"):
        Comoving(backbone, horizon=float("nan"))
    with pytest.raises(ValueError, match="output must be 'position' or 'velocity'"):
        Comoving(backbone, horizon=1.0, output="vector")
    model = Comoving(backbone, horizon=1.0)
    with pytest.raises(ValueError, match="missing the velocity feature 'vel'"):
        model(torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="vel must have the shape of pos"):
        model(torch.randn(2, 4, 3), vel=torch.randn(2, 3, 3))
    vel = torch.randn(3, 4, 3)
    vel[1, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"vel contains NaN or Inf in cloud\(s\) \[1\]"):
        model(torch.randn(3, 4, 3), vel=vel)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[1, 2] = False  # the NaN is padding: ignored
    assert torch.isfinite(model(torch.randn(3, 4, 3), vel=vel, mask=mask)[mask]).all()
    mask[2] = False
    with pytest.raises(ValueError, match=r"vel has empty cloud\(s\) \[2\]"):
        model(torch.randn(3, 4, 3), vel=vel, mask=mask)
    with pytest.raises(ValueError, match=r"vel contains NaN or Inf in cloud\(s\) \[2\]"):
        model(torch.randn(6, 3), vel=torch.tensor([[0.0] * 3] * 5 + [[float("inf")] * 3]), batch=torch.tensor([0, 0, 1, 1, 2, 2]))


def test_ensemble_of_equivariant_models_is_exact_on_dense_and_flat_batches(dtype):
    """The mean of canonicalized and frame-averaged models is E(3)-equivariant; mixing in a bare backbone is not."""
    pos, vel = torch.randn(3, 6, 3), torch.randn(3, 6, 3)
    charge = torch.randint(0, 2, (3, 6, 1)).to(pos.dtype) * 2 - 1
    features = dict(vectors={"vel": vel}, scalars={"charge": charge})
    canon = _learned("E3", num_scalar_features=1, num_vector_features=1)
    members = [
        Canonicalized(PointMLP(per_point=True, vel=True, charge=True), canon, "position", ["vel"], ["charge"]),
        Comoving(Canonicalized(PointMLP(per_point=True, vel=True, charge=True), PCACanonicalizer("E3"), "position", ["vel"], ["charge"]), 1.0),
        FrameAveraged(PointMLP(per_point=True, vel=True, charge=True), "E3", "position", ["vel"], ["charge"]),
    ]
    model = Ensemble(members).eval()
    assert equivariance_error(model, pos, "E3", "position", **features) < tolerance(dtype)
    expected = sum(member(pos, vel=vel, charge=charge) for member in members) / 3
    torch.testing.assert_close(model(pos, vel=vel, charge=charge), expected)
    batch = torch.arange(3).repeat_interleave(6)
    flat = dict(vectors={"vel": vel.flatten(0, 1)}, scalars={"charge": charge.flatten(0, 1)})
    assert equivariance_error(model, pos.flatten(0, 1), "E3", "position", batch=batch, **flat) < tolerance(dtype)
    mixed = Ensemble([members[0], PointMLP(per_point=True, vel=True, charge=True)]).eval()
    assert equivariance_error(mixed, pos, "E3", "position", **features) > 1e-2  # the check can fail
    with pytest.raises(ValueError, match="at least one member"):
        Ensemble([])


def test_ensemble_checkpoint_round_trip(tmp_path):
    from geocanon import checkpoint

    member = {"name": "frame_averaged", "config": {"backbone": {"name": "nbody_gnn", "config": {"hidden": 8, "layers": 1}},
                                                    "group": "E3", "output": "position", "vector_features": ["vel"],
                                                    "scalar_features": ["charge"]}}  # fmt: skip
    model = checkpoint.build({"name": "ensemble", "config": {"members": [member, member]}}).eval()
    assert isinstance(model, Ensemble) and len(model.members) == 2
    checkpoint.save(tmp_path / "ens.pt", model)
    loaded, _ = checkpoint.load(tmp_path / "ens.pt")
    pos, vel, charge = torch.randn(2, 5, 3), torch.randn(2, 5, 3), torch.ones(2, 5, 1)
    torch.testing.assert_close(loaded.eval()(pos, vel=vel, charge=charge), model(pos, vel=vel, charge=charge))


@pytest.mark.parametrize("wrapper", ["canonicalized", "frame-averaged"])
def test_nan_in_padding_reaches_neither_outputs_nor_gradients(wrapper, dtype):
    backbone = PointMLP(per_point=False, vel=True)
    if wrapper == "canonicalized":
        model = Canonicalized(backbone, PCACanonicalizer("E3"), vector_features=["vel"])
    else:
        model = FrameAveraged(backbone, group="E3", vector_features=["vel"])
    pos, vel = torch.randn(3, 6, 3), torch.randn(3, 6, 3)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    clean = pos.masked_fill(~mask[..., None], 0.0).requires_grad_(True)
    noisy = pos.clone()
    noisy[1, 4:] = float("nan")
    noisy.requires_grad_(True)
    noisy_vel = vel.clone()
    noisy_vel[1, 4:] = float("nan")
    out_clean = model(clean, vel=vel.masked_fill(~mask[..., None], 0.0), mask=mask)
    out_noisy = model(noisy, vel=noisy_vel, mask=mask)
    torch.testing.assert_close(out_noisy, out_clean, rtol=0, atol=tolerance(dtype))
    (g_clean,) = torch.autograd.grad(out_clean.sum(), clean)
    (g_noisy,) = torch.autograd.grad(out_noisy.sum(), noisy)
    torch.testing.assert_close(g_noisy[mask], g_clean[mask], rtol=0, atol=tolerance(dtype))  # e.g. forces: not NaN


@pytest.mark.parametrize("wrapper", ["canonicalized", "frame_averaged", "weighted_frames"])
def test_bundled_backbones_wrapped_on_flat_pyg_batches_are_exact(wrapper, dtype):
    """The bundled (dense) backbones inside the wrappers on a variable-size flat batch: NBodyGNN's positions
    (velocity and charge features) E(3)-equivariant, EnergyGNN's energies E(3)-invariant, each cloud as alone."""
    from geocanon.nn.energy import EnergyGNN
    from geocanon.nn.gnn import NBodyGNN

    torch.manual_seed(4)
    sizes = [5, 9, 7]
    batch = torch.arange(3).repeat_interleave(torch.tensor(sizes))
    pos, vel = torch.randn(len(batch), 3) * torch.tensor([3.0, 2.0, 1.0]), torch.randn(len(batch), 3)
    charge = torch.randint(0, 2, (len(batch), 1)).to(pos.dtype) * 2 - 1
    species = nn.functional.one_hot(torch.randint(0, 3, (len(batch),)), 3).to(pos.dtype)

    def wrap(backbone: nn.Module, output: str, vectors: list[str], scalars: list[str]) -> nn.Module:
        if wrapper == "canonicalized":
            canon = _learned("E3", num_scalar_features=sum(1 if s == "charge" else 3 for s in scalars), num_vector_features=len(vectors))
            return Canonicalized(backbone, canon, output, vector_features=vectors, scalar_features=scalars)
        tolerance_ = 0.3 if wrapper == "weighted_frames" else None
        return FrameAveraged(backbone, "E3", output, vector_features=vectors, scalar_features=scalars, sign_tolerance=tolerance_)

    nbody = wrap(NBodyGNN(hidden=16, layers=2), "position", ["vel"], ["charge"]).eval()
    energy = wrap(EnergyGNN(3, hidden=8, layers=2), "invariant", [], ["species"]).eval()
    cases = [(nbody, "position", {"vel": vel}, {"charge": charge}), (energy, "invariant", {}, {"species": species})]
    for model, output, vectors, scalars in cases:
        flat = model(pos, **vectors, **scalars, batch=batch)
        for i in range(3):
            alone = model(pos[batch == i][None], **{k: v[batch == i][None] for k, v in {**vectors, **scalars}.items()})[0]
            torch.testing.assert_close(flat[batch == i] if output == "position" else flat[i], alone, atol=10 * tolerance(dtype), rtol=0)
        err = equivariance_error(model, pos, "E3", output, vectors=vectors, scalars=scalars, batch=batch)
        assert err < tolerance(dtype), (output, err)
        bare = equivariance_error(model.backbone, pos, "E3", output, vectors=vectors, scalars=scalars, batch=batch)
        assert bare > 1e-3, (output, bare)  # the check can fail
