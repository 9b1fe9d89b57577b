"""Pieces every benchmark module shares: configs from YAML, canonicalizer settings, timing and parameter counts."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml
from torch import nn

__all__ = ["CanonicalizerSettings", "config_file", "count_parameters", "hardware_overrides", "load_config", "mean_std", "time_alternating", "time_per_call"]

T = TypeVar("T")


@dataclass
class CanonicalizerSettings:
    """The :class:`~geocanon.E3nnCanonicalizer` fields every benchmark config shares (YAML keys ``canon_*``).

    A benchmark config inherits them (overriding defaults where it needs others) and adds what is its
    own (group, neighbourhood size, ...) through :meth:`e3nn_spec`'s keywords.
    """

    canon_hidden_mul: int = 8
    canon_layers: int = 2
    canon_lmax: int = 2
    canon_power_iterations: int = 0  # covariance refinement of the predicted axes (see E3nnCanonicalizer)
    canon_signs: str = "network"  # with power iterations: "network" or "third-moment" (see E3nnCanonicalizer)

    def e3nn_spec(self, **fixed: Any) -> dict[str, Any]:
        """Checkpoint spec (see :mod:`geocanon.checkpoint`) of an E3nnCanonicalizer: these settings + ``fixed``."""
        refine = (
            {"power_iterations": self.canon_power_iterations, "signs": self.canon_signs}
            if self.canon_power_iterations
            else {}
        )
        return {
            "name": "e3nn",
            "config": {
                "hidden_mul": self.canon_hidden_mul, "layers": self.canon_layers, "lmax": self.canon_lmax,
                **refine, **fixed,
            },
        }  # fmt: skip


def load_config(cls: type[T], path: str | Path | None, **overrides: Any) -> T:
    """Build dataclass ``cls`` from a YAML file (unknown keys are an error) and keyword overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping, got {type(loaded).__name__}")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}; known: {sorted(known)}")
    return cls(**values)


def config_file(args: argparse.Namespace, quick: Path, default: Path | None = None) -> Path | None:
    """The YAML a benchmark command reads: ``quick`` with ``--quick``, else ``--config``, else ``default``."""
    if args.quick and args.config:
        raise ValueError("use either --quick or --config, not both")
    return quick if args.quick else args.config or default


def hardware_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides from the shared command-line options (Lightning hardware, ``--no-progress``)."""
    return {
        "accelerator": args.accelerator,
        "devices": args.devices,
        "strategy": args.strategy,
        "num_nodes": args.num_nodes,
        "progress": False if args.no_progress else None,
    }


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def time_per_call(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds (after ``warmup`` calls), under ``torch.no_grad``."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_alternating(fns: Sequence[Callable[[], Any]], repeats: int = 5, warmup: int = 1) -> list[list[float]]:
    """Wall times in seconds of each ``fn()``, called in turn ``repeats`` times (after ``warmup`` rounds), under
    ``torch.no_grad``: ``result[i][r]`` is fn i in round r. Interleaving exposes all of them alike to a changing
    machine load, so per-round ratios are steadier than ratios of separate medians."""
    times: list[list[float]] = [[] for _ in fns]
    with torch.no_grad():
        for round_ in range(warmup + repeats):
            for fn, store in zip(fns, times):
                start = time.perf_counter()
                fn()
                if round_ >= warmup:
                    store.append(time.perf_counter() - start)
    return times


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
