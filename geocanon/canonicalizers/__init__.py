"""Canonicalizers: modules mapping a batch of clouds to one Frame per cloud."""

from .base import Canonicalizer, CorrectedCanonicalizer
from .choice import OctahedralChoice, cube_rotations
from .identity import IdentityCanonicalizer
from .learned import E3nnCanonicalizer
from .orientation import RegressedOrientation
from .pca import PCACanonicalizer, principal_axes
from .search import PoseSearch, rotation_grid

__all__ = [
    "Canonicalizer",
    "CorrectedCanonicalizer",
    "E3nnCanonicalizer",
    "IdentityCanonicalizer",
    "OctahedralChoice",
    "PCACanonicalizer",
    "PoseSearch",
    "RegressedOrientation",
    "cube_rotations",
    "principal_axes",
    "rotation_grid",
]
