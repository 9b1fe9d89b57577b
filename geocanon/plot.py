"""Pictures for the command line: clouds before/after canonicalization, and training curves.

Figures are plain ``matplotlib.figure.Figure`` objects drawn on the Agg canvas (no pyplot, no
display, no global backend state), so they work on headless machines and inside other programs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["FramedCloud", "draw_cloud", "clouds_figure", "curves_figure", "save_png"]

AXIS_COLORS = ("tab:red", "tab:green", "tab:blue")
STAGE_STYLES = {"train": "-", "val": "--", "test": ":"}


class FramedCloud(NamedTuple):
    """One cloud and its frame: ``points`` [N, 3], ``rotation`` R [3, 3] (columns = canonical axes),
    ``translation`` t [3]; ``name`` titles its row."""

    name: str
    points: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray


def draw_cloud(
    ax,
    points: np.ndarray,
    axes: np.ndarray,
    origin: np.ndarray,
    title: str,
    max_points: int = 2000,
) -> None:
    """Scatter a cloud on a 3D ``ax`` with three frame arrows.

    Args:
        ax: a matplotlib 3D axes (``projection="3d"``).
        points: [N, 3]; at most ``max_points`` of them (a fixed random subset) are drawn.
        axes: [3, 3]; column i is drawn as an arrow from ``origin`` (red, green, blue for 1, 2, 3).
        origin: [3], where the arrows start.
    """
    points = np.asarray(points, dtype=np.float64)
    origin = np.asarray(origin, dtype=np.float64)
    if len(points) > max_points:
        points = points[np.random.default_rng(0).choice(len(points), max_points, replace=False)]
    ax.scatter(points[:, 0], points[:, 1], points[:, 2], s=2, c="0.35", alpha=0.6, depthshade=False)
    length = 0.6 * float(np.linalg.norm(points - origin, axis=1).max())
    for i, color in enumerate(AXIS_COLORS):
        d = np.asarray(axes, dtype=np.float64)[:, i] * length
        ax.quiver(*origin, *d, color=color, linewidth=2, arrow_length_ratio=0.15)
        ax.text(*(origin + 1.1 * d), str(i + 1), color=color)
    # equal scale on the three axes, so rotations look like rotations
    everything = np.vstack([points, origin[None], origin + np.asarray(axes).T * length])
    centre = (everything.max(0) + everything.min(0)) / 2
    half = (everything.max(0) - everything.min(0)).max() / 2 or 1.0
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_zlim(centre[2] - half, centre[2] + half)
    ax.set_box_aspect((1, 1, 1))
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_zlabel("z")
    ax.set_title(title, fontsize=9)


def clouds_figure(clouds: Sequence[FramedCloud], max_points: int = 2000) -> Figure:
    """One row per cloud: the input with its frame's axes at t, and the canonical cloud
    ``(P - t) @ R`` with the identity axes at the origin.

    Args:
        clouds: at least one :class:`FramedCloud`.
        max_points: points drawn per panel at most.
    """
    if not clouds:
        raise ValueError("clouds_figure needs at least one cloud")
    height = 4.2 * len(clouds)
    fig = Figure(figsize=(9, height))
    FigureCanvasAgg(fig)
    # fixed margins (in inches): constrained layout measures every 3D tick label and doubles the drawing time
    fig.subplots_adjust(left=0.02, right=0.95, bottom=0.45 / height, top=1 - 0.55 / height, wspace=0.1, hspace=0.3)
    for row, cloud in enumerate(clouds):
        rotation = np.asarray(cloud.rotation, dtype=np.float64)
        translation = np.asarray(cloud.translation, dtype=np.float64)
        canonical = (np.asarray(cloud.points, dtype=np.float64) - translation) @ rotation
        det = np.linalg.det(rotation)
        left = fig.add_subplot(len(clouds), 2, 2 * row + 1, projection="3d")
        draw_cloud(left, cloud.points, rotation, translation, f"{cloud.name}\ninput, frame axes (det {det:+.0f})", max_points)
        right = fig.add_subplot(len(clouds), 2, 2 * row + 2, projection="3d")
        draw_cloud(right, canonical, np.eye(3), np.zeros(3), f"{cloud.name}\ncanonical (P - t) @ R", max_points)
    return fig


def _split_metric(column: str) -> tuple[str, str]:
    """``"val/loss"`` -> ("val", "loss"); a column without a stage -> ("", column)."""
    stage, sep, metric = column.partition("/")
    return (stage, metric) if sep else ("", column)


def curves_figure(runs: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], logy: bool = False) -> Figure:
    """Training curves: one panel per metric, one colour per run, one line style per stage.

    Args:
        runs: run label -> {column such as "train/loss" or "val/mse": (epochs [E], values [E])}.
            Columns named ``stage/metric`` share the panel of ``metric`` (train solid, val dashed,
            test dotted); other columns get a panel of their own. "loss" comes first.
        logy: logarithmic value axes (for positive metrics such as losses).
    """
    metrics = sorted({_split_metric(c)[1] for curves in runs.values() for c in curves}, key=lambda m: (m != "loss", m))
    if not metrics:
        raise ValueError("curves_figure: no metric columns to plot")
    cols = min(3, len(metrics))
    nrows = -(-len(metrics) // cols)
    fig = Figure(figsize=(5 * cols, 3.6 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for k, metric in enumerate(metrics):
        ax = fig.add_subplot(nrows, cols, k + 1)
        for color, (label, curves) in zip(colors, runs.items()):
            for column, (epochs, values) in sorted(curves.items()):
                stage, name = _split_metric(column)
                if name != metric:
                    continue
                ax.plot(epochs, values, STAGE_STYLES.get(stage, "-."), color=color, marker="." if len(epochs) < 30 else None,
                        label=f"{label} {stage}".strip())
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def save_png(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parent folders created, an existing file replaced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path
