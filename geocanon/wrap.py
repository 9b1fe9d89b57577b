"""Wrapping any backbone: ``Canonicalized`` (one learned/PCA frame) and ``FrameAveraged`` (all PCA frames);
``Comoving`` (Galilean boosts) and ``Ensemble`` (the mean of several models) wrap whole models.

The backbone sees canonical coordinates and is called as ``backbone(pos, **vectors, **scalars)``,
plus ``batch=`` / ``mask=`` when the caller passed them. Its output is mapped back by type:

* ``"invariant"`` — logits, energies: returned as they are;
* ``"vector"`` — velocities, forces, per point [B, N, 3] / [M, 3] or per cloud [B, 3]: ``V_c @ R.T``;
* ``"position"`` — positions, same shapes: ``P_c @ R.T + t``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from .canonicalizers.base import Canonicalizer
from .canonicalizers.frame_averaging import pca_frames, weighted_pca_frames
from .frames import Frame, Group, has_reflections, random_rotation
from .layout import num_clouds, to_dense
from .validation import check_dense_batch, check_one_layout

#: ``FrameAveraged(train_frames=...)``: every frame in each training step, one sampled frame per cloud, or one
#: sampled frame turned by a random element of the group (augmentation)
TRAIN_FRAMES = ("all", "sampled", "random")

__all__ = [
    "TRAIN_FRAMES", "Canonicalized", "Comoving", "Ensemble", "FrameAveraged", "OutputType", "check_orientations", "check_train_frames",
    "fixed_turns", "map_back",
]  # fmt: skip


def check_train_frames(value: str, name: str = "train_frames") -> None:
    """Raise ValueError unless ``value`` (the setting called ``name``) is one of :data:`TRAIN_FRAMES`."""
    if value not in TRAIN_FRAMES:
        raise ValueError(f"{name} must be one of {TRAIN_FRAMES}, got {value!r}")

OutputType = Literal["invariant", "vector", "position"]
OUTPUT_TYPES = ("invariant", "vector", "position")


def _check_output(output: str) -> None:
    if output not in OUTPUT_TYPES:
        raise ValueError(f"output must be one of {OUTPUT_TYPES}, got {output!r}")


def map_back(out: Tensor, frame: Frame, output: OutputType, batch: Tensor | None = None) -> Tensor:
    """Express a backbone output given in canonical coordinates in input coordinates.

    Args:
        out: invariant [B, ...]; or vectors/positions per point [B, N, 3] (flat: [M, 3] with ``batch``)
            or per cloud [B, 3].
        frame: the frame used to canonicalize (B clouds).
        output: "invariant", "vector" or "position".
        batch: [M] for flat per-point outputs.
    """
    _check_output(output)
    if output == "invariant":
        return out
    if out.shape[-1] != 3:
        raise ValueError(f"a {output!r} output must end in 3 components, got shape {list(out.shape)}")
    per_cloud = out.ndim == 2 and batch is None
    if per_cloud:
        out = out[:, None]
    elif batch is not None and out.ndim != 2:
        raise ValueError(f"with a batch vector a {output!r} output must be [M, 3], got {list(out.shape)}")
    mapped = frame.from_canonical_points(out, batch) if output == "position" else frame.from_canonical_vectors(out, batch)
    return mapped[:, 0] if per_cloud else mapped


class _FeatureRouting(nn.Module):
    """Shared plumbing: names of vector / scalar features and how the backbone is called."""

    def __init__(self, backbone: nn.Module, output: OutputType, vector_features: Sequence[str], scalar_features: Sequence[str]) -> None:
        super().__init__()
        _check_output(output)
        overlap = set(vector_features) & set(scalar_features)
        if overlap:
            raise ValueError(f"features {sorted(overlap)} are declared both as vectors and as scalars")
        self.backbone = backbone
        self.output = output
        self.vector_features = tuple(vector_features)
        self.scalar_features = tuple(scalar_features)

    def _split(self, features: dict[str, Tensor], pos: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        unknown = set(features) - set(self.vector_features) - set(self.scalar_features)
        if unknown:
            raise ValueError(
                f"unexpected features {sorted(unknown)}: declare them with vector_features= or scalar_features="
            )
        missing = (set(self.vector_features) | set(self.scalar_features)) - set(features)
        if missing:
            raise ValueError(f"missing features {sorted(missing)}")
        vectors = {k: features[k] for k in self.vector_features}
        scalars = {k: features[k] for k in self.scalar_features}
        for name, v in vectors.items():
            if v.shape[-1] != 3:
                raise ValueError(f"vector feature {name!r} must end in 3 components, got {list(v.shape)}")
        points = pos.shape[:-1]  # [B, N] or [M]: every feature is per point
        for name, x in features.items():
            if x.shape[: len(points)] != points:
                raise ValueError(f"feature {name!r} must be per point, shape {list(points)} + [...] like pos {list(pos.shape)}, got {list(x.shape)}")
        return vectors, scalars

    @staticmethod
    def _without_padding(pos: Tensor, vectors: dict[str, Tensor], mask: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        """``pos`` and the vector features with their padding rows set to 0 (dense input with a mask): padding may hold
        anything, and a NaN there, times the zero gradient the backbone gives it, would be NaN in every gradient
        that flows through the frame (e.g. forces)."""
        if mask is None:
            return pos, vectors
        def pad(x: Tensor) -> Tensor:
            return ~mask.reshape(*mask.shape, *[1] * (x.ndim - 2))
        return pos.masked_fill(pad(pos), 0.0), {k: v.masked_fill(pad(v), 0.0) for k, v in vectors.items()}

    def _call_backbone(self, pos: Tensor, vectors: dict[str, Tensor], scalars: dict[str, Tensor], batch: Tensor | None, mask: Tensor | None) -> Tensor:
        extra: dict[str, Tensor] = {}
        if batch is not None:
            extra["batch"] = batch
        if mask is not None:
            extra["mask"] = mask
        return self.backbone(pos, **vectors, **scalars, **extra)


class Canonicalized(_FeatureRouting):
    """Make any backbone invariant/equivariant by running it in a predicted canonical frame.

    Args:
        backbone: any ``nn.Module`` called as ``backbone(pos, **vectors, **scalars[, batch=][, mask=])``.
        canonicalizer: a :class:`~geocanon.canonicalizers.Canonicalizer` (learned, PCA, identity).
        output: "invariant", "vector" or "position" (see module docstring).
        vector_features: names of per-point vector keyword inputs ([B, N, 3] or [M, 3]); they are
            canonicalized for the backbone and, stacked in this order, fed to the canonicalizer.
        scalar_features: names of per-point invariant keyword inputs ([B, N, F] or [M, F]); passed
            through, and concatenated in this order for the canonicalizer.

    Shapes: ``pos`` [B, N, 3] (optional ``mask`` [B, N]) or flat [M, 3] with ``batch`` [M].

    Attributes:
        last_frame: the Frame of the most recent call (for priors and diagnostics).
    """

    def __init__(
        self,
        backbone: nn.Module,
        canonicalizer: Canonicalizer,
        output: OutputType = "invariant",
        vector_features: Sequence[str] = (),
        scalar_features: Sequence[str] = (),
    ) -> None:
        super().__init__(backbone, output, vector_features, scalar_features)
        self.canonicalizer = canonicalizer
        self.last_frame: Frame | None = None

    def forward(self, pos: Tensor, *, batch: Tensor | None = None, mask: Tensor | None = None, **features: Tensor) -> Tensor:
        """Backbone output in input coordinates (see class docstring for shapes)."""
        vectors, scalars = self._split(features, pos)
        can = self.canonicalizer
        frame = can(
            pos,
            batch=batch,
            mask=mask,
            scalars=torch.cat(list(scalars.values()), -1) if can.num_scalar_features and scalars else None,
            vectors=torch.stack(list(vectors.values()), -2) if can.num_vector_features and vectors else None,
        )
        self.last_frame = frame
        pos, vectors = self._without_padding(pos, vectors, mask)
        pos_c = frame.to_canonical_points(pos, batch)
        vectors_c = {k: frame.to_canonical_vectors(v, batch) for k, v in vectors.items()}
        out = self._call_backbone(pos_c, vectors_c, scalars, batch, mask)
        return map_back(out, frame, self.output, batch)


def check_orientations(value: int, name: str = "orientations") -> None:
    """Raise ValueError unless ``value`` (the setting called ``name``) is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def fixed_turns(orientations: int) -> Tensor:
    """The rotations of ``FrameAveraged(orientations=M)``: [M, 3, 3] float64, the identity first, then M - 1
    Haar-random proper rotations drawn from seed 0 (the same on every call)."""
    check_orientations(orientations)
    turns = random_rotation(orientations - 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return torch.cat([torch.eye(3, dtype=torch.float64)[None], turns])


class FrameAveraged(_FeatureRouting):
    """Frame averaging over the PCA sign frames (Puny et al. 2022): the backbone runs K times per cloud.

    K = 4 for SO3/SE3 and 8 for O3/E3 (see :func:`~geocanon.canonicalizers.frame_averaging.pca_frames`).
    Coplanar clouds (planar molecules) are accepted for every group, collinear ones are not. Dense ([B, N, 3] with
    optional mask [B, N]) or flat PyG input ([M, 3] with ``batch`` [M]); same call convention and ``output`` types as
    :class:`Canonicalized`. Invariant outputs are averaged as they are (logits).

    The backbone may be one already trained without frames, e.g. with random-rotation augmentation: wrapped as it
    is, it becomes exact without retraining, and the averaging removes its orientation-dependent error (molecules
    benchmark, ``augment-fa``: 0.2–0.35 meV/Å lower force error than the same network alone on every seed).

    ``train_frames="sampled"`` makes training cost one backbone call per cloud instead of K: in
    training mode each cloud goes through one of its K frames drawn uniformly at random (an unbiased
    estimate of the averaged objective's gradient for a loss that is linear in the output, and
    invariant in distribution for any loss: stochastic frame averaging, Duval et al. 2023). In eval
    mode all K frames are averaged, so the exact invariance/equivariance is unchanged.

    ``sign_tolerance=τ`` weighs the frames smoothly instead of uniformly (Dym et al. 2024; see
    :func:`~geocanon.canonicalizers.frame_averaging.weighted_pca_frames`): an axis whose skewness exceeds τ
    in magnitude keeps only its canonical sign, and frames of weight 0 are not computed, so a clearly
    skewed cloud costs one backbone call instead of K, while the output stays continuous (C¹) across
    sign flips and exactly invariant/equivariant. With ``"sampled"`` training, the frame is drawn from
    the weights.

    ``train_frames="random"`` trains like ``"sampled"`` but turns the drawn frame's axes by a Haar-random
    rotation (with reflections where the group has them), so the backbone sees each training cloud, about
    the frame's origin (the centroid for SE3/E3), in a uniformly random orientation: random-rotation
    augmentation, with all K frames averaged at evaluation as ever. On the N-body benchmark this
    generalises better than training through the frames themselves (docs/architecture.md).

    ``orientations=M`` averages over M orientations of each frame wherever all frames are averaged
    (evaluation, and training with ``"all"``): the frames ``F_k Q_m`` with ``Q_0 = I`` and ``Q_1 … Q_{M-1}``
    fixed Haar-random rotations (drawn once from seed 0, so a rebuilt model has the same ones). The set
    stays equivariant (``F_k(g·x) Q_m = g F_k(x) Q_m``), so the output stays exact, for M times the cost.
    Meant for a backbone trained on all orientations (``"random"`` or augmentation): more orientations
    average more of its orientation-dependent error away, like test-time augmentation made exact (on the
    N-body benchmark M = 8 lowers the test MSE by about 1%: docs/architecture.md).

    ``point_weights="species", point_weight_values=[1.008, 12.011, 15.999]`` weighs the points of the PCA (and
    of the skewness of ``sign_tolerance``) by ``features["species"] @ values`` ([B, N, C] @ [C]; a [B, N]
    feature is used as it is): with one-hot species and atomic masses the frames are the principal axes of the
    mass distribution about the centre of mass, so light atoms (hydrogens) turn them less; with values 0 for hydrogen
    and 1 for the other elements they are the frames of the heavy-atom skeleton. The weights must be non-negative on
    real points, and those of positive weight must span at least a plane; the feature is still passed to the backbone.
    """

    def __init__(
        self,
        backbone: nn.Module,
        group: Group = "SO3",
        output: OutputType = "invariant",
        vector_features: Sequence[str] = (),
        scalar_features: Sequence[str] = (),
        train_frames: str = "all",
        sign_tolerance: float | None = None,
        orientations: int = 1,
        point_weights: str | None = None,
        point_weight_values: Sequence[float] | None = None,
    ) -> None:
        super().__init__(backbone, output, vector_features, scalar_features)
        check_train_frames(train_frames)
        if point_weights is not None and point_weights not in self.scalar_features:
            raise ValueError(f"point_weights must name one of the scalar features {list(self.scalar_features)}, got {point_weights!r}")
        if point_weight_values is not None and point_weights is None:
            raise ValueError("point_weight_values needs point_weights, the scalar feature they weigh")
        self.point_weights = point_weights
        self.point_weight_values = None if point_weight_values is None else [float(v) for v in point_weight_values]
        if sign_tolerance is not None and not sign_tolerance > 0:
            raise ValueError(f"sign_tolerance must be a positive number or None, got {sign_tolerance!r}")
        self.group = group
        self.train_frames = train_frames
        self.sign_tolerance = sign_tolerance
        # not persistent: rebuilt identically from `orientations`, so checkpoints without it still load
        self.register_buffer("turns", fixed_turns(orientations), persistent=False)

    def point_weights_of(self, scalars: dict[str, Tensor], pos: Tensor) -> Tensor | None:
        """The PCA's point weights from the scalar features: the ``point_weights`` one ([B, N] dense or [M] flat as it
        is, or [B, N, C] / [M, C] mapped by ``point_weight_values``, C of them); None when the points are not weighted.
        ``pos`` ([B, N, 3] or [M, 3]) gives the layout."""
        if self.point_weights is None:
            return None
        feature = scalars[self.point_weights]
        if self.point_weight_values is None:
            return feature
        values = torch.tensor(self.point_weight_values, dtype=feature.dtype, device=feature.device)
        leading = "[B, N" if pos.ndim == 3 else "[M"
        if feature.ndim != pos.ndim or feature.shape[-1] != len(values):
            raise ValueError(f"point_weights feature {self.point_weights!r} must be {leading}, {len(values)}] to take "
                             f"{len(values)} point_weight_values, got {list(feature.shape)}")
        return feature @ values

    def set_orientations(self, orientations: int) -> None:
        """Average over ``orientations`` fixed orientations of every frame from now on (the same turns as
        ``FrameAveraged(..., orientations=M)``; e.g. to evaluate a trained model with more of them)."""
        self.turns = fixed_turns(orientations).to(self.turns.device)

    @staticmethod
    def _flat_copies(batch: Tensor, cloud: Tensor, num: int) -> tuple[Tensor, Tensor]:
        """For flat input: the points of every frame's cloud, one copy per frame (frames in order).

        Args: ``batch`` [M] (sorted cloud index of each point), ``cloud`` [F] (the cloud of each frame), ``num`` = B.
        Returns: ``rows`` [M_F], the input point of each copied point, and ``frame_of`` [M_F], its frame: the batch
        vector of the backbone's call.
        """
        index, real = to_dense(torch.arange(len(batch), device=batch.device)[:, None], batch, num)  # [B, N, 1], [B, N]
        real = real[cloud]  # [F, N]
        frame_of = torch.arange(len(cloud), device=batch.device)[:, None].expand_as(real)
        return index[cloud][..., 0][real], frame_of[real]

    def forward(self, pos: Tensor, *, batch: Tensor | None = None, mask: Tensor | None = None, **features: Tensor) -> Tensor:
        """(Weighted) average of the mapped-back backbone outputs over the frames: same shapes as the backbone's.

        Dense input ``pos`` [B, N, 3] (optional ``mask`` [B, N]) calls the backbone with a dense batch of B·K clouds
        (``mask=`` when given); flat PyG input ``pos`` [M, 3] with ``batch`` [M] calls it with a flat batch of the
        points of every frame (``batch=``), and a ``"vector"`` / ``"position"`` output is then per point [M, 3].
        """
        check_one_layout(batch, mask)
        vectors, scalars = self._split(features, pos)
        point_weights = self.point_weights_of(scalars, pos)
        weights: Tensor | None = None
        if self.sign_tolerance is None:
            frames = pca_frames(pos, mask=mask, batch=batch, group=self.group, point_weights=point_weights)
        else:
            frames, weights = weighted_pca_frames(pos, mask=mask, batch=batch, group=self.group, sign_tolerance=self.sign_tolerance,
                                                  point_weights=point_weights)
        b = pos.shape[0] if batch is None else num_clouds(batch)
        k = len(frames) // b
        offsets = k * torch.arange(b, device=pos.device)
        if self.training and self.train_frames != "all":
            drawn = torch.randint(k, (b,), device=pos.device) if weights is None else torch.multinomial(weights.detach(), 1)[:, 0]
            frames, k, weights = frames[drawn + offsets], 1, None
            if self.train_frames == "random":  # R Q: Haar-random axes, the same origin
                turn = random_rotation(b, has_reflections(self.group), frames.rotation.dtype, pos.device)
                frames = Frame(frames.rotation @ turn, frames.translation)
        elif len(self.turns) > 1:  # every frame in every orientation: [B * k * M], cloud-major
            m = len(self.turns)
            rotation = (frames.rotation[:, None] @ self.turns.to(frames.rotation.dtype)).flatten(0, 1)
            frames, k = Frame(rotation, frames.translation.repeat_interleave(m, 0)), k * m
            weights = None if weights is None else weights.repeat_interleave(m, 1) / m
        if weights is None:  # every frame, equal weights
            cloud = torch.arange(b, device=pos.device).repeat_interleave(k)
            frame_weights = None
        else:  # only the frames of non-zero weight
            kept = (weights > 0).flatten().nonzero()[:, 0]
            frames, cloud, frame_weights = frames[kept], kept // k, weights.flatten()[kept]

        pos, vectors = self._without_padding(pos, vectors, mask)
        # each frame's copy of its cloud: dense rows of clouds, or flat rows of points with their frame as batch
        rows, frame_of = (cloud, None) if batch is None else self._flat_copies(batch, cloud, b)
        pos_c = frames.to_canonical_points(pos[rows], frame_of)
        vectors_c = {name: frames.to_canonical_vectors(v[rows], frame_of) for name, v in vectors.items()}
        scalars_k = {name: s[rows] for name, s in scalars.items()}
        out = self._call_backbone(pos_c, vectors_c, scalars_k, frame_of, None if mask is None else mask[cloud])
        out = map_back(out, frames, self.output, frame_of)
        per_point = frame_of is not None and out.shape[0] == len(frame_of)  # flat per-point output (never one row per frame)
        if frame_weights is None and not per_point:
            return out.unflatten(0, (b, k)).mean(1)
        if frame_weights is None:
            frame_weights = out.new_full((len(frames),), 1.0 / k)
        target, size = (rows, len(pos)) if per_point else (cloud, b)
        share = frame_weights[frame_of] if per_point else frame_weights
        weighted = out * share.reshape(-1, *[1] * (out.ndim - 1))
        return out.new_zeros(size, *out.shape[1:]).index_add(0, target, weighted)


class Comoving(nn.Module):
    """Galilean-boost canonicalization: the model sees velocities relative to the centre-of-mass velocity.

    Dynamics whose forces depend only on relative positions (gravitation, Coulomb, springs) are Galilean
    invariant: giving every particle an extra constant velocity ``u`` shifts the state ``horizon`` later
    by ``horizon · u`` and leaves its velocities shifted by ``u``. This wrapper makes any model exact under
    such boosts by removing the centre-of-mass velocity ``v̄`` (the mean over the real particles: equal
    masses) before the call and adding it back to the output: ``+ horizon · v̄`` for ``output="position"``,
    ``+ v̄`` for ``output="velocity"``. It commutes with rotations, reflections and translations, so
    wrapping an E(3)-equivariant model (``Canonicalized``, ``FrameAveraged``) gives an E(3) x boost
    equivariant one. Positions and every other feature are passed through unchanged.

    Args:
        model: called as ``model(pos, **features, mask=/batch=)``.
        horizon: time between the input state and the predicted one, in the units of the velocities.
        output: ``"position"`` or ``"velocity"`` (what the model predicts per particle).
        velocity: name of the velocity feature.

    Shapes: dense ``pos`` [B, N, 3] with ``mask`` [B, N] (or None), or flat [M, 3] with ``batch`` [M];
    the velocity feature and the output have the shape of ``pos``; padding rows are left untouched.
    """

    def __init__(self, model: nn.Module, horizon: float, output: str = "position", velocity: str = "vel") -> None:
        super().__init__()
        if not math.isfinite(horizon):
            raise ValueError(f"horizon must be a finite number, got {horizon!r}")
        if output not in ("position", "velocity"):
            raise ValueError(f"output must be 'position' or 'velocity', got {output!r}")
        self.model = model
        self.horizon = float(horizon)
        self.output = output
        self.velocity = velocity

    def forward(
        self, pos: Tensor, *, mask: Tensor | None = None, batch: Tensor | None = None, **features: Tensor
    ) -> Tensor:
        """The model's output with the centre-of-mass motion put back (shape of ``pos``)."""
        if self.velocity not in features:
            raise ValueError(f"missing the velocity feature {self.velocity!r} (got {sorted(features)})")
        vel = features[self.velocity]
        if vel.shape != pos.shape:
            raise ValueError(f"{self.velocity} must have the shape of pos {list(pos.shape)}, got {list(vel.shape)}")
        # one dense view of the velocities for both layouts, validated by the shared checker (shape, empty systems,
        # NaN/Inf of real particles) and averaged with the canonicalizers' masked centroid
        dense, dense_mask = to_dense(vel, batch) if batch is not None else (vel, mask)
        dense_mask, _ = check_dense_batch(dense, dense_mask, self.velocity)
        centre = Canonicalizer.centroid(dense.masked_fill(~dense_mask[..., None], 0.0), dense_mask)  # [B, 3]
        if batch is not None:
            centre, real = centre[batch], torch.ones_like(vel[..., :1], dtype=torch.bool)  # [M, 3], [M, 1]
        else:
            centre, real = centre[:, None].expand_as(vel), dense_mask[..., None]  # [B, N, 3], [B, N, 1]
        extra = {k: v for k, v in (("mask", mask), ("batch", batch)) if v is not None}
        features = {**features, self.velocity: torch.where(real, vel - centre, vel)}
        out = self.model(pos, **features, **extra)
        shift = centre * self.horizon if self.output == "position" else centre
        return torch.where(real, out + shift, out)


class Ensemble(nn.Module):
    """The mean output of several models called alike (a deep ensemble, e.g. the seeds of one configuration).

    The mean of E(3)-equivariant (or invariant) models is equivariant (invariant) in the same way, for every
    output type of :class:`Canonicalized` (the group acts linearly, or affinely with weights summing to one),
    so an ensemble of canonicalized or frame-averaged models stays exact.

    Args:
        members: at least one module; each is called with the ensemble's arguments and all must return the
            same shape.

    Shapes: those of the members' inputs and output.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) == 0:
            raise ValueError("an Ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, *args: Tensor, **kwargs: Tensor) -> Tensor:
        """Mean over the members of ``member(*args, **kwargs)``."""
        return torch.stack([member(*args, **kwargs) for member in self.members]).mean(0)

