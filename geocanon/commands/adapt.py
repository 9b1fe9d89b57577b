"""``geocanon adapt``: make a pretrained backbone SO(3)-invariant with a learned canonicalizer and a prior.

The backbone checkpoint (a geocanon checkpoint of a PointNet / DGCNN trained on upright shapes without
canonicalization) is frozen and an E3nnCanonicalizer is trained in front of it with
loss = cross-entropy + β · prior; ``--finetune`` then trains both at a lower learning rate. With
``--pretrain`` a missing backbone checkpoint is first trained with the shared harness and saved.
Data, backbone, canonicalizer and budgets come from the YAML config (keys of AdaptBenchConfig).

geocanon --threads 1 adapt --pretrain --prior identity --beta 1 [--finetune] --output adapted.pt
geocanon adapt --backbone BACKBONE.pt --prior axis --beta 0.1 --config benchmarks/adapt_synthetic.yaml
geocanon --threads 1 adapt --benchmark --pretrain [--resume]   # the sweep of the config's runs -> results
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from .bench import add_training_arguments

__all__ = ["main", "register"]

BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
DEFAULT_CONFIG = BENCHMARKS_DIR / "adapt_synthetic.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``adapt`` sub-command."""
    parser = sub.add_parser("adapt", help="adapt a pretrained backbone with a learned canonicalizer and a prior",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help=f"YAML of AdaptBenchConfig keys (default: {DEFAULT_CONFIG.name})")  # fmt: skip
    parser.add_argument("--backbone", type=Path, metavar="CHECKPOINT",
                        help="backbone checkpoint to adapt (default: the config's backbone_checkpoint)")  # fmt: skip
    parser.add_argument("--pretrain", action="store_true",
                        help="train and save the backbone checkpoint first if it does not exist")  # fmt: skip
    parser.add_argument("--benchmark", action="store_true",
                        help="run every adaptation of the config's runs and write its results files")  # fmt: skip
    parser.add_argument("--prior", choices=["identity", "axis", "appearance", "none"],
                        help="prior of a single adaptation (default: identity for upright pretraining, axis for z)")
    parser.add_argument("--beta", type=float, default=1.0, help="weight of the prior (default 1)")
    parser.add_argument("--finetune", action="store_true", help="fine-tune backbone and canonicalizer afterwards")
    parser.add_argument("--output", type=Path, help="where to save the adapted model (geocanon checkpoint)")
    parser.add_argument("--adapt-epochs", type=int, help="override the config's adapt_epochs")
    parser.add_argument("--finetune-epochs", type=int, help="override the config's finetune_epochs")
    parser.add_argument("--pretrain-epochs", type=int, help="override the config's pretrain_epochs")
    parser.add_argument("--run-dir", help="override the config's run_dir (checkpoints and logs)")
    parser.add_argument("--results", help="with --benchmark: override the config's results stem")
    add_training_arguments(parser)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run one adaptation (prints its rows as JSON) or, with ``--benchmark``, the config's sweep."""
    from ..bench.adapt import AdaptBenchConfig, run
    from ..bench.common import hardware_overrides, load_config

    if args.benchmark and (args.prior or args.finetune or args.output):
        raise ValueError("--benchmark runs the config's runs: do not combine it with --prior, --finetune or --output")
    overrides = dict(
        adapt_epochs=args.adapt_epochs, finetune_epochs=args.finetune_epochs, pretrain_epochs=args.pretrain_epochs,
        run_dir=args.run_dir, **hardware_overrides(args),
    )  # fmt: skip
    if args.benchmark:
        cfg = load_config(AdaptBenchConfig, args.config, results=args.results, **overrides)
        payload = run(cfg, args.backbone, args.pretrain, args.resume)
        print(Path(cfg.results).with_suffix(".md").read_text() if cfg.results else json.dumps(payload["results"]))
        return 0
    cfg = load_config(AdaptBenchConfig, args.config, **overrides)
    prior = args.prior or ("identity" if cfg.pretrain_rotation == "none" else "axis")
    run_spec = {"prior": prior, "beta": 0.0 if prior == "none" else args.beta, "finetune": args.finetune}
    cfg = replace(cfg, runs=[run_spec], results=None)
    payload = run(cfg, args.backbone, args.pretrain, args.resume)
    if args.output is not None:
        from .. import checkpoint

        model, meta = checkpoint.load(payload["last_model"])
        checkpoint.save(args.output, model, meta=meta)
        print(f"adapted model saved to {args.output}")
    print(json.dumps(payload["results"], indent=1, default=float))
    return 0
