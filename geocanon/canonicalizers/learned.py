"""Learned canonicalization (Kaba et al. 2023) with an e3nn network and Gram–Schmidt."""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from ..frames import Frame, Group, gram_schmidt, has_reflections, has_translations, orthogonal_iteration
from ..nn.vector_net import EquivariantVectorNetwork
from .base import Canonicalizer
from .pca import covariance, third_moment_signs

__all__ = ["E3nnCanonicalizer"]


class E3nnCanonicalizer(Canonicalizer):
    """A frame from vectors predicted by an :class:`~geocanon.nn.EquivariantVectorNetwork`.

    * SO3/SE3: 2 predicted vectors, Gram–Schmidt and a cross product (det = +1);
    * O3/E3: 3 predicted vectors, Gram–Schmidt (det = ±1, reflections reflect the frame);
    * translation: zero for SO3/O3; for SE3/E3 the centroid, or with ``translation="learned"`` the
      centroid plus one more predicted ``1o`` vector.

    With ``power_iterations = p > 0`` the predicted vectors are first refined by ``p`` rounds of
    :func:`~geocanon.frames.orthogonal_iteration` with the covariance of **all** points: the axes move
    towards the principal axes while the network chooses their signs (and, where two variances are
    nearly equal, their direction within that plane, continuously). Why: the network sees a
    subsample and k-NN graphs that switch under small perturbations, and an O(3)-equivariant ``1o``
    output vanishes on centrally symmetric clouds, so its raw vectors are noisy exactly where PCA's
    axes are stable; PCA in turn jumps where variances cross and where third moments vanish, where
    the network's choice stays continuous. Still exactly equivariant (the covariance rotates with the
    input). ``p = 0`` is the original method (Kaba et al. 2023). The signs of the refined axes follow
    the network's vectors, which flip under small perturbations when those vectors are noisy (the
    ``frame_turn_deg`` column of the shape benchmark measures it); ``signs="third-moment"`` takes
    them from all points instead, as PCA does.

    Called on a dense float tensor [B, N, 3] it returns a Frame with ``rotation`` [B, 3, 3] and
    ``translation`` [B, 3]. Masks, PyG batches and features go through keyword arguments
    (see :class:`~geocanon.canonicalizers.base.Canonicalizer`).

    float64: build the module under ``torch.set_default_dtype(torch.float64)``; e3nn bakes its
    Clebsch–Gordan constants in the default dtype at construction.

    Args:
        group: "SO3", "O3", "SE3" or "E3".
        num_scalar_features: per-point ``0e`` inputs (charges, atom types...).
        num_vector_features: per-point ``1o`` inputs (velocities, normals...).
        translation: "centroid" or "learned" (SE3/E3 only).
        power_iterations: rounds of orthogonal iteration with the cloud's covariance (0: none).
        signs: with power iterations, who orients each refined axis: "network" (the predicted
            vector's side) or "third-moment" (PCA's rule on all points: the projections' third moment
            is made positive; the network's side is kept where it is exactly zero).
        pseudovector_outputs: SO3/SE3 only: let the network add pseudovector (``1e``) channels to
            its outputs (see :class:`~geocanon.nn.EquivariantVectorNetwork`); frames of nearly centrally
            symmetric clouds no longer vanish, and mirror images no longer get mirrored frames.
        **network: forwarded to :class:`~geocanon.nn.EquivariantVectorNetwork`
            (hidden_mul, layers, lmax, k, num_points, ...).
    """

    def __init__(
        self,
        group: Group = "SE3",
        num_scalar_features: int = 0,
        num_vector_features: int = 0,
        translation: Literal["centroid", "learned"] = "centroid",
        pseudovector_outputs: bool = False,
        power_iterations: int = 0,
        signs: Literal["network", "third-moment"] = "network",
        **network: Any,
    ) -> None:
        super().__init__(group)
        if power_iterations < 0:
            raise ValueError(f"power_iterations must be >= 0, got {power_iterations}")
        if signs not in ("network", "third-moment"):
            raise ValueError(f"signs must be 'network' or 'third-moment', got {signs!r}")
        if signs == "third-moment" and not power_iterations:
            raise ValueError("signs='third-moment' re-signs the refined axes: it needs power_iterations > 0")
        if pseudovector_outputs and has_reflections(group):
            raise ValueError(f"pseudovector_outputs breaks reflection equivariance: not allowed for group {group}")
        if translation not in ("centroid", "learned"):
            raise ValueError(f"translation must be 'centroid' or 'learned', got {translation!r}")
        if translation == "learned" and not has_translations(group):
            raise ValueError(f"translation='learned' needs a group with translations (SE3/E3), got {group}")
        self.num_scalar_features = num_scalar_features
        self.num_vector_features = num_vector_features
        self.translation = translation
        self.power_iterations = power_iterations
        self.signs = signs
        self.num_axes = 3 if has_reflections(group) else 2
        self.config = dict(
            group=group,
            num_scalar_features=num_scalar_features,
            num_vector_features=num_vector_features,
            translation=translation,
            pseudovector_outputs=pseudovector_outputs,
            power_iterations=power_iterations,
            signs=signs,
            **network,
        )
        self.network = EquivariantVectorNetwork(
            self.num_axes + (translation == "learned"),
            num_scalar_features,
            num_vector_features,
            pseudovector_outputs=pseudovector_outputs,
            **network,
        )

    def frame(self, pos: Tensor, mask: Tensor, scalars: Tensor | None, vectors: Tensor | None) -> Frame:
        out = self.network(pos, mask=mask, scalars=scalars, vectors=vectors)  # [B, num_axes (+1), 3]
        axes = out[:, : self.num_axes]
        if self.power_iterations:
            centroid, cov = covariance(pos, mask)
            axes = orthogonal_iteration(cov, axes, self.power_iterations)
            if self.signs == "third-moment":
                axes = axes * third_moment_signs(pos, mask, centroid, axes.transpose(1, 2))[..., None]
        rotation = gram_schmidt(axes, self.group)
        translation = self._translation(pos, mask)
        if self.translation == "learned":
            translation = translation + out[:, self.num_axes]
        return Frame(rotation, translation)
