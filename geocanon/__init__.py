"""geocanon: exact learned canonicalization for SO(3), O(3), SE(3) and E(3).

Put a canonicalizer in front of any point-cloud model to make it exactly invariant/equivariant::

    import geocanon
    canon = geocanon.E3nnCanonicalizer(group="SE3")
    model = geocanon.Canonicalized(my_backbone, canon, output="invariant")
"""

from .canonicalizers import (
    Canonicalizer,
    E3nnCanonicalizer,
    IdentityCanonicalizer,
    OctahedralChoice,
    PCACanonicalizer,
    PoseSearch,
    RegressedOrientation,
)
from .frames import (
    GROUPS,
    DegenerateFrameError,
    Frame,
    geodesic_angle,
    gram_schmidt,
    orthogonal_iteration,
    random_group_element,
    random_rotation,
    random_translation,
)
from .prior import CanonicalizationPrior, axis_prior, fraction_within, identity_prior, mean_angle_to_identity
from .wrap import Canonicalized, Comoving, Ensemble, FrameAveraged

__version__ = "0.1.0"

__all__ = [
    "GROUPS",
    "CanonicalizationPrior",
    "Canonicalized",
    "Comoving",
    "Canonicalizer",
    "DegenerateFrameError",
    "E3nnCanonicalizer",
    "Ensemble",
    "Frame",
    "FrameAveraged",
    "IdentityCanonicalizer",
    "OctahedralChoice",
    "RegressedOrientation",
    "PCACanonicalizer",
    "PoseSearch",
    "axis_prior",
    "fraction_within",
    "geodesic_angle",
    "gram_schmidt",
    "identity_prior",
    "mean_angle_to_identity",
    "orthogonal_iteration",
    "random_group_element",
    "random_rotation",
    "random_translation",
]
