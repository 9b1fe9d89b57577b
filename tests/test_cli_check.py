"""``geocanon check``: FAIL (exit 1) for non-equivariant models, PASS (exit 0) for wrapped ones, 2 on errors."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from geocanon.cli import main
from geocanon.testing import default_tolerance

FACTORIES = textwrap.dedent(
    '''
    """Factories of a user's project (written by the test)."""
    import torch
    from torch import nn

    import geocanon


    class Pooled(nn.Module):
        """Not equivariant: an MLP on raw coordinates, summed over points -> [B, 2]."""

        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))

        def forward(self, pos, mask=None):
            return self.net(pos).sum(1)


    class Velocity(nn.Module):
        """Not equivariant: per-point vectors [B, N, 3] from positions, velocities and charges."""

        def __init__(self):
            super().__init__()
            self.net = nn.Linear(7, 3)

        def forward(self, pos, vel, charge, mask=None):
            return self.net(torch.cat([pos, vel, charge], -1)) + vel


    def broken():
        return Pooled()


    def wrapped_learned():
        canon = geocanon.E3nnCanonicalizer("E3", hidden_mul=4, k=6, num_points=16, layers=1)
        return geocanon.Canonicalized(Pooled(), canon)


    def wrapped_pca():
        return geocanon.Canonicalized(Pooled(), geocanon.PCACanonicalizer("E3"))


    def velocity_bare():
        return Velocity()


    def velocity_wrapped():
        return geocanon.Canonicalized(
            Velocity(), geocanon.PCACanonicalizer("E3"), output="vector", vector_features=["vel"],
            scalar_features=["charge"],
        )


    def not_a_module():
        return 3


    def raises():
        raise RuntimeError("cannot build this model")


    class Pair(nn.Module):
        def forward(self, pos):
            return pos.sum(1), pos.mean(1)


    def pair():
        return Pair()


    class NaNs(nn.Module):
        def forward(self, pos, mask=None):
            return pos.sum(1) * float("nan")


    def nans():
        return NaNs()
    '''
)


@pytest.fixture
def factories(tmp_path) -> Path:
    path = tmp_path / "user_models.py"
    path.write_text(FACTORIES)
    return path


def run_check(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["check", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def reported_error(out: str) -> float:
    return float(re.search(r"error:\s+(\S+)", out).group(1))


def test_non_equivariant_model_fails(factories, capsys):
    code, out, _ = run_check(capsys, f"{factories}:broken", "--trials", "2", "--points", "16")
    assert code == 1
    assert out.strip().endswith("FAIL")
    assert reported_error(out) > 1e-2


def test_wrapped_learned_model_passes_in_float64(factories, capsys):
    code, out, _ = run_check(capsys, f"{factories}:wrapped_learned", "--float64", "--trials", "3", "--points", "24")
    assert code == 0, out
    assert out.strip().endswith("PASS")
    assert reported_error(out) < default_tolerance(torch.float64)
    assert "float64" in out and "Canonicalized" in out
    assert torch.get_default_dtype() == torch.float32  # restored


def test_wrapped_pca_model_passes_in_float32_with_every_group(factories, capsys):
    for group in ("SO3", "O3", "SE3", "E3"):
        code, out, _ = run_check(capsys, f"{factories}:wrapped_pca", "--group", group, "--trials", "2", "--points", "16")
        assert code == 0, (group, out)
        assert reported_error(out) < default_tolerance(torch.float32)


def test_vector_outputs_with_named_features(factories, capsys):
    features = ["--vectors", "vel", "--scalars", "charge:1", "--output", "vector", "--trials", "2", "--points", "16"]
    code, out, _ = run_check(capsys, f"{factories}:velocity_wrapped", *features)
    assert code == 0, out
    assert "vel [3-vector]" in out and "charge [1 scalars]" in out
    assert run_check(capsys, f"{factories}:velocity_bare", *features)[0] == 1
    # the declared output type matters: vectors do not translate, positions would
    wrong = [f if f != "vector" else "position" for f in features]
    assert run_check(capsys, f"{factories}:velocity_wrapped", *wrong)[0] == 1


def test_a_model_returning_nan_fails(factories, capsys):
    code, out, _ = run_check(capsys, f"{factories}:nans", "--trials", "1", "--points", "8")
    assert code == 1 and out.strip().endswith("FAIL"), out
    assert "error:  inf" in out and "contains NaN/Inf" in out


def test_module_form_imports_from_the_current_folder(factories, capsys, monkeypatch):
    monkeypatch.chdir(factories.parent)
    monkeypatch.delitem(sys.modules, "user_models", raising=False)
    code, out, _ = run_check(capsys, "user_models:broken", "--trials", "1", "--points", "8", "--clouds", "2")
    assert code == 1 and "FAIL" in out
    sys.modules.pop("user_models", None)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_colon_here", "expected MODULE:FACTORY"),
        ("missing_dir/nothing.py:make", "does not exist"),
        ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
        ("{factories}:nope", "has no attribute 'nope'"),
        ("{factories}:not_a_module", "returned a int, expected a torch.nn.Module"),
        ("{factories}:raises", "cannot build this model"),
        ("{factories}:pair", "the model returned a tuple; geocanon check needs a single tensor"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(factories, capsys, target, message):
    code, out, err = run_check(capsys, target.format(factories=factories), "--trials", "1")
    assert code == 2
    assert err.startswith("geocanon: error:") and err.count("\n") == 1 and message in err, err
    assert "PASS" not in out and "FAIL" not in out


def test_bad_feature_arguments(factories, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["check", f"{factories}:wrapped_pca", "--scalars", "charge"])
    assert exc.value.code == 2
    assert "expected NAME:DIM" in capsys.readouterr().err
    code, _, err = run_check(capsys, f"{factories}:wrapped_pca", "--vectors", "v", "--scalars", "v:2")
    assert code == 2 and "given more than once" in err


def test_seed_makes_the_check_reproducible(factories, capsys):
    args = [f"{factories}:broken", "--trials", "2", "--points", "16"]
    first = reported_error(run_check(capsys, *args)[1])
    assert reported_error(run_check(capsys, *args)[1]) == first  # same model initialisation and inputs
    assert reported_error(run_check(capsys, *args, "--seed", "1")[1]) != first
