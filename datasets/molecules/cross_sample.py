"""Evaluate committed molecule checkpoints on a second, independently generated sample of the same MD protocol.

Each checkpoint was trained and tested on one data set (its ``meta["row"]`` holds that test error); this scores it on
the test split of another trajectory generated with the same settings (e.g. the procedure-2 sets that
``generate.py`` reproduces byte for byte), which shares no frames with, and is not correlated in time to, its
training data. Writes ``<out>.json`` and ``<out>.md``:

    python datasets/molecules/cross_sample.py --root data/molecules_v2 --out benchmarks/results/molecules_cross_sample \
        benchmarks/checkpoints/molecules_12epochs/*.pt benchmarks/checkpoints/molecules_36epochs/*.pt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from geocanon import checkpoint
from geocanon.bench.molecules import evaluate_checkpoint
from geocanon.bench.results import markdown_table, provenance, write_results
from geocanon.data.molecules import file_sha256

COLUMNS = ["checkpoint", "molecule", "method", "seed", "force_mae_own_test", "force_mae_other_sample", "ratio",
           "energy_mae_own_test", "energy_mae_other_sample", "other_test_file", "other_test_sha256"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--root", type=Path, required=True, help="folder with the other sample's <molecule>_<hash>_test.extxyz")
    parser.add_argument("--out", type=Path, required=True, help="results stem (writes .json and .md)")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = []
    for path in args.checkpoints:
        _, meta = checkpoint.load(path)
        own = meta.get("row")
        if own is None:
            raise ValueError(f"{path} holds no test result of its own (meta['row']): only checkpoints saved by `geocanon bench molecules` have one")
        found = sorted(args.root.glob(f"{own['molecule']}_*_test.extxyz"))
        if len(found) != 1:
            raise FileNotFoundError(f"need exactly one {own['molecule']}_*_test.extxyz in {args.root} for {path}, found {len(found)}")
        other = evaluate_checkpoint(path, found[0])
        rows.append({"checkpoint": str(path), "molecule": own["molecule"], "method": own["method"], "seed": own["seed"],
                     "force_mae_own_test": own["force_mae_mev_per_a"], "force_mae_other_sample": other["force_mae_mev_per_a"],
                     "ratio": other["force_mae_mev_per_a"] / own["force_mae_mev_per_a"],
                     "energy_mae_own_test": own["energy_mae_mev"], "energy_mae_other_sample": other["energy_mae_mev"],
                     "other_test_file": str(found[0]), "other_test_sha256": file_sha256(found[0])[:12], "n": other["n"]})
    payload = {"benchmark": "molecules-cross-sample", "rows": rows, "provenance": provenance(time.perf_counter() - start)}
    markdown = ("# Molecule checkpoints on another sample of the same MD protocol\n\nForce MAE meV/Å, energy MAE meV: on the "
                "checkpoint's own test split (from its training run) and on the test split of an independently generated "
                "trajectory with the same settings.\n\n" + markdown_table(rows, COLUMNS) + "\n")
    for written in write_results(args.out, payload, markdown):
        print(written)


if __name__ == "__main__":
    main()
