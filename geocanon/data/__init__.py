"""Data sets: N-body simulator and loader, ModelNet, SyntheticShapes, molecules (``geocanon.data.molecules``).

``SyntheticShapes`` builds its meshes with open3d; it is imported on first use, so that reading ModelNet or
N-body data works where open3d is not installed (a GPU machine's image, say).
"""

from typing import Any

from geocanon.data.nbody import (
    NBodyConfig,
    NBodyDataset,
    coulomb_forces,
    generate_nbody,
    integrate,
    load_nbody,
    nbody_cache_path,
    nbody_energy,
    sample_initial_state,
    simulate,
)
from geocanon.data.mesh_io import normalize_unit_sphere, read_off, sample_surface
from geocanon.data.modelnet import LAYOUTS, MODELNET10_CLASSES, MODELNET40_CLASSES, ModelNet, find_modelnet

_OPEN3D_NAMES = ("SyntheticShapes", "helix_curve", "make_shape")


def __getattr__(name: str) -> Any:
    if name in _OPEN3D_NAMES:
        from geocanon.data import synthetic_shapes

        return getattr(synthetic_shapes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
