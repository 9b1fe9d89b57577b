"""Learned canonicalization (Kaba et al. 2023) with an e3nn network and Gram–Schmidt."""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from ..frames import Frame, Group, gram_schmidt, has_reflections, has_translations
from ..nn.vector_net import EquivariantVectorNetwork
from .base import Canonicalizer

__all__ = ["E3nnCanonicalizer"]


class E3nnCanonicalizer(Canonicalizer):
    """A frame from vectors predicted by an :class:`~geocanon.nn.EquivariantVectorNetwork`.

    * SO3/SE3: 2 predicted vectors, Gram–Schmidt and a cross product (det = +1);
    * O3/E3: 3 predicted vectors, Gram–Schmidt (det = ±1, reflections reflect the frame);
    * translation: zero for SO3/O3; for SE3/E3 the centroid, or with ``translation="learned"`` the
      centroid plus one more predicted ``1o`` vector.

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
        **network: Any,
    ) -> None:
        super().__init__(group)
        if pseudovector_outputs and has_reflections(group):
            raise ValueError(f"pseudovector_outputs breaks reflection equivariance: not allowed for group {group}")
        if translation not in ("centroid", "learned"):
            raise ValueError(f"translation must be 'centroid' or 'learned', got {translation!r}")
        if translation == "learned" and not has_translations(group):
            raise ValueError(f"translation='learned' needs a group with translations (SE3/E3), got {group}")
        self.num_scalar_features = num_scalar_features
        self.num_vector_features = num_vector_features
        self.translation = translation
        self.num_axes = 3 if has_reflections(group) else 2
        self.config = dict(
            group=group,
            num_scalar_features=num_scalar_features,
            num_vector_features=num_vector_features,
            translation=translation,
            pseudovector_outputs=pseudovector_outputs,
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
        rotation = gram_schmidt(out[:, : self.num_axes], self.group)
        translation = self._translation(pos, mask)
        if self.translation == "learned":
            translation = translation + out[:, self.num_axes]
        return Frame(rotation, translation)
