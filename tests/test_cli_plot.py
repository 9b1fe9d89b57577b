"""``geocanon plot clouds`` and ``geocanon plot curves`` on files the tests write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
from matplotlib.image import imread

from geocanon.cli import main
from geocanon.commands.plot import read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_real_png(path: Path, min_bytes: int = 5_000) -> np.ndarray:
    """A valid, non-trivial PNG: magic bytes, size, decodable, not a blank canvas."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes, len(data)
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels[..., :3].std() > 0.01  # something was drawn
    return pixels


def write_lightning_csv(path: Path, epochs: int, scale: float = 1.0) -> Path:
    """The layout of Lightning's CSVLogger: train and val rows alternate with blank cells."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = ["epoch,step,train/loss,val/loss,val/mse"]
    for e in range(epochs):
        rows.append(f"{e},{10 * e + 9},{scale / (e + 1):.6f},,")
        rows.append(f"{e},{10 * e + 9},,{1.5 * scale / (e + 1):.6f},{0.5 * scale / (e + 1):.6f}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_plot_clouds_before_and_after(tmp_path, capsys):
    rng = np.random.default_rng(0)
    cloud = tmp_path / "cloud.xyz"
    np.savetxt(cloud, rng.exponential(size=(80, 3)) * [3, 2, 1])
    hull, _ = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(rng.exponential(size=(30, 3)))).compute_convex_hull()
    assert o3d.io.write_triangle_mesh(str(tmp_path / "mesh.off"), hull)
    (tmp_path / "broken.ply").write_text("not a ply file")
    out = tmp_path / "pics" / "clouds.png"
    code = main(["plot", "clouds", str(cloud), str(tmp_path / "mesh.off"), str(tmp_path / "broken.ply"), "-o", str(out),
                 "--pca", "--group", "E3", "--points", "300", "--dpi", "50"])
    captured = capsys.readouterr()
    assert code == 1  # broken.ply was skipped, the others drawn
    assert "broken.ply" in captured.err and "wrote" in captured.out and "2 cloud(s)" in captured.out
    two_rows = assert_real_png(out)
    assert main(["plot", "clouds", str(cloud), "-o", str(tmp_path / "one.png"), "--pca", "--dpi", "50"]) == 0
    one_row = assert_real_png(tmp_path / "one.png")
    assert two_rows.shape[0] > 1.5 * one_row.shape[0]  # one row of panels per cloud


def test_plot_clouds_needs_a_canonicalizer(tmp_path, capsys):
    np.savetxt(tmp_path / "c.xyz", np.random.default_rng(1).normal(size=(20, 3)))
    assert main(["plot", "clouds", str(tmp_path / "c.xyz"), "-o", str(tmp_path / "x.png")]) == 2
    assert "--model CHECKPOINT" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_read_metrics_keeps_one_value_per_epoch(tmp_path):
    curves = read_metrics(write_lightning_csv(tmp_path / "metrics.csv", epochs=4))
    assert sorted(curves) == ["train/loss", "val/loss", "val/mse"]
    epochs, values = curves["val/loss"]
    assert epochs.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(values, [1.5, 0.75, 0.5, 0.375])


def test_plot_curves_from_run_dirs_and_csv(tmp_path, capsys):
    runs = tmp_path / "results"
    write_lightning_csv(runs / "pca" / "logs" / "version_0" / "metrics.csv", epochs=5)
    write_lightning_csv(runs / "learned" / "logs" / "version_0" / "metrics.csv", epochs=7, scale=0.7)
    extra = write_lightning_csv(tmp_path / "other.csv", epochs=3, scale=2.0)
    out = tmp_path / "curves.png"
    assert main(["plot", "curves", str(runs), str(extra), "-o", str(out), "--logy"]) == 0
    assert "3 run(s), up to 7 epochs" in capsys.readouterr().out
    assert_real_png(out)


def test_plot_curves_errors(tmp_path, capsys):
    (tmp_path / "empty_dir").mkdir()
    assert main(["plot", "curves", str(tmp_path / "empty_dir"), "-o", str(tmp_path / "x.png")]) == 2
    assert "no metrics.csv found" in capsys.readouterr().err
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    assert main(["plot", "curves", str(tmp_path / "bad.csv"), "-o", str(tmp_path / "x.png")]) == 2
    assert "no 'epoch' column" in capsys.readouterr().err
    negative = tmp_path / "neg.csv"
    negative.write_text("epoch,step,val/score\n0,1,-1.0\n")
    assert main(["plot", "curves", str(negative), "-o", str(tmp_path / "x.png"), "--logy"]) == 2
    assert "--logy needs positive values" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("kind", ["clouds", "curves"])
def test_plot_help(kind, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["plot", kind, "--help"])
    assert exc.value.code == 0
    assert "-o PNG" in capsys.readouterr().out
