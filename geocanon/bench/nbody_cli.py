"""Train and compare every N-body method, or evaluate a saved model.

  geocanon bench nbody --quick                      # ≤ 10 min on 2 CPU cores, prints a table
  geocanon bench nbody --config benchmarks/nbody.yaml [--resume | --finished-only]
  geocanon bench nbody --evaluate CHECKPOINT --data-dir DIR [--orientations M]  # prints {"test_mse": ..., "n": ...}
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "charged-particle N-body prediction (canonicalized GNN vs baselines)"
QUICK_CONFIG = Path(__file__).resolve().parents[2] / "benchmarks" / "nbody_quick.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help=f"the quick configuration ({QUICK_CONFIG.name})")
    parser.add_argument("--config", type=Path, help="YAML file of NBodyBenchConfig keys")
    parser.add_argument("--methods", nargs="+", help="subset of methods to run")
    parser.add_argument("--seeds", nargs="+", type=int, help="seeds to run")
    parser.add_argument("--max-epochs", type=int, help="override the epoch budget")
    parser.add_argument("--data-root", help="N-body cache folder (generated on first use)")
    parser.add_argument("--evaluate", type=Path, metavar="CHECKPOINT", help="evaluate a saved model instead of training")
    parser.add_argument("--data-dir", type=Path, help="with --evaluate: folder with the test split (our cache or published .npy)")
    parser.add_argument("--finished-only", action="store_true",
                        help="train nothing: report the finished runs of run_dir (PARTIAL while some are missing)")
    parser.add_argument("--orientations", type=int, metavar="M",
                        help="with --evaluate: average a frame-averaged model over every frame in M fixed orientations")


def main(args: argparse.Namespace) -> int:
    from .common import config_file, hardware_overrides, load_config
    from .nbody import NBodyBenchConfig, evaluate_checkpoint, run

    if args.evaluate is not None:
        if args.data_dir is None:
            raise ValueError("--evaluate needs --data-dir DIR (the folder holding the test split)")
        print(json.dumps(evaluate_checkpoint(args.evaluate, args.data_dir, args.orientations)))
        return 0
    cfg = load_config(
        NBodyBenchConfig,
        config_file(args, QUICK_CONFIG),
        methods=args.methods, seeds=args.seeds, max_epochs=args.max_epochs, data_root=args.data_root,
        **hardware_overrides(args),
    )
    payload = run(cfg, resume=args.resume, finished_only=args.finished_only)
    print(Path(cfg.results).with_suffix(".md").read_text())
    return 0 if payload["complete"] else 1
