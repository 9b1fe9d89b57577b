"""Equivariance checks for users' own models and pipelines (and geocanon's tests).

``equivariance_error`` applies random group elements g = (Q, s) to the input and compares
``f(g·x)`` with ``g·f(x)`` according to the output's type:

* "invariant": ``f(g·x)`` vs ``f(x)``;
* "vector":    ``f(g·x)`` vs ``f(x) @ Q.T``;
* "position":  ``f(g·x)`` vs ``f(x) @ Q.T + s``.

The error is ``max over trials of ‖f(g·x) − g·f(x)‖ / ‖g·f(x)‖`` (Frobenius norms over the batch).
Tolerances that hold for exactly equivariant models: ~1e-10 in float64, ~1e-5 in float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from .frames import Frame, Group, geodesic_angle, random_group_element
from .wrap import OutputType, map_back

__all__ = ["equivariance_error", "assert_equivariant", "default_tolerance", "frame_sensitivity", "transform_inputs"]


def default_tolerance(dtype: torch.dtype) -> float:
    """The relative error an exactly equivariant model stays below: 1e-10 in float64, 2e-5 in float32.

    Round-off through a frame (an eigen-decomposition or Gram–Schmidt, the backbone, the map back) stays
    a few hundred machine epsilons for reasonably conditioned clouds; a broken equivariance shows up
    orders of magnitude above (e.g. ~1e-8 for an e3nn module built in float32 and run in float64).
    """
    return 1e-10 if dtype == torch.float64 else 2e-5


def transform_inputs(
    g: Frame, pos: Tensor, vectors: Mapping[str, Tensor], batch: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Apply g = (Q, s) per cloud: points ``P @ Q.T + s``, vectors [.., 3] (or [.., V, 3]) ``V @ Q.T``."""
    moved = g.apply_points(pos, batch)
    out = {}
    for name, v in vectors.items():
        flat = v.reshape(*pos.shape[:-1], -1, 3)  # [.., V, 3]
        q = g.rotation[:, None] if batch is None else g.rotation[batch]  # [B, 1, 3, 3] or [M, 3, 3]
        out[name] = (flat @ q.transpose(-1, -2)).reshape(v.shape)
    return moved, out


def equivariance_error(
    model: Callable[..., Tensor],
    pos: Tensor,
    group: Group = "E3",
    output: OutputType = "invariant",
    vectors: Mapping[str, Tensor] | None = None,
    scalars: Mapping[str, Tensor] | None = None,
    batch: Tensor | None = None,
    mask: Tensor | None = None,
    trials: int = 4,
    seed: int = 0,
    translation_scale: float = 1.0,
) -> float:
    """Largest relative equivariance error of ``model`` over ``trials`` random elements of ``group``.

    Args:
        model: called as ``model(pos, **vectors, **scalars[, batch=][, mask=])``.
        pos: dense [B, N, 3] (optional ``mask`` [B, N]; per-point outputs [B, N, ...] are compared on the real
            points only) or flat [M, 3] with ``batch`` [M].
        group: "SO3", "O3" (with reflections), "SE3", "E3" (with translations).
        output: how the output transforms: "invariant", "vector" or "position".
        vectors / scalars: per-point keyword inputs (vectors are rotated, scalars are not).
        trials: number of random group elements (one per cloud each trial).
        seed: seeds the group elements, for reproducible checks in CI.

    Returns:
        max_trials ‖f(g·x) − g·f(x)‖ / ‖g·f(x)‖ (absolute error if the output is zero); ``inf`` when an output
        is NaN or infinite (so a model that returns NaN never passes).
    """
    vectors = dict(vectors or {})
    scalars = dict(scalars or {})
    extra: dict[str, Tensor] = {}
    if batch is not None:
        extra["batch"] = batch
    if mask is not None:
        extra["mask"] = mask
    n_clouds = (int(batch.max()) + 1) if batch is not None else pos.shape[0]
    generator = torch.Generator(device=pos.device).manual_seed(seed)
    with torch.no_grad():
        reference = model(pos, **vectors, **scalars, **extra)
        worst = 0.0
        for _ in range(trials):
            g = random_group_element(group, n_clouds, pos.dtype, pos.device, generator, translation_scale)
            moved_pos, moved_vectors = transform_inputs(g, pos, vectors, batch)
            actual = _real_points(model(moved_pos, **moved_vectors, **scalars, **extra), mask)
            expected = _real_points(map_back(reference, g, output, batch), mask)
            scale = expected.norm().item()
            err = (actual - expected).norm().item()
            relative = err / scale if scale > 0 else err
            if not math.isfinite(relative) or not math.isfinite(scale):  # NaN would slip through max(): fail instead
                return math.inf
            worst = max(worst, relative)
    return worst


def _real_points(out: Tensor, mask: Tensor | None) -> Tensor:
    """Per-point dense outputs [B, N, ...] with padding zeroed (padding's outputs are not part of the contract);
    per-cloud outputs as they are."""
    if mask is None or out.ndim < 3 or out.shape[:2] != mask.shape:
        return out
    return torch.where(mask.reshape(*mask.shape, *[1] * (out.ndim - 2)), out, torch.zeros_like(out))  # NaN there too


def assert_equivariant(model: Callable[..., Tensor], pos: Tensor, tol: float | None = None, **kwargs) -> float:
    """Raise ``AssertionError`` if :func:`equivariance_error` exceeds ``tol``.

    Default tolerance: :func:`default_tolerance` of the input's dtype. Returns the measured error.
    """
    if tol is None:
        tol = default_tolerance(pos.dtype)
    err = equivariance_error(model, pos, **kwargs)
    if not err <= tol:
        raise AssertionError(f"equivariance error {err:.3g} exceeds tolerance {tol:g}")
    return err


def frame_sensitivity(
    canonicalizer: Callable[..., Frame],
    pos: Tensor,
    noise: float = 0.01,
    mask: Tensor | None = None,
    seed: int = 0,
    **features: Tensor,
) -> Tensor:
    """How far each cloud's frame turns when its points move a little: [B] angles in degrees.

    Equivariance says nothing about continuity: a frame can be exactly equivariant and still jump
    for a tiny perturbation (PCA where variances tie, a learned frame whose subsampling or k-NN graph
    switches). A backbone then sees unrelated canonical clouds for near-identical inputs. This adds
    N(0, noise²) to every real point (same units as ``pos``; features unchanged) and returns the
    geodesic angle between the frames before and after, without gradients.

    Args:
        canonicalizer: called as ``canonicalizer(pos, mask=mask, **features)`` and returning a Frame.
        pos: [B, N, 3]; mask: optional [B, N]; features: e.g. ``scalars=`` [B, N, S], ``vectors=`` [B, N, V, 3].
    """
    generator = torch.Generator(device=pos.device).manual_seed(seed)
    jitter = noise * torch.randn(pos.shape, generator=generator, dtype=pos.dtype, device=pos.device)
    if mask is not None:
        jitter = jitter * mask[..., None].to(pos.dtype)
    with torch.no_grad():
        before = canonicalizer(pos, mask=mask, **features).rotation
        after = canonicalizer(pos + jitter, mask=mask, **features).rotation
    return torch.rad2deg(geodesic_angle(before, after))
