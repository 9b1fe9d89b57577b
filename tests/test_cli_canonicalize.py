"""``geocanon canonicalize`` on files the tests write: every format, folders, failures, exactness."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import torch

from geocanon import checkpoint, io
from geocanon.cli import build_parser, main
from geocanon.frames import random_group_element

MODEL_SPEC = {"name": "e3nn", "config": {"group": "SE3", "hidden_mul": 4, "k": 6, "num_points": 32}}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A small learned SE3 canonicalizer with random weights (equivariance holds regardless)."""
    return checkpoint.save(tmp_path_factory.mktemp("ckpt") / "canon.pt", checkpoint.build(MODEL_SPEC))


def skewed_cloud(n: int, seed: int) -> np.ndarray:
    """[n, 3] with distinct variances and non-zero third moments (a generic cloud for PCA too)."""
    return np.random.default_rng(seed).exponential(size=(n, 3)) * [3.0, 2.0, 1.0] + [1.0, -2.0, 0.5]


def hull_mesh(seed: int) -> o3d.geometry.TriangleMesh:
    """An irregular closed mesh: the convex hull of a skewed cloud."""
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(skewed_cloud(40, seed)))
    mesh, _ = pcd.compute_convex_hull()
    mesh.orient_triangles()
    return mesh


def write_cloud(path: Path, points: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert o3d.io.write_point_cloud(str(path), o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points)))
    return path


def write_mesh(path: Path, mesh: o3d.geometry.TriangleMesh) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".stl":
        mesh = o3d.geometry.TriangleMesh(mesh).compute_triangle_normals()
    assert o3d.io.write_triangle_mesh(str(path), mesh)
    return path


def moved(points: np.ndarray, rotation: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``P @ Q.T + s``."""
    return points @ rotation.T + shift


def corners(geometry) -> np.ndarray:
    """Points of a cloud [N, 3], or the corners of a mesh's triangles [F, 3, 3] in winding order."""
    if isinstance(geometry, o3d.geometry.TriangleMesh):
        return np.asarray(geometry.vertices)[np.asarray(geometry.triangles)]
    return np.asarray(geometry.points)


def frame_of(output: Path) -> dict:
    return json.loads(output.with_name(output.name + ".frame.json").read_text())


def test_every_format_in_a_folder_tree(tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    points = skewed_cloud(60, 0)
    mesh = hull_mesh(1)
    for ext in (".ply", ".pcd", ".xyz", ".pts"):
        write_cloud(src / f"cloud{ext}", points)
    for ext in (".off", ".obj", ".stl"):
        write_mesh(src / "meshes" / f"mesh{ext}", mesh)
    write_mesh(src / "meshes" / "deep" / "mesh_as.ply", mesh)
    (src / "notes.txt").write_text("not a cloud: ignored when found in a folder")

    assert main(["canonicalize", str(src), "-o", str(out), "--pca", "--group", "E3", "--points", "200"]) == 0
    captured = capsys.readouterr()
    assert "canonicalized 8 of 8 file(s)" in captured.out and captured.err == ""
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    expected = ["cloud.pcd", "cloud.ply", "cloud.pts", "cloud.xyz", "meshes/deep/mesh_as.ply", "meshes/mesh.obj",
                "meshes/mesh.off", "meshes/mesh.stl"]
    assert written == sorted(expected + [e + ".frame.json" for e in expected])

    for name in expected:
        original, canonical = io.read_geometry(src / name), io.read_geometry(out / name)
        assert type(original) is type(canonical), name
        frame = frame_of(out / name)
        rot, shift = np.array(frame["rotation"]), np.array(frame["translation"])
        assert frame["group"] == "E3" and frame["model"] == "pca"
        assert np.allclose(rot.T @ rot, np.eye(3), atol=1e-12)
        assert abs(frame["determinant"]) == pytest.approx(1.0)
        expect = (corners(original) - shift) @ rot
        if io.is_mesh(original):
            assert frame["sampling"] == {"points": 200, "seed": 0} and frame["points_used"] == 200
            if frame["determinant"] < 0:  # a reflection reverses the triangles' winding
                expect = expect[:, ::-1]
        else:
            assert frame["sampling"] is None and frame["points_used"] == 60
        # .off/.obj store 6 significant digits and .pcd float32; .ply/.xyz/.pts keep ~1e-10
        tol = 1e-9 if name.endswith((".ply", ".xyz", ".pts")) else 1e-4
        np.testing.assert_allclose(corners(canonical), expect, atol=tol * np.abs(expect).max(), err_msg=name)


def test_reflection_keeps_mesh_normals_outward():
    mesh = hull_mesh(2)
    mesh.compute_triangle_normals()
    reflection = np.diag([1.0, 1.0, -1.0]) @ np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    reflection *= np.sign(np.linalg.det(reflection)) * -1  # det = -1
    canonical = io.to_canonical(mesh, reflection, np.array([0.3, -0.2, 1.0]))
    rotated_normals = np.asarray(mesh.triangle_normals) @ reflection
    np.testing.assert_allclose(np.asarray(canonical.triangle_normals), rotated_normals, atol=1e-12)
    recomputed = o3d.geometry.TriangleMesh(canonical).compute_triangle_normals()
    np.testing.assert_allclose(np.asarray(recomputed.triangle_normals), rotated_normals, atol=1e-9)


def test_learned_frames_are_exact_end_to_end_through_files(tmp_path, model_file, capsys):
    """A file and a rotated + translated copy give the same canonical output (model rebuilt in float64)."""
    g = random_group_element("SE3", 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    q, s = g.rotation.numpy(), g.translation.numpy() * 3
    points, mesh = skewed_cloud(80, 3), hull_mesh(4)
    src = tmp_path / "in"
    write_cloud(src / "a.ply", points)
    write_cloud(src / "a_moved.ply", moved(points, q[0], s[0]))
    write_cloud(src / "b.pcd", points)  # float32 storage
    write_cloud(src / "b_moved.pcd", moved(points, q[1], s[1]))
    write_mesh(src / "c.ply", mesh)
    moved_mesh = o3d.geometry.TriangleMesh(mesh)
    moved_mesh.vertices = o3d.utility.Vector3dVector(moved(np.asarray(mesh.vertices), q[2], s[2]))
    write_mesh(src / "c_moved.ply", moved_mesh)

    out = tmp_path / "out"
    assert main(["canonicalize", str(src), "-o", str(out), "--model", str(model_file), "--points", "300"]) == 0
    assert "canonicalized 6 of 6" in capsys.readouterr().out
    for i, (name, tol) in enumerate([("a", 1e-9), ("b", 1e-4), ("c", 1e-4)]):
        ext = ".pcd" if name == "b" else ".ply"
        first, second = out / f"{name}{ext}", out / f"{name}_moved{ext}"
        c1, c2 = corners(io.read_geometry(first)), corners(io.read_geometry(second))
        np.testing.assert_allclose(c2, c1, atol=tol * np.abs(c1).max(), err_msg=name)
        f1, f2 = frame_of(first), frame_of(second)
        np.testing.assert_allclose(np.array(f2["rotation"]), q[i] @ np.array(f1["rotation"]), atol=tol)
        np.testing.assert_allclose(np.array(f2["translation"]), q[i] @ np.array(f1["translation"]) + s[i],
                                   atol=tol * 10)
        assert f1["model"] == {"checkpoint": str(model_file.resolve()), "spec": MODEL_SPEC}
    # the frames really are learned ones, not PCA's: the same cloud gets another frame with --pca
    assert main(["canonicalize", str(src / "a.ply"), "-o", str(tmp_path / "pca"), "--pca"]) == 0
    learned, pca = np.array(frame_of(out / "a.ply")["rotation"]), np.array(frame_of(tmp_path / "pca" / "a.ply")["rotation"])
    assert np.abs(learned - pca).max() > 1e-2


def test_bad_files_are_reported_and_skipped(tmp_path, capfd):
    """One line per bad file and nothing else (capfd: open3d's native warnings would show up here)."""
    src = tmp_path / "in"
    write_cloud(src / "good.xyz", skewed_cloud(30, 5))
    (src / "corrupt.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 100\n")
    (src / "empty.xyz").write_text("")
    (src / "nan.xyz").write_text("0 0 0\n1 nan 0\n0 1 1\n2 2 0\n")
    (src / "line.xyz").write_text("0 0 0\n1 1 1\n2 2 2\n3 3 3\n")
    (src / "flat.off").write_text("OFF\n4 2 0\n0 0 0\n1 0 0\n2 0 0\n3 0 0\n3 0 1 2\n3 1 2 3\n")
    (src / "truncated.off").write_text("OFF\n4 2 0\n0 0 0\n1 0 0\n")
    out = tmp_path / "out"
    assert main(["canonicalize", str(src), str(tmp_path / "missing.ply"), "-o", str(out), "--pca"]) == 1
    captured = capfd.readouterr()
    reasons = {
        "corrupt.ply": "no points could be read",
        "empty.xyz": "no points could be read",
        "nan.xyz": "1 of 4 points have NaN or Inf",
        "line.xyz": "collinear",
        "flat.off": "zero surface area",
        "truncated.off": "truncated",
        "missing.ply": "no such file",
    }
    lines = captured.err.strip().splitlines()
    assert len(lines) == len(reasons)
    for name, reason in reasons.items():
        assert any(name in line and reason in line and line.startswith("skipped ") for line in lines), (name, lines)
    assert "canonicalized 1 of 8 file(s)" in captured.out and "7 skipped" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["good.xyz", "good.xyz.frame.json"]


def test_modelnet_off_header_quirk(tmp_path):
    """Real ModelNet files glue the counts to "OFF"; open3d rejects them, geocanon reads them."""
    path = tmp_path / "bathtub.off"
    path.write_text("OFF4 2 0\r\n0 0 0 \r\n1 0 0\r\n0 2 0\r\n0 0 3\r\n3 0 1 2\r\n3 0 1 3\r\n")
    mesh = io.read_geometry(path)
    assert io.is_mesh(mesh) and len(mesh.vertices) == 4 and len(mesh.triangles) == 2
    np.testing.assert_array_equal(np.asarray(mesh.vertices)[3], [0, 0, 3])


def test_existing_outputs_are_kept_unless_overwrite(tmp_path, capsys):
    source = write_cloud(tmp_path / "c.xyz", skewed_cloud(30, 6))
    out = tmp_path / "out"
    args = ["canonicalize", str(source), "-o", str(out), "--pca"]
    assert main(args) == 0
    (out / "c.xyz").write_text("user data\n")
    capsys.readouterr()
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "c.xyz" in captured.err and "already exist (use --overwrite to replace)" in captured.err
    assert (out / "c.xyz").read_text() == "user data\n"
    assert main(args + ["--overwrite"]) == 0
    assert len(io.read_geometry(out / "c.xyz").points) == 30
    # never over the input itself, even with --overwrite
    assert main(["canonicalize", str(source), "-o", str(tmp_path), "--pca", "--overwrite"]) == 1
    assert "would replace the input" in capsys.readouterr().err


def test_output_folder_inside_input_folder_is_not_read_back(tmp_path, capsys):
    src = tmp_path / "data"
    write_cloud(src / "a.xyz", skewed_cloud(20, 7))
    write_cloud(src / "b.xyz", skewed_cloud(20, 8))
    for _ in range(2):
        assert main(["canonicalize", str(src), "-o", str(src / "canon"), "--pca", "--overwrite"]) == 0
        assert "canonicalized 2 of 2" in capsys.readouterr().out


def test_two_inputs_with_the_same_output_name(tmp_path, capsys):
    first = write_cloud(tmp_path / "x" / "c.xyz", skewed_cloud(20, 9))
    second = write_cloud(tmp_path / "y" / "c.xyz", skewed_cloud(20, 10))
    assert main(["canonicalize", str(first), str(second), "-o", str(tmp_path / "out"), "--pca"]) == 1
    assert "already the output of" in capsys.readouterr().err


def test_model_choice_errors(tmp_path, capsys):
    source = write_cloud(tmp_path / "c.xyz", skewed_cloud(20, 11))
    base = ["canonicalize", str(source), "-o", str(tmp_path / "out")]

    def one_line_error(extra: list[str], *needles: str) -> None:
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("geocanon: error:") and "\n" not in err, err
        for needle in needles:
            assert needle in err, err

    one_line_error([], "--model", "--pca", "no default learned model")
    one_line_error(["--model", str(tmp_path / "none.pt")], "none.pt does not exist")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    one_line_error(["--model", str(tmp_path / "bad.pt")], "bad.pt cannot be read")
    backbone = checkpoint.save(tmp_path / "pointnet.pt", checkpoint.build({"name": "pointnet", "config": {"num_classes": 2, "width_scale": 0.05}}))
    one_line_error(["--model", str(backbone)], "holds a PointNet", "neither a Canonicalizer")
    pca_ckpt = checkpoint.save(tmp_path / "pca.pt", checkpoint.build({"name": "pca", "config": {"group": "SO3"}}))
    one_line_error(["--model", str(pca_ckpt), "--group", "E3"], "SO3 canonicalizer but --group E3")
    with pytest.raises(SystemExit) as exc:
        main(base + ["--pca", "--model", str(pca_ckpt)])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_model_holding_a_canonicalizer(tmp_path, capsys):
    """A Canonicalized checkpoint: its .canonicalizer computes the frames; the JSON records the whole spec."""
    spec = {
        "name": "canonicalized",
        "config": {
            "backbone": {"name": "pointnet", "config": {"num_classes": 2, "width_scale": 0.05}},
            "canonicalizer": {"name": "pca", "config": {"group": "SO3"}},
        },
    }
    ckpt = checkpoint.save(tmp_path / "wrapped.pt", checkpoint.build(spec))
    source = write_cloud(tmp_path / "c [1,2].ply", skewed_cloud(25, 12))  # brackets: the JSON layout keeps them
    assert main(["canonicalize", str(source), "-o", str(tmp_path / "out"), "--model", str(ckpt)]) == 0
    frame = frame_of(tmp_path / "out" / "c [1,2].ply")
    assert frame["input"] == str(source.resolve())
    assert frame["model"]["spec"] == spec and frame["group"] == "SO3"
    assert frame["translation"] == [0.0, 0.0, 0.0]  # SO3 rotates about the origin


def test_help_documents_every_option(capsys):
    parser = build_parser()
    commands = {a.dest: a for a in parser._actions}["command"].choices
    plot_kinds = {a.dest: a for a in commands["plot"]._actions}["kind"].choices
    for sub in (commands["canonicalize"], commands["check"], plot_kinds["clouds"], plot_kinds["curves"]):
        for action in sub._actions:
            assert action.help and action.help.strip(), (sub.prog, action.dest)
    with pytest.raises(SystemExit) as exc:
        main(["canonicalize", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for needle in ("--model", "--pca", "--group", "--points", "--seed", "--overwrite", "-o OUTDIR", *io.EXTENSIONS):
        assert needle in text, needle


def test_installed_entry_point_runs():
    """One call of the real executable (the rest run in-process for speed)."""
    exe = Path(sys.executable).with_name("geocanon")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "geocanon.cli"]
    result = subprocess.run(command + ["--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for name in ("canonicalize", "check", "plot"):
        assert name in result.stdout
