"""Generate (or verify) the cached N-body charged-particle splits and print the timing.

    python datasets/nbody/generate.py --root data/nbody [--n-particles 5] [--seed 0]

Thin wrapper around geocanon.data.nbody.generate_nbody; see that module for the protocol.
"""

import argparse
import time

from geocanon.data.nbody import NBodyConfig, generate_nbody


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="cache folder for nbody_<split>_<hash>.npz")
    defaults = NBodyConfig()
    for field in ("n_particles", "n_train", "n_valid", "n_test", "seed"):
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=getattr(defaults, field))
    args = parser.parse_args()
    config = NBodyConfig(
        n_particles=args.n_particles, n_train=args.n_train, n_valid=args.n_valid, n_test=args.n_test, seed=args.seed
    )
    start = time.perf_counter()
    paths = generate_nbody(args.root, config)
    elapsed = time.perf_counter() - start
    for split, path in paths.items():
        print(f"{split}: {config.n_samples(split)} systems -> {path}")
    print(f"done in {elapsed:.1f} s")


if __name__ == "__main__":
    main()
