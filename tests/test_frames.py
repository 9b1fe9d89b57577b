"""Frame algebra, Gram–Schmidt and group sampling."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geocanon.frames import (
    DegenerateFrameError,
    Frame,
    geodesic_angle,
    gram_schmidt,
    orthogonal_iteration,
    random_group_element,
    random_rotation,
)

from .conftest import tolerance


def _random_frame(b: int, dtype: torch.dtype) -> Frame:
    return random_group_element("E3", b, dtype=dtype)


def test_points_round_trip_dense_and_flat(dtype):
    frame = _random_frame(3, dtype)
    pos = torch.randn(3, 7, 3, dtype=dtype)
    can = frame.to_canonical_points(pos)
    assert torch.allclose(frame.from_canonical_points(can), pos, atol=10 * tolerance(dtype))
    expected = (pos - frame.translation[:, None]) @ frame.rotation
    assert torch.allclose(can, expected)
    batch = torch.arange(3).repeat_interleave(7)
    flat = frame.to_canonical_points(pos.reshape(-1, 3), batch)
    assert torch.allclose(flat, can.reshape(-1, 3), atol=10 * tolerance(dtype))
    vec = torch.randn(21, 3, dtype=dtype)
    assert torch.allclose(frame.from_canonical_vectors(frame.to_canonical_vectors(vec, batch), batch), vec, atol=1e-5)


def test_columns_are_canonical_axes():
    frame = random_group_element("E3", 1, dtype=torch.float64)
    axis0 = frame.rotation[0, :, 0]
    point = frame.translation[0] + 2.5 * axis0
    can = frame.to_canonical_points(point[None, None])[0, 0]
    assert torch.allclose(can, torch.tensor([2.5, 0.0, 0.0], dtype=torch.float64), atol=1e-12)


def test_inverse_and_compose():
    f = _random_frame(4, torch.float64)
    g = _random_frame(4, torch.float64)
    ident = f.compose(f.inverse())
    assert torch.allclose(ident.rotation, torch.eye(3, dtype=torch.float64).expand(4, 3, 3), atol=1e-12)
    assert torch.allclose(ident.translation, torch.zeros(4, 3, dtype=torch.float64), atol=1e-12)
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    assert torch.allclose(f.compose(g).apply_points(x), f.apply_points(g.apply_points(x)), atol=1e-12)


def test_to_dtype():
    f = _random_frame(2, torch.float64).to(torch.float32)
    assert f.rotation.dtype == f.translation.dtype == torch.float32


def test_frame_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"rotation must have shape \[B, 3, 3\]"):
        Frame(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="translation"):
        Frame(torch.zeros(2, 3, 3), torch.zeros(3, 3))


@pytest.mark.parametrize("reflections", [False, True])
def test_random_rotation_is_orthogonal_with_expected_determinants(reflections):
    q = random_rotation(2000, reflections=reflections, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(q @ q.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand_as(q), atol=1e-12)
    det = torch.linalg.det(q)
    if reflections:
        frac = (det < 0).double().mean().item()
        assert 0.45 < frac < 0.55
    else:
        assert torch.allclose(det, torch.ones_like(det))


def test_random_rotation_is_haar():
    """Haar on SO(3): the rotation angle has density (1 - cos θ)/π, so E[cos θ] = -1/2... mean trace = 0."""
    q = random_rotation(20000, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    trace = torch.diagonal(q, dim1=1, dim2=2).sum(-1)
    assert abs(trace.mean().item()) < 0.03  # E[tr] = 0 under Haar
    assert abs((trace**2).mean().item() - 1.0) < 0.05  # E[tr²] = 1 under Haar
    # each column is uniform on the sphere: mean ≈ 0
    assert q[:, :, 0].mean(0).abs().max() < 0.03


def test_geodesic_angle():
    theta = 0.7
    rz = torch.tensor(
        [[math.cos(theta), -math.sin(theta), 0], [math.sin(theta), math.cos(theta), 0], [0, 0, 1]], dtype=torch.float64
    )
    assert abs(geodesic_angle(rz).item() - theta) < 1e-12
    r = random_rotation(5, dtype=torch.float64)
    assert torch.allclose(geodesic_angle(r, r @ rz), torch.full((5,), theta, dtype=torch.float64), atol=1e-7)


@pytest.mark.parametrize("group", ["SO3", "O3"])
def test_gram_schmidt_orthonormal_and_equivariant(group, dtype):
    k = 3 if group == "O3" else 2
    v = torch.randn(16, k, 3, dtype=dtype)
    r = gram_schmidt(v, group)
    eye = torch.eye(3, dtype=dtype).expand(16, 3, 3)
    assert torch.allclose(r.transpose(1, 2) @ r, eye, atol=10 * tolerance(dtype))
    q = random_rotation(16, reflections=(group == "O3"), dtype=dtype)
    r2 = gram_schmidt(v @ q.transpose(1, 2), group)
    assert (r2 - q @ r).abs().max() < 10 * tolerance(dtype)
    det = torch.linalg.det(r)
    if group == "SO3":
        assert torch.allclose(det, torch.ones_like(det), atol=1e-4)
    # the first axis is the first vector's direction (orthonormalisation over the right axis)
    assert torch.allclose(r[:, :, 0], v[:, 0] / v[:, 0].norm(dim=-1, keepdim=True), atol=10 * tolerance(dtype))


def test_gram_schmidt_so3_is_not_reflection_equivariant():
    """With a cross product the third axis is a pseudovector: reflections are *not* followed (by design)."""
    v = torch.randn(8, 2, 3, dtype=torch.float64)
    q = -random_rotation(8, dtype=torch.float64)  # improper
    r, r2 = gram_schmidt(v, "SO3"), gram_schmidt(v @ q.transpose(1, 2), "SO3")
    assert (r2 - q @ r).abs().max() > 0.5
    assert torch.allclose(r2, q @ r @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)), atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=9, max_size=9), st.floats(1e-3, 1e3))
def test_gram_schmidt_gradients_finite_or_clear_error(values, scale):
    v = (torch.tensor(values, dtype=torch.float64).view(1, 3, 3) * scale).requires_grad_(True)
    try:
        r = gram_schmidt(v, "O3")
    except DegenerateFrameError as err:
        assert "zero or parallel" in str(err)
        return
    assert torch.allclose(r[0].T @ r[0], torch.eye(3, dtype=torch.float64), atol=1e-8)
    r.sum().backward()
    assert torch.isfinite(v.grad).all()


@pytest.mark.parametrize(
    "vectors, which",
    [
        ([[0.0, 0, 0], [1, 0, 0]], "vector 1"),
        ([[1.0, 0, 0], [2, 0, 0]], "vector 2"),
        ([[1.0, 0, 0], [1, 1e-14, 0]], "vector 2"),
    ],
)
def test_gram_schmidt_degenerate_raises(vectors, which):
    v = torch.tensor([vectors], dtype=torch.float64)
    with pytest.raises(DegenerateFrameError, match=which):
        gram_schmidt(v, "SO3")


def test_gram_schmidt_o3_handedness_from_third_vector():
    """v3 only picks the side: nearly coplanar v3 still gives an exactly orthonormal frame."""
    base = torch.tensor([[[1.0, 0, 0], [0.3, 1, 0], [0.2, 0.5, 0]]], dtype=torch.float64)
    for z, det in ((1e-9, 1.0), (-1e-9, -1.0), (5.0, 1.0), (-5.0, -1.0)):
        v = base.clone()
        v[0, 2, 2] = z
        r = gram_schmidt(v, "O3")
        assert torch.allclose(r[0].T @ r[0], torch.eye(3, dtype=torch.float64), atol=1e-14)
        assert torch.linalg.det(r[0]).item() == pytest.approx(det)
    v = base.clone()  # exactly coplanar: documented choice s = +1, finite
    assert torch.linalg.det(gram_schmidt(v, "O3")[0]).item() == pytest.approx(1.0)


def test_gram_schmidt_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[B, 2, 3\]"):
        gram_schmidt(torch.randn(4, 3, 3), "SO3")
    with pytest.raises(ValueError, match="NaN"):
        gram_schmidt(torch.tensor([[[float("nan"), 0, 0], [0, 1, 0]]]), "SO3")
    with pytest.raises(ValueError, match="group"):
        gram_schmidt(torch.randn(4, 2, 3), "SO2")


def _spd(eigenvalues: list[float], q: torch.Tensor) -> torch.Tensor:
    """[B, 3, 3] symmetric matrices with the given eigenvalues and eigenvectors the columns of q."""
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=q.dtype)) @ q.transpose(1, 2)


def test_orthogonal_iteration_converges_to_eigenvectors_with_the_start_signs():
    q = random_rotation(8, dtype=torch.float64)
    m = _spd([3.0, 1.0, 0.2], q)
    start = torch.randn(8, 3, 3, dtype=torch.float64)
    out = orthogonal_iteration(m, start, 60)
    eig = q.transpose(1, 2)  # rows = eigenvectors by decreasing eigenvalue
    signs = torch.sign((start[:, 0] * eig[:, 0]).sum(-1))
    assert torch.allclose(out[:, 0], signs[:, None] * eig[:, 0], atol=1e-10)
    assert torch.allclose((out * eig).sum(-1).abs(), torch.ones(8, 3, dtype=torch.float64), atol=1e-10)
    assert torch.equal(orthogonal_iteration(m, start, 0), start)


@pytest.mark.parametrize("steps", [1, 5])
def test_orthogonal_iteration_is_equivariant(steps, dtype):
    m = _spd([2.0, 1.5, 0.5], random_rotation(16, dtype=dtype))
    v = torch.randn(16, 2, 3, dtype=dtype)
    q = random_rotation(16, reflections=True, dtype=dtype)
    out = orthogonal_iteration(m, v, steps)
    moved = orthogonal_iteration(q @ m @ q.transpose(1, 2), v @ q.transpose(1, 2), steps)
    assert (moved - out @ q.transpose(1, 2)).abs().max() < 10 * tolerance(dtype)


def test_orthogonal_iteration_is_continuous_where_eigenvectors_jump():
    """Two nearly equal eigenvalues: eigh's leading axis swaps, the iterated vector barely moves."""
    eye = torch.eye(3, dtype=torch.float64)[None]
    start = torch.tensor([[[1.0, 0.7, 0.2]]], dtype=torch.float64)
    before, after = _spd([1.0 + 1e-6, 1.0, 0.1], eye), _spd([1.0, 1.0 + 1e-6, 0.1], eye)
    lead = [torch.linalg.eigh(m)[1][0, :, -1].abs() for m in (before, after)]
    assert (lead[0] - lead[1]).norm() > 1.0  # PCA's axis jumps by 90 degrees
    smooth = [orthogonal_iteration(m, start, 8)[0, 0] for m in (before, after)]
    assert (smooth[0] - smooth[1]).norm() < 1e-4


def test_orthogonal_iteration_keeps_zero_vectors_zero_and_gram_schmidt_reports_them():
    m = _spd([2.0, 1.0, 0.5], random_rotation(2, dtype=torch.float64))
    v = torch.randn(2, 2, 3, dtype=torch.float64)
    v[1, 0] = 0.0
    out = orthogonal_iteration(m, v, 3)
    assert torch.isfinite(out).all() and (out[1, 0] == 0).all()
    with pytest.raises(DegenerateFrameError, match=r"cloud\(s\) \[1\]"):
        gram_schmidt(out, "SO3")


def test_orthogonal_iteration_rejects_bad_input():
    m = torch.eye(3)[None]
    with pytest.raises(ValueError, match="matrices"):
        orthogonal_iteration(torch.eye(3), torch.randn(1, 2, 3), 1)
    with pytest.raises(ValueError, match="vectors"):
        orthogonal_iteration(m, torch.randn(1, 4, 3), 1)
    with pytest.raises(ValueError, match="steps"):
        orthogonal_iteration(m, torch.randn(1, 2, 3), -1)
