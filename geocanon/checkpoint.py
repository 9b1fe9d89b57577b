"""One-file checkpoints: a model's build specification plus its weights.

A *spec* is a JSON-able dict ``{"name": <registered name>, "config": {...}}``; composite models
nest specs (``Canonicalized`` holds a backbone spec and a canonicalizer spec). :func:`build` turns a
spec into a module, :func:`save` writes ``{"format", "version", "spec", "state_dict", "meta"}`` with
``torch.save`` (atomically), and :func:`load` rebuilds the module from any such file — the benchmarks,
``geocanon adapt`` and ``geocanon canonicalize --model`` all share it.

float64 note: e3nn modules are built in the current default dtype; load under
``torch.set_default_dtype(torch.float64)`` to get an exactly equivariant float64 model (also from a
float32 checkpoint: the rebuilt float64 constants are kept, the weights are cast).
"""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["REGISTRY", "build", "save", "load", "spec_of"]

FORMAT = "geocanon-checkpoint"
VERSION = 1

#: name -> "module:attribute" of the class built with ``cls(**config)``
REGISTRY: dict[str, str] = {
    "e3nn": "geocanon.canonicalizers.learned:E3nnCanonicalizer",
    "pca": "geocanon.canonicalizers.pca:PCACanonicalizer",
    "identity": "geocanon.canonicalizers.identity:IdentityCanonicalizer",
    "pointnet": "geocanon.nn.pointnet:PointNet",
    "dgcnn": "geocanon.nn.dgcnn:DGCNN",
    "nbody_gnn": "geocanon.nn.gnn:NBodyGNN",
    "egnn": "geocanon.nn.egnn:EGNN",
    "linear_velocity": "geocanon.nn.linear:ConstantVelocity",
    "energy_gnn": "geocanon.nn.energy:EnergyGNN",
    "energy_mlp": "geocanon.nn.energy:EnergyMLP",
    "schnet": "geocanon.nn.schnet:SchNetEnergy",
    "molecular_potential": "geocanon.nn.energy:MolecularPotential",
    "third_axis_averaged": "geocanon.nn.candidates:ThirdAxisAveraged",
}

# composite models whose config holds nested specs
_COMPOSITES = {"canonicalized", "comoving", "ensemble", "frame_averaged", "octahedral_choice", "pose_search", "regressed_orientation"}


def _resolve(name: str) -> type[nn.Module]:
    if name not in REGISTRY:
        raise ValueError(f"unknown model name {name!r}; known: {sorted(REGISTRY) + sorted(_COMPOSITES)}")
    module, attr = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attr)


def build(spec: dict[str, Any]) -> nn.Module:
    """Build a module from ``{"name": ..., "config": {...}}``; the spec is kept as ``module.geocanon_spec``."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"a model spec must be a dict with a 'name', got {spec!r}")
    name, config = spec["name"], dict(spec.get("config", {}))
    if name == "canonicalized":
        from .wrap import Canonicalized

        module: nn.Module = Canonicalized(build(config.pop("backbone")), build(config.pop("canonicalizer")), **config)
    elif name == "octahedral_choice":
        from .canonicalizers.choice import OctahedralChoice

        module = OctahedralChoice(build(config.pop("base")), **config)
    elif name == "pose_search":
        from .canonicalizers.search import PoseSearch

        module = PoseSearch(build(config.pop("base")), **config)
    elif name == "regressed_orientation":
        from .canonicalizers.orientation import RegressedOrientation

        module = RegressedOrientation(build(config.pop("base")), **config)
    elif name == "comoving":
        from .wrap import Comoving

        module = Comoving(build(config.pop("model")), **config)
    elif name == "ensemble":
        from .wrap import Ensemble

        module = Ensemble([build(member) for member in config.pop("members")], **config)
    elif name == "frame_averaged":
        from .wrap import FrameAveraged

        module = FrameAveraged(build(config.pop("backbone")), **config)
    else:
        module = _resolve(name)(**config)
    module.geocanon_spec = spec
    return module


def spec_of(module: nn.Module) -> dict[str, Any]:
    """The spec a module was built from (raises if it was not built by :func:`build`)."""
    spec = getattr(module, "geocanon_spec", None)
    if spec is None:
        raise ValueError(f"{type(module).__name__} was not built with geocanon.checkpoint.build; cannot save its spec")
    return spec


def save(path: str | Path, module: nn.Module, meta: dict[str, Any] | None = None) -> Path:
    """Write ``module`` (built by :func:`build`) and ``meta`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "spec": spec_of(module),
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "meta": meta or {},
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _keep_precise_constants(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state``, except for buffers the rebuild reproduced exactly in a more precise dtype.

    e3nn stores its Wigner-3j constants as buffers: loading a float32 checkpoint into a module
    rebuilt under float64 would overwrite the exact float64 constants with float32-rounded ones
    (equivariance error ~1e-9 instead of ~1e-15). Learned buffers (BatchNorm statistics) differ
    from their rebuilt initial values and are loaded as usual.
    """
    own = dict(module.named_buffers())
    kept = dict(state)
    for name, stored in state.items():
        current = own.get(name)
        if (
            current is not None
            and current.is_floating_point()
            and stored.is_floating_point()
            and current.shape == stored.shape
            and torch.finfo(current.dtype).bits > torch.finfo(stored.dtype).bits
            and torch.equal(current.to(stored.dtype), stored.to(current.device))
        ):
            kept[name] = current
    return kept


def load(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the module stored at ``path``; returns (module in eval mode, meta)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises many types for a corrupt file
        raise ValueError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a geocanon checkpoint (expected format {FORMAT!r})")
    if not isinstance(payload.get("version"), int) or payload["version"] > VERSION:
        raise ValueError(f"checkpoint {path} has version {payload.get('version')!r}; this geocanon reads up to {VERSION}")
    missing = [key for key in ("spec", "state_dict") if key not in payload]
    if missing:
        raise ValueError(f"checkpoint {path} is incomplete: no {' or '.join(missing)}")
    try:
        module = build(payload["spec"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {path}: cannot rebuild its model from spec {payload['spec']!r} ({err})") from err
    try:
        module.load_state_dict(_keep_precise_constants(module, payload["state_dict"]))
    except RuntimeError as err:  # missing/unexpected keys or shape mismatches
        first = str(err).strip().splitlines()
        raise ValueError(f"checkpoint {path}: its weights do not match its spec ({' '.join(first[:2])[:300]})") from err
    module.eval()
    return module, payload.get("meta", {})
