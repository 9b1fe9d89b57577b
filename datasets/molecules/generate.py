"""Generate the molecular MD data sets (GFN2-xTB via tblite, Langevin at 500 K) and their splits.

    OMP_NUM_THREADS=1 python datasets/molecules/generate.py --root data/molecules \
        --molecules ethanol malonaldehyde aspirin [--stride 40]

Resumable: rerun the same command after an interruption and it continues from the last
checkpointed chunk. Thin wrapper around geocanon.data.molecules.generate_molecule; see that module
for the protocol, and README.md here for the measured costs and autocorrelations.
"""

import argparse
import time
from dataclasses import fields

from geocanon.data.molecules import MOLECULES, MDConfig, generate_molecule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="output folder")
    parser.add_argument("--molecules", nargs="+", default=list(MOLECULES), choices=sorted(MOLECULES))
    defaults = MDConfig()
    for f in fields(MDConfig):
        if f.name != "molecule":
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)), default=getattr(defaults, f.name))
    args = parser.parse_args()
    for name in args.molecules:
        config = MDConfig(molecule=name, **{f.name: getattr(args, f.name) for f in fields(MDConfig) if f.name != "molecule"})
        start = time.perf_counter()
        paths = generate_molecule(args.root, config, log=lambda msg: print(msg, flush=True))
        print(f"{name}: done in {time.perf_counter() - start:.0f} s -> " + ", ".join(str(paths[s]) for s in ("train", "valid", "test")), flush=True)


if __name__ == "__main__":
    main()
