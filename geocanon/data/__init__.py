"""Data sets: N-body simulator and loader (more loaders are added alongside)."""

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
from geocanon.data.synthetic_shapes import SyntheticShapes, helix_curve, make_shape
