"""Shape classification under rotations (plain / augment / PCA / learned / frame averaging), or evaluate a model.

geocanon --threads 1 bench shapes --dataset synthetic             # benchmarks/shapes_synthetic.yaml
geocanon bench shapes --quick                                     # CI-sized smoke run (benchmarks/shapes_quick.yaml)
geocanon bench shapes --dataset modelnet40 [--config YAML] [--resume] [--methods ...] [--backbones ...]
geocanon bench shapes --evaluate CHECKPOINT --data-dir DIR [--rotate none|z|so3] [--seed S] [--dataset modelnet40]
geocanon --threads 2 bench shapes --overhead                      # E3nnCanonicalizer vs PointNet forward time
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "shape classification under rotations (SyntheticShapes, ModelNet40/10)"
BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
QUICK_CONFIG = BENCHMARKS_DIR / "shapes_quick.yaml"
DEFAULT_CONFIGS = {
    "synthetic": BENCHMARKS_DIR / "shapes_synthetic.yaml",
    "modelnet40": BENCHMARKS_DIR / "modelnet40.yaml",
    "modelnet10": BENCHMARKS_DIR / "modelnet10.yaml",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset", choices=sorted(DEFAULT_CONFIGS), help="data set (default config: benchmarks/<...>.yaml)"
    )
    parser.add_argument("--config", type=Path, help="YAML file of ShapesBenchConfig keys (default: the dataset's)")
    parser.add_argument("--quick", action="store_true", help=f"the CI smoke configuration ({QUICK_CONFIG.name})")
    parser.add_argument(
        "--methods", nargs="+", help="subset of plain, augment, pca, learned, learned-o3, frame-averaging"
    )
    parser.add_argument("--backbones", nargs="+", help="subset of pointnet, dgcnn")
    parser.add_argument("--protocols", nargs="+", help="subset of z/z z/SO3 SO3/SO3")
    parser.add_argument(
        "--max-epochs", type=int, help="override the epoch budget (a per-backbone budget in the config wins)"
    )
    parser.add_argument("--max-time-s", type=float, help="wall-clock cap per training in seconds (Lightning max_time)")
    parser.add_argument("--data-root", help="ModelNet data folder (default: the config's, else $GEOCANON_DATA)")
    parser.add_argument(
        "--evaluate", type=Path, metavar="CHECKPOINT", help="evaluate a saved classifier instead of training"
    )
    parser.add_argument("--data-dir", type=Path, help="with --evaluate: folder holding the ModelNet test split")
    parser.add_argument(
        "--rotate", default="none", choices=["none", "z", "so3"], help="with --evaluate: rotate test clouds"
    )
    parser.add_argument("--seed", type=int, default=0, help="with --evaluate: seed of the test rotations")
    parser.add_argument("--points", type=int, help="with --evaluate: points per cloud (default: the checkpoint's)")
    parser.add_argument(
        "--overhead",
        action="store_true",
        help="time the E3nnCanonicalizer vs a plain PointNet (32 x 1024) -> benchmarks/results/canonicalizer_overhead",
    )
    parser.add_argument("--repeats", type=int, default=5, help="with --overhead: timed calls per measurement")


def main(args: argparse.Namespace) -> int:
    from .common import config_file, hardware_overrides, load_config
    from .shapes import ShapesBenchConfig, canonicalizer_overhead, evaluate_checkpoint, run

    if args.evaluate is not None:
        if args.data_dir is None:
            raise ValueError("--evaluate needs --data-dir DIR (the folder holding the ModelNet test split)")
        print(
            json.dumps(
                evaluate_checkpoint(args.evaluate, args.data_dir, args.dataset, args.rotate, args.seed, args.points)
            )
        )
        return 0
    if args.overhead:
        payload = canonicalizer_overhead(repeats=args.repeats)
        print(json.dumps(payload["results"], indent=1))
        return 0
    config = config_file(args, QUICK_CONFIG, DEFAULT_CONFIGS[args.dataset or "synthetic"])
    cfg = load_config(
        ShapesBenchConfig,
        config,
        dataset=args.dataset,
        methods=args.methods,
        backbones=args.backbones,
        protocols=args.protocols,
        max_epochs=args.max_epochs,
        max_time_s=args.max_time_s,
        data_root=args.data_root,
        **hardware_overrides(args),
    )
    payload = run(cfg, resume=args.resume)
    print(Path(cfg.results).with_suffix(".md").read_text())
    return 0 if payload["complete"] else 1
