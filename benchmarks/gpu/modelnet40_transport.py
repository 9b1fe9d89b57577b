"""Carry the ModelNet40 1024-point copy to a GPU machine that cannot read ``../shared``.

The GPU machine only receives what travels with the repository (at most 64 MiB per call), and the
per-shape ``.npy`` copy is 195 MB of float32. ``pack`` stores every coordinate as 16-bit fixed point over
[-1, 1] (the clouds are unit-sphere normalised; error <= 1/65535 ≈ 1.5e-5 of the radius, far below the
point spacing), split evenly over the part folders given (two parts of ~39 MB for the full set); ``unpack`` writes them back in the same ``npy`` layout
(float32) so that the benchmark reads them with the ordinary loader. The packed parts live in folders that
git ignores and are deleted after the run: they are a transport format, not a copy of the data set.

    python benchmarks/gpu/modelnet40_transport.py pack ../shared/data/modelnet40-1024 .gpu_a .gpu_b
    python benchmarks/gpu/modelnet40_transport.py unpack /tmp/modelnet40-1024 PART_DIR [PART_DIR ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SCALE = 32767.5  # uint16 q = round((x + 1) * SCALE) covers [-1, 1]
NAMES = "modelnet40_shape_names.txt"


def quantize(points: np.ndarray, path: str) -> np.ndarray:
    """float [P, 3] in the unit ball -> uint16 [P, 3]; an error naming ``path`` outside [-1, 1]."""
    if not np.isfinite(points).all() or np.abs(points).max() > 1.0 + 1e-6:
        raise ValueError(f"{path}: coordinates must be finite and within [-1, 1] to be packed")
    return np.round((np.clip(points, -1.0, 1.0) + 1.0) * SCALE).astype(np.uint16)


def dequantize(q: np.ndarray) -> np.ndarray:
    """uint16 -> float32 coordinates in [-1, 1]."""
    return (q.astype(np.float64) / SCALE - 1.0).astype(np.float32)


def pack(root: Path, out_dirs: list[Path]) -> None:
    """Split the clouds of ``root`` (npy layout) evenly over ``out_dirs`` (one ``modelnet40.npz`` each)."""
    files = sorted(root.glob("ModelNet40/*/*/*.npy"))
    if not files:
        raise FileNotFoundError(f"no ModelNet40/<class>/<split>/*.npy under {root}")
    for k, out in enumerate(out_dirs):
        chunk = files[k :: len(out_dirs)]
        rel = [str(f.relative_to(root)) for f in chunk]
        points = np.stack([quantize(np.load(f), r) for f, r in zip(chunk, rel)])
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "modelnet40.npz", paths=np.array(rel), points=points)
        meta = {"part": k, "parts": len(out_dirs), "shapes": len(rel), "total_shapes": len(files),
                "names": (root / NAMES).read_text()}  # fmt: skip
        (out / "modelnet40.json").write_text(json.dumps(meta))
        print(f"{out}: {len(rel)} shapes, {points.nbytes / 1e6:.1f} MB")


def unpack(target: Path, part_dirs: list[Path]) -> None:
    """Write the clouds of every part under ``target`` in the npy layout; an error if a part is missing."""
    metas = [json.loads((d / "modelnet40.json").read_text()) for d in part_dirs]
    expected = metas[0]["parts"]
    if sorted(m["part"] for m in metas) != list(range(expected)):
        raise FileNotFoundError(f"need all {expected} parts, got parts {[m['part'] for m in metas]} from {part_dirs}")
    (target / NAMES).parent.mkdir(parents=True, exist_ok=True)
    (target / NAMES).write_text(metas[0]["names"])
    count = 0
    for d in part_dirs:
        with np.load(d / "modelnet40.npz") as part:
            for rel, q in zip(part["paths"], part["points"]):
                path = target / str(rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, dequantize(q))
                count += 1
    if count != metas[0]["total_shapes"]:
        raise ValueError(f"unpacked {count} shapes, expected {metas[0]['total_shapes']}")
    print(f"{target}: {count} shapes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["pack", "unpack"])
    parser.add_argument("source_or_target", type=Path, help="pack: the data folder; unpack: where to write")
    parser.add_argument("parts", type=Path, nargs="+", help="one folder per part")
    args = parser.parse_args()
    (pack if args.action == "pack" else unpack)(args.source_or_target, args.parts)


if __name__ == "__main__":
    main()
