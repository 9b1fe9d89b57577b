"""Train and compare energy-and-force models on a molecule, or evaluate a saved model.

  geocanon bench molecules --molecule ethanol --quick        # minutes on 2 CPU cores, prints a table
  geocanon bench molecules --molecule ethanol --config benchmarks/molecules.yaml [--resume]
  geocanon bench molecules --evaluate CHECKPOINT --data FILE.extxyz
      # prints {"energy_mae_mev": ..., "force_mae_mev_per_a": ..., "n": ...}

Data: `python datasets/molecules/generate.py --root data/molecules` (GFN2-xTB MD), or any labelled
file ASE reads (extxyz, ASE db...) / an rMD17 .npz via --train-file/--valid-file/--test-file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "molecular energies and forces (canonicalized GNN vs augmentation, SchNet)"
QUICK_CONFIG = Path(__file__).resolve().parents[2] / "benchmarks" / "molecules_quick.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--molecule", help="molecule name (files <data-root>/<molecule>_*_<split>.extxyz)")
    parser.add_argument("--quick", action="store_true", help=f"the quick configuration ({QUICK_CONFIG.name})")
    parser.add_argument("--config", type=Path, help="YAML file of MoleculesBenchConfig keys")
    parser.add_argument("--methods", nargs="+", help="subset of methods to run")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds to run")
    parser.add_argument("--max-epochs", type=int, help="override the epoch budget")
    parser.add_argument("--data-root", help="folder of generated data")
    for split in ("train", "valid", "test"):
        parser.add_argument(f"--{split}-file", help=f"labelled {split} file (any ASE format or rMD17 .npz)")
    parser.add_argument("--evaluate", type=Path, metavar="CHECKPOINT", help="evaluate a saved model instead of training")
    parser.add_argument("--data", type=Path, help="with --evaluate: the labelled molecule file")


def main(args: argparse.Namespace) -> int:
    from .common import config_file, hardware_overrides, load_config
    from .molecules import MoleculesBenchConfig, evaluate_checkpoint, run

    if args.evaluate is not None:
        if args.data is None:
            raise ValueError("--evaluate needs --data FILE (a labelled molecule file, e.g. extxyz with energies and forces)")
        print(json.dumps(evaluate_checkpoint(args.evaluate, args.data)))
        return 0
    cfg = load_config(
        MoleculesBenchConfig,
        config_file(args, QUICK_CONFIG),
        molecule=args.molecule, methods=args.methods, seeds=args.seeds, max_epochs=args.max_epochs, data_root=args.data_root,
        train_file=args.train_file, valid_file=args.valid_file, test_file=args.test_file, **hardware_overrides(args),
    )
    payload = run(cfg, resume=args.resume)
    print(Path(cfg.results).with_suffix(".md").read_text())
    return 0 if payload["molecules"][cfg.molecule]["complete"] else 1
