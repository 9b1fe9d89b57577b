"""``geocanon bench <benchmark>``: train, evaluate and report a benchmark.

Each benchmark module in :mod:`geocanon.bench` provides ``add_arguments(parser)`` and ``main(args)``.
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = {
    "nbody": "geocanon.bench.nbody_cli",
    "shapes": "geocanon.bench.shapes_cli",
    "molecules": "geocanon.bench.molecules_cli",
}


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every training command shares: resume, progress bars and the Lightning pass-through hardware.

    Read back with :func:`geocanon.bench.common.hardware_overrides` (and ``args.resume``).
    """
    parser.add_argument("--resume", action="store_true", help="continue interrupted trainings from their last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    group = parser.add_argument_group("hardware (passed to Lightning)")
    group.add_argument("--accelerator", default=None, help="cpu (default), gpu, auto, ...")
    group.add_argument("--devices", default=None, help="number of devices or 'auto'")
    group.add_argument("--strategy", default=None, help="auto (default), ddp, ...")
    group.add_argument("--num-nodes", type=int, default=None, help="nodes for multi-node DDP")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="run a benchmark (nbody, shapes, molecules)", description=__doc__)
    benches = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, module_name in BENCHMARKS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:
                continue
            raise
        bench = benches.add_parser(name, help=module.HELP, description=module.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(bench)
        add_training_arguments(bench)
        bench.set_defaults(func=module.main)
