"""``geocanon plot``: PNG pictures of canonical frames and of training curves.

* ``geocanon plot clouds INPUT... -o out.png (--model CKPT | --pca)``: one row per cloud, the input
  with its frame's axes (columns of R, drawn at t; red, green, blue = axes 1, 2, 3) and the
  canonical cloud ``(P - t) @ R``. Inputs are read like ``geocanon canonicalize``'s (meshes are
  sampled); unreadable files are reported and skipped (exit code 1).
* ``geocanon plot curves RUN_DIR_OR_CSV... -o out.png``: train/val loss and every other logged metric
  against the epoch, from the ``metrics.csv`` that the benchmark harness's Lightning CSVLogger
  writes at ``RUN_DIR/logs/version_0/metrics.csv`` (folders are searched recursively, so a folder of
  runs plots them all).

An existing PNG is replaced.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import numpy as np

from .canonicalize import add_canonicalizer_arguments, positive_int

__all__ = ["register", "read_metrics", "find_metric_files"]

NOT_METRICS = ("epoch", "step")


def read_metrics(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-epoch curves from a Lightning CSVLogger ``metrics.csv``.

    Lightning writes one row per logging call with blank cells for the metrics not logged then
    (train and val rows alternate); the last value logged in each epoch is kept.

    Returns:
        column (e.g. "val/loss") -> (epochs [E] int, values [E] float), columns with no value omitted.

    Raises:
        ValueError naming the file: no ``epoch`` column, or a non-numeric cell.
    """
    path = Path(path)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "epoch" not in reader.fieldnames:
            raise ValueError(f"{path}: not a Lightning metrics CSV (no 'epoch' column)")
        columns = [c for c in reader.fieldnames if c not in NOT_METRICS]
        per_epoch: dict[str, dict[int, float]] = {c: {} for c in columns}
        for line, row in enumerate(reader, start=2):
            try:
                if not row["epoch"]:
                    continue
                epoch = int(float(row["epoch"]))
                for c in columns:
                    if row.get(c):
                        per_epoch[c][epoch] = float(row[c])
            except ValueError:
                raise ValueError(f"{path}, line {line}: non-numeric value in {row}") from None
    return {
        c: (np.array(sorted(v)), np.array([v[e] for e in sorted(v)]))
        for c, v in per_epoch.items()
        if v
    }


def find_metric_files(inputs: list[str]) -> list[Path]:
    """CSV files named on the command line, and every ``metrics.csv`` under the folders named.

    Raises:
        ValueError: an argument that does not exist, or no CSV found at all.
    """
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found.extend(sorted(item.rglob("metrics.csv")))
        elif item.is_file():
            found.append(item)
        else:
            raise ValueError(f"{item} does not exist")
    if not found:
        raise ValueError(f"no metrics.csv found under {' '.join(inputs)} (expected RUN_DIR/logs/version_0/metrics.csv)")
    return found


def _run_labels(files: list[Path]) -> list[str]:
    """Short, distinct labels: each CSV's run folder (above ``logs/version_N``) minus the common prefix."""
    runs = [p.parents[2] if p.parent.parent.name == "logs" else p.with_suffix("") for p in files]
    absolute = [str(r.resolve()) for r in runs]
    if len(runs) == 1:
        return [runs[0].name or str(runs[0])]
    common = os.path.commonpath(absolute)
    return [os.path.relpath(a, common) if a != common else Path(a).name for a in absolute]


def run_clouds(args: argparse.Namespace) -> int:
    """Draw inputs and canonical clouds; returns 1 if a file was skipped, else 0."""
    from .. import io
    from ..plot import FramedCloud, clouds_figure, save_png
    from .canonicalize import compute_frame, load_canonicalizer

    canonicalizer, _ = load_canonicalizer(args.model, args.pca, args.group)
    inputs = io.find_inputs(args.inputs)
    if not inputs:
        raise ValueError(f"no point-cloud or mesh files found in {' '.join(args.inputs)}")
    if len(inputs) > args.limit:
        print(f"plotting the first {args.limit} of {len(inputs)} files (--limit)", file=sys.stderr)
        inputs = inputs[: args.limit]
    clouds: list[FramedCloud] = []
    failed = 0
    for source, _ in inputs:
        try:
            points = io.geometry_points(io.read_geometry(source), args.points, args.seed)
            try:
                rotation, translation = compute_frame(canonicalizer, points)
            except ValueError as err:
                raise ValueError(f"{source}: cannot canonicalize: {err}") from None
        except ValueError as err:
            failed += 1
            print(f"skipped {err}", file=sys.stderr)
            continue
        clouds.append(FramedCloud(str(source), points, rotation, translation))
    if not clouds:
        raise ValueError("none of the inputs could be plotted")
    save_png(clouds_figure(clouds, max_points=args.max_points), args.output, dpi=args.dpi)
    print(f"wrote {args.output} ({len(clouds)} cloud(s), {canonicalizer.group} frames)")
    return 1 if failed else 0


def run_curves(args: argparse.Namespace) -> int:
    """Draw the training curves of every run found; returns 0."""
    from ..plot import curves_figure, save_png

    files = find_metric_files(args.inputs)
    runs = {label: read_metrics(path) for label, path in zip(_run_labels(files), files)}
    empty = [str(p) for p, curves in zip(files, runs.values()) if not curves]
    if empty:
        raise ValueError(f"no logged values in {', '.join(empty)}")
    if args.logy:
        bad = [f"{label}:{c}" for label, curves in runs.items() for c, (_, v) in curves.items() if (v <= 0).any()]
        if bad:
            raise ValueError(f"--logy needs positive values; these columns have some <= 0: {', '.join(bad[:5])}")
    save_png(curves_figure(runs, logy=args.logy), args.output, dpi=args.dpi)
    epochs = max(int(e.max()) + 1 for curves in runs.values() for e, _ in curves.values() if len(e))
    print(f"wrote {args.output} ({len(runs)} run(s), up to {epochs} epochs)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``plot clouds`` and ``plot curves`` to the ``geocanon`` parser."""
    parser = sub.add_parser("plot", help="PNG pictures of canonical frames or training curves", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = parser.add_subparsers(dest="kind", metavar="KIND", required=True)

    clouds = kinds.add_parser("clouds", help="clouds before/after canonicalization, with the frame axes",
                              description="One row per cloud: the input with its frame's axes (columns of R at t) "
                                          "and the canonical cloud (P - t) @ R.")
    clouds.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="point-cloud or mesh files, or folders searched recursively for "
                             ".ply .pcd .xyz .pts .off .obj .stl")
    clouds.add_argument("-o", "--output", required=True, metavar="PNG", help="picture to write")
    add_canonicalizer_arguments(clouds)
    clouds.add_argument("--points", type=positive_int, default=1024, metavar="N",
                        help="surface samples per mesh (default 1024; clouds use all their points)")
    clouds.add_argument("--seed", type=int, default=0, help="seed of the mesh surface sampling (default 0)")
    clouds.add_argument("--limit", type=positive_int, default=12, help="draw at most this many files (default 12)")
    clouds.add_argument("--max-points", type=positive_int, default=2000,
                        help="points drawn per panel at most, a fixed random subset (default 2000)")
    clouds.add_argument("--dpi", type=positive_int, default=110, help="resolution of the PNG (default 110)")
    clouds.set_defaults(func=run_clouds)

    curves = kinds.add_parser("curves", help="training curves from the harness's CSV logs",
                              description="Loss and metrics per epoch from Lightning CSV logs "
                                          "(RUN_DIR/logs/version_0/metrics.csv).")
    curves.add_argument("inputs", nargs="+", metavar="RUN_DIR_OR_CSV",
                        help="metrics.csv files, or folders searched recursively for metrics.csv")
    curves.add_argument("-o", "--output", required=True, metavar="PNG", help="picture to write")
    curves.add_argument("--logy", action="store_true", help="logarithmic value axes")
    curves.add_argument("--dpi", type=positive_int, default=110, help="resolution of the PNG (default 110)")
    curves.set_defaults(func=run_curves)
