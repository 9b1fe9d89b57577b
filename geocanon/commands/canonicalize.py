"""``geocanon canonicalize``: put point clouds and meshes in their canonical frame.

Inputs are files or folders (searched recursively) in the formats of :mod:`geocanon.io`. For each
file the frame is computed from its points (a mesh: ``--points`` samples on its surface, area
weighted, seeded by ``--seed``), then written to OUTDIR under the same relative name and format:

* ``NAME.EXT``: the file in canonical coordinates ``(P - t) @ R``. A mesh stays a mesh (faces,
  normals and colours kept; every vertex transformed), so its canonical version opens like the
  original; the surface samples only serve to compute the frame.
* ``NAME.EXT.frame.json``: rotation R (columns = canonical axes in input coordinates),
  translation t, group, determinant, the points used and the model (checkpoint path and spec, or
  "pca").

A file that cannot be used (unreadable, empty, NaN, degenerate, existing output) is reported on
stderr and skipped; the exit code is 1 if any file was skipped, else 0. Frames are computed in
float64: a checkpoint is rebuilt under ``torch.set_default_dtype(torch.float64)`` (e3nn constants
included), so the canonical output of a rotated and translated copy of a file matches the original's
to the precision of the file format.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__

if TYPE_CHECKING:
    from ..canonicalizers import Canonicalizer

__all__ = ["register", "add_canonicalizer_arguments", "load_canonicalizer", "compute_frame", "run"]

GROUPS = ("SO3", "O3", "SE3", "E3")
FRAME_SUFFIX = ".frame.json"


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_canonicalizer_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model CHECKPOINT | --pca`` and ``--group``, shared with ``geocanon plot clouds``."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--model",
        metavar="CHECKPOINT",
        help="a geocanon checkpoint (geocanon.checkpoint.save) holding a canonicalizer, or a model with a "
        ".canonicalizer (e.g. Canonicalized); its canonicalizer computes the frames",
    )
    which.add_argument(
        "--pca", action="store_true", help="use PCA canonicalization (principal axes, third-moment signs) instead"
    )
    parser.add_argument(
        "--group",
        choices=GROUPS,
        default=None,
        help="symmetry group of the frame: SO3/O3 rotate about the origin (t = 0), SE3/E3 also translate to the "
        "centroid, O3/E3 allow reflections (default: the checkpoint's group; SE3 with --pca)",
    )


def load_canonicalizer(model: str | None, pca: bool, group: str | None) -> tuple[Canonicalizer, str | dict[str, Any]]:
    """The canonicalizer the options ask for, built in float64, and its JSON description.

    Args:
        model: path of a geocanon checkpoint, or None.
        pca: use :class:`~geocanon.PCACanonicalizer` (exclusive with ``model``).
        group: requested group; with a checkpoint it must match the canonicalizer's.

    Returns:
        (canonicalizer in eval mode, ``"pca"`` or ``{"checkpoint": path, "spec": spec}``).

    Raises:
        ValueError: neither option, a checkpoint without a canonicalizer, a group mismatch, or a
        canonicalizer that needs per-point features (files carry positions only).
    """
    import torch

    from .. import checkpoint
    from ..canonicalizers import Canonicalizer, PCACanonicalizer

    if model is None and not pca:
        raise ValueError(
            "choose the canonicalizer: --model CHECKPOINT (a trained geocanon checkpoint) or --pca; there is no "
            "default learned model (an untrained one would give arbitrary frames)"
        )
    if pca:
        return PCACanonicalizer(group or "SE3").eval(), "pca"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # e3nn bakes its constants in the default dtype when built
    try:
        module, _ = checkpoint.load(model)
    finally:
        torch.set_default_dtype(previous)
    canonicalizer = module if isinstance(module, Canonicalizer) else getattr(module, "canonicalizer", None)
    if not isinstance(canonicalizer, Canonicalizer):
        raise ValueError(
            f"checkpoint {model} holds a {type(module).__name__}, which is neither a Canonicalizer nor a model "
            f"with a .canonicalizer (FrameAveraged averages over PCA frames: use --pca for those)"
        )
    if group is not None and group != canonicalizer.group:
        raise ValueError(f"checkpoint {model} has a {canonicalizer.group} canonicalizer but --group {group} was given")
    if canonicalizer.num_scalar_features or canonicalizer.num_vector_features:
        raise ValueError(
            f"checkpoint {model}'s canonicalizer needs per-point features ({canonicalizer.num_scalar_features} "
            f"scalars, {canonicalizer.num_vector_features} vectors); point files carry positions only"
        )
    return canonicalizer.double().eval(), {"checkpoint": str(Path(model).resolve()), "spec": checkpoint.spec_of(module)}


def compute_frame(canonicalizer: Canonicalizer, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frame of one cloud, in float64.

    Args:
        canonicalizer: from :func:`load_canonicalizer`.
        points: [N, 3].

    Returns:
        rotation R [3, 3] (columns = canonical axes), translation t [3].

    Raises:
        ValueError: degenerate clouds (coincident, collinear, ...), from the canonicalizer.
    """
    import torch

    with torch.no_grad():
        frame = canonicalizer(torch.as_tensor(points, dtype=torch.float64)[None])
    return frame.rotation[0].numpy(), frame.translation[0].numpy()


def _canonicalize_one(
    source: Path, target: Path, canonicalizer: Canonicalizer, model_info: str | dict[str, Any], args: argparse.Namespace
) -> None:
    """Write ``target`` and its frame JSON for ``source``; raises ValueError naming ``source``."""
    from .. import io

    frame_file = target.with_name(target.name + FRAME_SUFFIX)
    if target.resolve() == source.resolve():
        raise ValueError(f"{source}: the output would replace the input file; choose another -o folder")
    if not args.overwrite:
        existing = [str(p) for p in (target, frame_file) if p.exists()]
        if existing:
            verb = "exists" if len(existing) == 1 else "exist"
            raise ValueError(f"{source}: {' and '.join(existing)} already {verb} (use --overwrite to replace)")
    geometry = io.read_geometry(source)
    try:
        points = io.geometry_points(geometry, args.points, args.seed)
        rotation, translation = compute_frame(canonicalizer, points)
    except ValueError as err:
        raise ValueError(f"{source}: cannot canonicalize: {err}") from None
    io.write_geometry(target, io.to_canonical(geometry, rotation, translation))
    sampled = io.is_mesh(geometry)
    record = {
        "input": str(source.resolve()),
        "output": str(target.resolve()),
        "group": canonicalizer.group,
        "rotation": rotation.tolist(),
        "translation": translation.tolist(),
        "determinant": float(np.linalg.det(rotation)),
        "convention": "canonical = (input - translation) @ rotation; input = canonical @ rotation.T + translation "
        "(row-vector points; columns of rotation are the canonical axes in input coordinates)",
        "points_used": len(points),
        "sampling": {"points": args.points, "seed": args.seed} if sampled else None,
        "model": model_info,
        "geocanon_version": __version__,
    }
    frame_file.write_text(_compact_number_lists(json.dumps(record, indent=2)) + "\n")


def _compact_number_lists(text: str) -> str:
    """Put each list of numbers of ``json.dumps(..., indent=2)`` output on one line (rotation rows).

    Only multi-line matches are rewritten: JSON strings cannot hold a raw newline, so text inside
    a string (a file name with brackets) is never touched.
    """
    number_list = re.compile(r"\[\n\s*([-+0-9.eE]+(?:,\n\s*[-+0-9.eE]+)*)\n\s*\]")
    return number_list.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)


def run(args: argparse.Namespace) -> int:
    """Canonicalize every input; returns 1 if any file was skipped, else 0."""
    from tqdm import tqdm

    from .. import io

    canonicalizer, model_info = load_canonicalizer(args.model, args.pca, args.group)
    outdir = Path(args.output)
    inputs = io.find_inputs(args.inputs, exclude=outdir)
    if not inputs:
        raise ValueError(f"no point-cloud or mesh files ({' '.join(io.EXTENSIONS)}) found in {' '.join(args.inputs)}")
    claimed: dict[Path, Path] = {}
    failed = 0
    for source, relative in tqdm(inputs, desc="canonicalize", unit="file", disable=None):
        target = outdir / relative
        try:
            if target in claimed:
                raise ValueError(f"{source}: its output {target} is already the output of {claimed[target]}")
            claimed[target] = source
            _canonicalize_one(source, target, canonicalizer, model_info, args)
        except ValueError as err:
            failed += 1
            tqdm.write(f"skipped {err}", file=sys.stderr)
    done = len(inputs) - failed
    print(f"canonicalized {done} of {len(inputs)} file(s) into {outdir}" + (f"; {failed} skipped" if failed else ""))
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``canonicalize`` sub-command to the ``geocanon`` parser."""
    parser = sub.add_parser(
        "canonicalize",
        help="write point clouds / meshes in their canonical frame (+ a JSON of the frame)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="point-cloud or mesh files, or folders searched recursively for .ply .pcd .xyz .pts .off .obj .stl",
    )
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the canonical files")
    add_canonicalizer_arguments(parser)
    parser.add_argument(
        "--points", type=positive_int, default=1024, metavar="N",
        help="surface samples per mesh for computing its frame (default 1024; clouds use all their points)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the mesh surface sampling (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip the file)")
    parser.set_defaults(func=run)

