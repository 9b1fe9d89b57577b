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
