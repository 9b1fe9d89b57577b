"""Benchmark results: JSON + Markdown under ``benchmarks/results/`` with provenance.

Every file records the exact command, the seed(s), the git commit (with a ``-dirty`` mark when the
tree had uncommitted changes), the hardware, the date and the wall time.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

__all__ = ["provenance", "write_results", "markdown_table", "hardware", "RESULTS_DIR"]

RESULTS_DIR = Path("benchmarks") / "results"


#: folders that hold only what benchmarks write: their changes do not make the code of a run differ from its commit
OUTPUT_DIRS = ("benchmarks/results", "benchmarks/checkpoints")


def _git_commit() -> str:
    """HEAD of the repository, ``-dirty`` when tracked files outside :data:`OUTPUT_DIRS` differ from it (a run's
    own results and checkpoints, written before its provenance, do not count); in a copy without ``.git`` (a GPU
    machine's copy of the working tree), ``$GEOCANON_COMMIT`` as the caller states it, else "unknown"."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        outputs = [f":(top,exclude){folder}" for folder in OUTPUT_DIRS]
        status = ["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)", *outputs]
        dirty = subprocess.run(status, capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("GEOCANON_COMMIT", "unknown")


def hardware() -> str:
    """One line: CPU model and cores (or GPU name), torch threads."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def provenance(wall_time_s: float | None = None, seeds: list[int] | None = None) -> dict[str, Any]:
    """Command, commit, hardware, date, wall time and versions of this run."""
    return {
        "command": "geocanon " + " ".join(sys.argv[1:]) if Path(sys.argv[0]).name == "geocanon" else " ".join([Path(sys.executable).name] + sys.argv),
        "commit": _git_commit(),
        "hardware": hardware(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": wall_time_s,
        "seeds": seeds,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A GitHub Markdown table of ``rows`` restricted to ``columns`` (floats to 4 significant digits)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def write_results(stem: str | Path, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``stem.json`` (payload) and ``stem.md`` (markdown + provenance) atomically."""
    stem = Path(stem)
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    _atomic_write(json_path, json.dumps(payload, indent=2, default=float) + "\n")
    meta = payload.get("provenance", {})
    footer = "\n\n" + "\n".join(f"- **{k}**: `{v}`" for k, v in meta.items() if k != "versions")
    _atomic_write(md_path, markdown.rstrip() + footer + "\n")
    return json_path, md_path
