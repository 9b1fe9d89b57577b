"""``geocanon check MODULE:FACTORY``: measure a model's equivariance error, for CI.

The factory is a callable taking no arguments and returning an ``nn.Module``, given as
``package.module:function`` (importable; the current folder is on the import path, as with
``python -m``) or ``path/to/file.py:function``. The model is put in eval mode (dropout off) and
called as ``model(pos, **vectors, **scalars)`` on random Gaussian clouds ``pos`` [clouds, points, 3]
with random per-point features ``--vectors NAME`` [clouds, points, 3] and ``--scalars NAME:DIM``
[clouds, points, DIM]; ``geocanon.testing.equivariance_error`` then compares ``f(g·x)`` with
``g·f(x)`` over ``--trials`` random group elements (one per cloud), according to ``--output``:
invariant ``f(x)``, vector ``f(x) @ Q.T`` or position ``f(x) @ Q.T + s``.

Prints the error and PASS or FAIL. Exit code: 0 PASS, 1 FAIL (error above ``--tol``), 2 the check
could not run (import error, the model raised, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from .canonicalize import GROUPS, positive_int

__all__ = ["register", "load_factory", "run"]

OUTPUTS = ("invariant", "vector", "position")


@contextlib.contextmanager
def _on_path(folder: Path) -> Iterator[None]:
    """Put ``folder`` first on ``sys.path`` (as ``python script.py`` / ``python -m`` do) for a while."""
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        sys.path.remove(entry)


def load_factory(target: str) -> Callable[[], object]:
    """Resolve ``"package.module:name"`` or ``"path/to/file.py:name"`` to the named callable.

    Raises:
        ValueError: no ``:`` in ``target``, a missing file or module, or a name that is missing or
        not callable.
    """
    location, sep, name = target.rpartition(":")
    if not sep or not location or not name:
        raise ValueError(f"expected MODULE:FACTORY or path/to/file.py:FACTORY, got {target!r}")
    if location.endswith(".py") or "/" in location or "\\" in location:
        path = Path(location)
        if not path.is_file():
            raise ValueError(f"factory file {path} does not exist")
        module_name = f"geocanon_check_{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ValueError(f"cannot import {path} as a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look modules up here
        with _on_path(path.resolve().parent):
            spec.loader.exec_module(module)
    else:
        with _on_path(Path.cwd()):
            try:
                module = importlib.import_module(location)
            except ModuleNotFoundError as err:
                raise ValueError(f"cannot import module {location!r} ({err})") from None
    factory = getattr(module, name, None)
    if factory is None:
        raise ValueError(f"{location} has no attribute {name!r}")
    if not callable(factory):
        raise ValueError(f"{location}:{name} is a {type(factory).__name__}, not a callable")
    return factory


def _scalar_spec(text: str) -> tuple[str, int]:
    """argparse type for ``NAME:DIM``."""
    name, sep, dim = text.partition(":")
    if not sep or not name or not dim.isdigit() or int(dim) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME:DIM with DIM >= 1, got {text!r}")
    return name, int(dim)


def run(args: argparse.Namespace) -> int:
    """Build the model, measure its equivariance error, print a verdict; returns 0 (PASS) or 1 (FAIL)."""
    import torch
    from torch import nn

    from ..testing import default_tolerance, equivariance_error

    names = list(args.vectors) + [n for n, _ in args.scalars]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"feature name(s) {duplicated} given more than once in --vectors/--scalars")
    dtype = torch.float64 if args.float64 else torch.float32
    tol = args.tol if args.tol is not None else default_tolerance(dtype)
    factory = load_factory(args.factory)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # e3nn modules bake constants in the default dtype when built
    try:
        torch.manual_seed(args.seed)  # a factory's random initialisation is reproducible too
        model = factory()
        if not isinstance(model, nn.Module):
            raise ValueError(f"{args.factory} returned a {type(model).__name__}, expected a torch.nn.Module")
        model.eval()
        generator = torch.Generator().manual_seed(args.seed)
        shape = (args.clouds, args.points)
        pos = torch.randn(*shape, 3, generator=generator)
        vectors = {n: torch.randn(*shape, 3, generator=generator) for n in args.vectors}
        scalars = {n: torch.randn(*shape, d, generator=generator) for n, d in args.scalars}
        with torch.no_grad():
            out = model(pos, **vectors, **scalars)
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"the model returned a {type(out).__name__}; geocanon check needs a single tensor")
        error = equivariance_error(
            model, pos, group=args.group, output=args.output, vectors=vectors, scalars=scalars,
            trials=args.trials, seed=args.seed, translation_scale=args.translation_scale,
        )
    finally:
        torch.set_default_dtype(previous)
    features = ", ".join([f"{n} [3-vector]" for n in args.vectors] + [f"{n} [{d} scalars]" for n, d in args.scalars])
    passed = error <= tol  # equivariance_error is inf for NaN/Inf outputs
    print(f"model:  {args.factory} -> {type(model).__name__} ({sum(p.numel() for p in model.parameters())} parameters)")
    print(f"input:  {args.clouds} clouds x {args.points} points, {'float64' if args.float64 else 'float32'}"
          + (f", features {features}" if features else ""))
    print(f"check:  {args.output} output under {args.group}, {args.trials} random elements (seed {args.seed})")
    finite = "" if torch.isfinite(out).all() else " (the model's output contains NaN/Inf)"
    print(f"error:  {error:.3g} (tolerance {tol:g}){finite}")
    print("PASS" if passed else "FAIL")
    return 0 if passed else 1


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``check`` sub-command to the ``geocanon`` parser."""
    parser = sub.add_parser(
        "check",
        help="measure a model's equivariance error (PASS/FAIL exit code for CI)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "factory", metavar="MODULE:FACTORY",
        help="a no-argument callable returning the nn.Module: package.module:make_model or path/to/file.py:make_model",
    )
    parser.add_argument("--group", choices=GROUPS, default="E3",
                        help="group to check: SO3, O3 (reflections), SE3, E3 (translations) (default E3)")
    parser.add_argument("--output", choices=OUTPUTS, default="invariant",
                        help="how the output should transform: invariant, vector (rotates) or position (rotates and "
                             "translates) (default invariant)")
    parser.add_argument("--points", type=positive_int, default=64, help="points per random cloud (default 64)")
    parser.add_argument("--clouds", type=positive_int, default=4, help="random clouds per batch (default 4)")
    parser.add_argument("--trials", type=positive_int, default=8, help="random group elements tried (default 8)")
    parser.add_argument("--tol", type=float, default=None,
                        help="largest relative error that passes (default 2e-5, or 1e-10 with --float64)")
    parser.add_argument("--float64", action="store_true",
                        help="build and run the model under torch.set_default_dtype(torch.float64)")
    parser.add_argument("--vectors", nargs="+", action="extend", default=[], metavar="NAME",
                        help="per-point vector keyword inputs [clouds, points, 3], rotated with the cloud")
    parser.add_argument("--scalars", nargs="+", action="extend", default=[], type=_scalar_spec, metavar="NAME:DIM",
                        help="per-point invariant keyword inputs [clouds, points, DIM], left unchanged")
    parser.add_argument("--translation-scale", type=float, default=1.0,
                        help="standard deviation of the random translations (SE3/E3; default 1)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the model's initialisation (torch.manual_seed before the factory runs), the "
                             "clouds, features and group elements (default 0)")
    parser.set_defaults(func=run)
