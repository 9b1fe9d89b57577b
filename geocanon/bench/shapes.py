"""The shape-classification benchmark: SyntheticShapes, ModelNet40 and ModelNet10 under rotations.

Methods, all trained by the same harness with the same data and budget:

* ``plain``: the backbone alone; ``augment``: the backbone trained with Haar-random SO(3) rotations;
* ``pca``: the backbone in the PCA frame (:class:`~geocanon.PCACanonicalizer`);
* ``learned`` / ``learned-o3``: the backbone in a learned frame (:class:`~geocanon.E3nnCanonicalizer`,
  group ``canon_group`` (SO3 by default) / O3 — O3 identifies mirror images, so it cannot tell
  SyntheticShapes' ``helix_left`` from ``helix_right``); with ``canon_regression`` it is wrapped in a
  :class:`~geocanon.RegressedOrientation`, whose rotation head the classification loss trains;
* ``frame-averaging``: :class:`~geocanon.FrameAveraged` over the 4 proper PCA sign frames.

Backbones: ``pointnet`` and ``dgcnn``. Protocols ``train/test``: ``z/z``, ``z/SO3``, ``SO3/SO3``, where
``z`` is a uniformly random rotation about the up (z) axis and ``SO3`` a Haar-random rotation. Training
draws fresh rotations every step; validation and test clouds are rotated once, deterministically
(:func:`rotate_clouds` with a fixed seed). One model is trained per (method, backbone, training
rotation) and evaluated on every test rotation, with two exact savings recorded in each row's
``train_rotation``: ``augment`` *is* the plain backbone trained with SO(3) rotations (whatever the
protocol), and the invariant methods (pca, learned, frame-averaging) see the same canonical input
whatever the training rotation, so (with ``share_invariant_training``) they are trained once.

Accuracies are in percent. Results go to ``<results>.json`` / ``.md`` as they come (``"complete"``
says whether every row is in), every trained model to ``<run_dir>/<key>/model.pt`` (a
:mod:`geocanon.checkpoint` file), and the best learned-canonicalized model of ``checkpoint_backbone`` (PointNet
unless set) to ``checkpoint``, with a
gallery of canonicalized test shapes and a confusion matrix beside the results.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from .. import checkpoint
from ..frames import random_rotation
from ..testing import equivariance_error, frame_sensitivity
from ..wrap import Canonicalized, check_train_frames
from .common import CanonicalizerSettings, count_parameters, time_alternating
from .harness import HardwareSettings, fit, train_config
from .results import RESULTS_DIR, hardware, markdown_table, provenance, write_results

__all__ = [
    "BACKBONES",
    "DATASETS",
    "METHODS",
    "OVERHEAD_SETTINGS",
    "PROTOCOLS",
    "PUBLISHED",
    "ShapesBenchConfig",
    "ShapesObjective",
    "canonicalizer_overhead",
    "classify",
    "evaluate_checkpoint",
    "load_data",
    "model_spec",
    "plot_confusion",
    "plot_gallery",
    "random_rotations",
    "rotate_clouds",
    "run",
    "scores",
    "throughput",
]

METHODS = ("plain", "augment", "pca", "learned", "learned-o3", "frame-averaging")
BACKBONES = ("pointnet", "dgcnn")
BACKBONE_NAMES = {"pointnet": "PointNet", "dgcnn": "DGCNN"}
DATASETS = ("synthetic", "modelnet40", "modelnet10")
ROTATIONS = ("none", "z", "SO3")
PROTOCOLS = ("z/z", "z/SO3", "SO3/SO3")
#: methods whose prediction does not depend on the input's rotation (their training does not either)
INVARIANT_METHODS = ("pca", "learned", "learned-o3", "frame-averaging")
#: per-backbone budget keys (``budgets: {dgcnn: {points: 256, ...}}``)
BUDGET_KEYS = ("points", "max_epochs", "batch_size", "width_scale", "methods")

#: ModelNet40 z/SO3 accuracy (%) on the official 1024-point HDF5 points (Deng et al. 2021, Vector Neurons, Table 1)
PUBLISHED = {"PointNet": 19.6, "VN-PointNet": 77.5, "DGCNN": 33.8, "VN-DGCNN": 89.5}

#: E3nnCanonicalizer settings timed by :func:`canonicalizer_overhead` (unset keys keep the defaults)
OVERHEAD_SETTINGS: tuple[dict[str, Any], ...] = (
    {"num_points": 128, "k": 12, "hidden_mul": 16, "layers": 2},
    {"num_points": 64, "k": 12, "hidden_mul": 16, "layers": 2},
    {"num_points": 32, "k": 12, "hidden_mul": 16, "layers": 2},
    {"num_points": 128, "k": 8, "hidden_mul": 16, "layers": 2},
    {"num_points": 128, "k": 12, "hidden_mul": 8, "layers": 2},
    {"num_points": 128, "k": 12, "hidden_mul": 16, "layers": 1},
    {"num_points": 64, "k": 12, "hidden_mul": 8, "layers": 2},
    {"num_points": 64, "k": 8, "hidden_mul": 8, "layers": 2},
    {"num_points": 64, "k": 8, "hidden_mul": 8, "layers": 1},
    {"num_points": 32, "k": 8, "hidden_mul": 8, "layers": 1},
    {"power_iterations": 30, "signs": "third-moment"},  # the default network, refined as in the shape configs
)


@dataclass
class ShapesBenchConfig(HardwareSettings, CanonicalizerSettings):
    """Everything a run of the benchmark depends on (YAML keys of ``benchmarks/shapes_*.yaml``, ``modelnet*.yaml``)."""

    dataset: str = "synthetic"
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    backbones: list[str] = field(default_factory=lambda: ["pointnet"])
    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS))
    share_invariant_training: bool = True
    seed: int = 0
    test_seed: int = 0
    # data
    data_root: str | None = None  # ModelNet folder (None: $GEOCANON_DATA)
    n_per_class: int = 40  # SyntheticShapes: train shapes per class
    n_val_per_class: int = 10
    n_test_per_class: int = 20
    noise: float = 0.01
    val_fraction: float = 0.1  # ModelNet: share of the train split held out for validation
    points: int = 1024
    # backbones
    width_scale: float = 1.0
    dgcnn_k: int = 20
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)
    # learned canonicalizer (E3nnCanonicalizer / EquivariantVectorNetwork)
    # (canon_hidden_mul, canon_layers, canon_lmax, canon_power_iterations, canon_signs: CanonicalizerSettings)
    canon_group: str = "SO3"
    canon_k: int = 8
    canon_num_points: int | None = 64
    canon_pseudovectors: bool = False  # SO3 only: 1e output channels (see EquivariantVectorNetwork)
    canon_regression: bool = False  # wrap it in a RegressedOrientation trained by the task loss
    canon_regression_hidden: int = 64
    # frame averaging: "all" K frames per training step, or one "sampled" frame (see FrameAveraged)
    fa_train_frames: str = "all"
    # training augmentation besides the protocol's rotation (see ShapesObjective): per-axis scale range, jitter
    train_scale: list[float] | None = None
    train_jitter: float = 0.0
    # optimisation
    max_epochs: int = 30
    batch_size: int = 32
    eval_batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    scheduler: str = "cosine"
    patience: int | None = None
    check_val_every_n_epoch: int = 1
    max_time_s: float | None = None  # wall-clock cap per training (Lightning max_time, checked every batch; None: off)
    # warm restart: the run_dir of an earlier run; each model found there (<dir>/<method>_<backbone>_<rotation>/
    # model.pt) starts from those weights with a fresh optimizer and LR schedule (SGDR-style); epochs add up
    warm_start_dir: str | None = None
    # throughput (eval, no_grad, clouds of ``throughput_points``)
    throughput: bool = True
    throughput_batch: int = 32
    throughput_points: int = 1024
    throughput_repeats: int = 3
    # figures: SyntheticShapes / ModelNet class names shown in the gallery
    gallery_classes: list[str] = field(default_factory=list)
    # outputs
    run_dir: str = "runs/shapes_synthetic"
    results: str = "benchmarks/results/shapes_synthetic"
    checkpoint: str | None = "benchmarks/checkpoints/shapes_synthetic_learned_pointnet.pt"
    checkpoint_backbone: str = "pointnet"  # whose best learned-canonicalized model is saved to ``checkpoint``
    label: str = "synthetic"

    def __post_init__(self) -> None:
        for name, values, known in (
            ("methods", self.methods, METHODS),
            ("backbones", self.backbones, BACKBONES),
            ("protocols", self.protocols, PROTOCOLS),
        ):
            unknown = set(values) - set(known)
            if unknown:
                raise ValueError(f"unknown shape-benchmark {name} {sorted(unknown)}; choose from {known}")
        if self.checkpoint_backbone not in BACKBONES:
            raise ValueError(f"checkpoint_backbone must be one of {BACKBONES}, got {self.checkpoint_backbone!r}")
        if self.max_time_s is not None and not self.max_time_s > 0:
            raise ValueError(f"max_time_s must be a positive number of seconds or null, got {self.max_time_s}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.canon_group not in ("SO3", "O3"):
            raise ValueError(f"canon_group must be 'SO3' or 'O3' (clouds are centred), got {self.canon_group!r}")
        check_train_frames(self.fa_train_frames, "fa_train_frames")
        ShapesObjective(scale=self.train_scale, jitter=self.train_jitter)  # validates both
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        for backbone, budget in self.budgets.items():
            if backbone not in BACKBONES:
                raise ValueError(f"budgets: unknown backbone {backbone!r}; choose from {BACKBONES}")
            unknown = set(budget) - set(BUDGET_KEYS)
            if unknown:
                raise ValueError(f"budgets.{backbone}: unknown keys {sorted(unknown)}; known: {BUDGET_KEYS}")

    def budget(self, backbone: str) -> dict[str, Any]:
        """Points, epochs, batch size, width and methods of ``backbone`` (global values unless overridden)."""
        base = {
            "points": self.points,
            "max_epochs": self.max_epochs,
            "batch_size": self.batch_size,
            "width_scale": self.width_scale,
            "methods": list(self.methods),
        }
        base.update(self.budgets.get(backbone, {}))
        base["methods"] = [m for m in self.methods if m in base["methods"]]
        return base


# ----------------------------------------------------------------------------------------- rotations


def _rotation_kind(kind: str) -> str:
    named = {r.lower(): r for r in ROTATIONS}
    if kind.lower() not in named:
        raise ValueError(f"rotation must be one of {ROTATIONS} (case-insensitive), got {kind!r}")
    return named[kind.lower()]


def random_rotations(
    kind: str, n: int, generator: torch.Generator | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """n rotation matrices Q [n, 3, 3] (points move as ``P @ Q.T``).

    ``kind``: "none" (identity), "z" (uniform angle about the z axis) or "SO3" (Haar,
    :func:`~geocanon.random_rotation`).
    """
    kind = _rotation_kind(kind)
    dtype = dtype or torch.get_default_dtype()
    if kind == "SO3":
        return random_rotation(n, dtype=dtype, generator=generator)
    q = torch.eye(3, dtype=dtype).repeat(n, 1, 1)
    if kind == "z":
        angle = 2 * math.pi * torch.rand(n, generator=generator, dtype=dtype)
        c, s = angle.cos(), angle.sin()
        q[:, 0, 0], q[:, 0, 1], q[:, 1, 0], q[:, 1, 1] = c, -s, s, c
    return q


def rotate_clouds(pos: Tensor, kind: str, seed: int) -> Tensor:
    """Rotate each cloud of ``pos`` [S, N, 3] by its own rotation drawn from a generator seeded by ``seed``.

    Deterministic: the same clouds, kind and seed give the same result (the benchmark's test protocol).
    """
    generator = torch.Generator().manual_seed(seed)
    q = random_rotations(kind, pos.shape[0], generator, pos.dtype)
    return pos @ q.transpose(1, 2)


# ------------------------------------------------------------------------------------- models, losses


def model_spec(method: str, backbone: str, cfg: ShapesBenchConfig, num_classes: int) -> dict[str, Any]:
    """The checkpoint spec (see :mod:`geocanon.checkpoint`) of ``method`` on ``backbone``."""
    if method not in METHODS or backbone not in BACKBONES:
        raise ValueError(
            f"method must be one of {METHODS} and backbone one of {BACKBONES}, got {method!r}, {backbone!r}"
        )
    net_config: dict[str, Any] = {"num_classes": num_classes, "width_scale": cfg.budget(backbone)["width_scale"]}
    if backbone == "dgcnn":
        net_config["k"] = cfg.dgcnn_k
    net = {"name": backbone, "config": net_config}
    if method in ("plain", "augment"):
        return net
    if method == "frame-averaging":
        return {
            "name": "frame_averaged",
            "config": {"backbone": net, "group": "SO3", "output": "invariant", "train_frames": cfg.fa_train_frames},
        }
    if method == "pca":
        canon: dict[str, Any] = {"name": "pca", "config": {"group": "SO3"}}
    else:
        canon = cfg.e3nn_spec(
            group="O3" if method == "learned-o3" else cfg.canon_group,
            k=cfg.canon_k,
            num_points=cfg.canon_num_points,
            **({"pseudovector_outputs": True} if cfg.canon_pseudovectors and method == "learned" else {}),
        )
        if cfg.canon_regression:
            canon = {"name": "regressed_orientation", "config": {"base": canon, "hidden": cfg.canon_regression_hidden}}
    return {"name": "canonicalized", "config": {"backbone": net, "canonicalizer": canon, "output": "invariant"}}


def _group(method: str, cfg: ShapesBenchConfig) -> str | None:
    """Symmetry group a method is built invariant to (None: not invariant)."""
    return {"pca": "SO3", "frame-averaging": "SO3", "learned": cfg.canon_group, "learned-o3": "O3"}.get(method)


class ShapesObjective:
    """Cross-entropy and accuracy of a classifier on a batch (pos [B, N, 3], label [B]).

    In training each cloud is first scaled along each of its own axes by a factor drawn from U(``scale``)
    (the usual anisotropic-scaling augmentation of PointNet/DGCNN training; None: off), its points moved by
    N(0, ``jitter``²) noise clipped at ±5 ``jitter`` (0: off), and the cloud rotated by a fresh rotation of
    ``rotation``. Validation and test batches are used as they are.
    """

    def __init__(self, rotation: str = "none", scale: Sequence[float] | None = None, jitter: float = 0.0) -> None:
        self.rotation = _rotation_kind(rotation)
        self.scale = check_scale_range(scale)
        if not (math.isfinite(jitter) and jitter >= 0):
            raise ValueError(f"jitter must be a finite number >= 0, got {jitter}")
        self.jitter = jitter

    def augment(self, pos: Tensor) -> Tensor:
        """The training augmentation of clouds ``pos`` [B, N, 3] (returns a new [B, N, 3] tensor)."""
        if self.scale is not None:
            low, high = self.scale
            pos = pos * (low + (high - low) * torch.rand(pos.shape[0], 1, 3, dtype=pos.dtype, device=pos.device))
        if self.jitter > 0:
            pos = pos + (self.jitter * torch.randn_like(pos)).clamp(-5 * self.jitter, 5 * self.jitter)
        if self.rotation != "none":
            q = random_rotations(self.rotation, pos.shape[0], dtype=pos.dtype).to(pos.device)
            pos = pos @ q.transpose(1, 2)
        return pos

    def describe(self) -> str:
        """The augmentation in words (recorded with every trained model)."""
        parts = [f"rotation {self.rotation}"]
        if self.scale is not None:
            parts.append(f"per-axis scale U({self.scale[0]:g}, {self.scale[1]:g})")
        if self.jitter > 0:
            parts.append(f"jitter N(0, {self.jitter:g}²) clipped at ±{5 * self.jitter:g}")
        return ", ".join(parts)

    def __call__(self, model: nn.Module, batch: tuple[Tensor, Tensor], stage: str) -> dict[str, Tensor]:
        pos, label = batch
        if stage == "train":
            pos = self.augment(pos)
        logits = model(pos)
        return {"loss": F.cross_entropy(logits, label), "acc": (logits.argmax(-1) == label).float().mean()}


def check_scale_range(scale: Sequence[float] | None) -> tuple[float, float] | None:
    """``scale`` as a (low, high) pair of finite factors 0 < low <= high, or None; a clear error otherwise."""
    if scale is None:
        return None
    values = tuple(float(v) for v in scale)
    if len(values) != 2 or not all(math.isfinite(v) for v in values) or not 0 < values[0] <= values[1]:
        raise ValueError(f"scale augmentation must be [low, high] with 0 < low <= high, got {list(scale)}")
    return values


def classify(model: nn.Module, pos: Tensor, batch_size: int = 64, device: str | torch.device | None = None) -> Tensor:
    """Predicted labels [S] (on the CPU) for clouds ``pos`` [S, N, 3] (model in eval mode, no grad).

    ``device``: where the batches are evaluated (None: the model's device); the model is moved there for the
    call and back to where it was afterwards.
    """
    model.eval()
    home = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = home if device is None else torch.device(device)
    model.to(device)
    try:
        with torch.no_grad():
            return torch.cat(
                [model(pos[i : i + batch_size].to(device)).argmax(-1).cpu() for i in range(0, len(pos), batch_size)]
            )
    finally:
        model.to(home)


def eval_device(cfg: HardwareSettings) -> torch.device:
    """Where a benchmark evaluates its trained models: the GPU when it trains on one, else the CPU."""
    wants_gpu = cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if wants_gpu else "cpu")


def scores(pred: Tensor, label: Tensor, num_classes: int) -> dict[str, Any]:
    """Accuracy and mean per-class accuracy (percent, over the classes present) and the confusion matrix.

    Args:
        pred, label: [S] int64. Returns ``{"accuracy", "mean_class_accuracy", "confusion" [C, C] (rows: true)}``.
    """
    confusion = torch.bincount(label * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes)
    support = confusion.sum(1)
    present = support > 0
    per_class = confusion.diag()[present].double() / support[present]
    return {
        "accuracy": 100.0 * (pred == label).double().mean().item(),
        "mean_class_accuracy": 100.0 * per_class.mean().item(),
        "confusion": confusion,
    }


# ------------------------------------------------------------------------------------------------- data


@dataclass
class _Split:
    pos: Tensor  # [S, N, 3]
    label: Tensor  # [S]


@dataclass
class _Data:
    train: _Split
    val: _Split
    test: _Split
    classes: list[str]
    source: str
    official_points: bool


def load_data(cfg: ShapesBenchConfig, points: int) -> _Data:
    """Train / validation / test clouds [S, points, 3] and labels [S] of ``cfg.dataset``, class names, source line."""
    if cfg.dataset == "synthetic":
        from ..data.synthetic_shapes import SyntheticShapes

        sets = {
            split: SyntheticShapes(split, n, points, cfg.seed, cfg.noise)
            for split, n in (("train", cfg.n_per_class), ("val", cfg.n_val_per_class), ("test", cfg.n_test_per_class))
        }
        splits = {k: _Split(v.pos, v.label) for k, v in sets.items()}
        return _Data(
            splits["train"],
            splits["val"],
            splits["test"],
            sets["train"].classes,
            f"SyntheticShapes (seed {cfg.seed}, noise {cfg.noise}; {cfg.n_per_class}/{cfg.n_val_per_class}/"
            f"{cfg.n_test_per_class} shapes per class)",
            official_points=False,
        )
    from ..data.modelnet import ModelNet

    train = ModelNet(cfg.data_root, cfg.dataset, "train", points)
    test = ModelNet(cfg.data_root, cfg.dataset, "test", points)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed))
    n_val = max(1, round(cfg.val_fraction * len(train)))
    val_idx, train_idx = order[:n_val].sort().values, order[n_val:].sort().values
    official = train.layout == "hdf5"
    return _Data(
        _Split(train.pos[train_idx], train.label[train_idx]),
        _Split(train.pos[val_idx], train.label[val_idx]),
        _Split(test.pos, test.label),
        list(train.classes),
        f"{cfg.dataset} from {train.folder.resolve()} (layout {train.layout}: "
        f"{'the official' if official else 'NOT the official'} HDF5 points); {len(train_idx)} train / {n_val} "
        f"validation (held out of the train split, seed {cfg.seed}) / {len(test)} test shapes",
        official_points=official,
    )


# ---------------------------------------------------------------------------------------- training


def _training_key(method: str, backbone: str, train_rotation: str, cfg: ShapesBenchConfig) -> tuple[str, str, str]:
    """(model family, backbone, rotation it is trained with): equal keys are one and the same training."""
    if method == "augment":
        return ("plain", backbone, "SO3")
    if method in INVARIANT_METHODS and cfg.share_invariant_training:
        return (method, backbone, cfg.protocols[0].split("/")[0])
    return (method, backbone, train_rotation)


def _train(
    key: tuple[str, str, str], cfg: ShapesBenchConfig, data: _Data, resume: bool
) -> tuple[nn.Module, dict[str, Any]]:
    """Train one model; returns it (best validation weights, eval mode) and its training facts."""
    family, backbone, rotation = key
    budget = cfg.budget(backbone)
    torch.manual_seed(cfg.seed)
    model = checkpoint.build(model_spec(family, backbone, cfg, len(data.classes)))
    run_dir = Path(cfg.run_dir) / "_".join(key)
    before = _warm_start(model, key, cfg, run_dir, resume)
    train_set = TensorDataset(data.train.pos, data.train.label)
    train = DataLoader(
        train_set,
        batch_size=budget["batch_size"],
        shuffle=True,
        drop_last=len(train_set) > budget["batch_size"],
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    val_pos = rotate_clouds(data.val.pos, rotation, cfg.seed)
    val = DataLoader(TensorDataset(val_pos, data.val.label), batch_size=cfg.eval_batch_size)
    settings = replace(cfg, max_epochs=budget["max_epochs"])
    objective = ShapesObjective(rotation, cfg.train_scale, cfg.train_jitter)
    augmentation = _augmentation_record(objective, run_dir, resume)
    result = fit(model, objective, train, val, train_config(settings, cfg.seed), run_dir, resume)
    model.eval()
    val_acc = scores(classify(model, val_pos, cfg.eval_batch_size, eval_device(cfg)), data.val.label, len(data.classes))["accuracy"]
    # a warm start continues an earlier training, whose augmentation (rotation only before it was recorded) counts
    earlier_augmentation = [before.get("train_augmentation", f"rotation {rotation}")] if before else []
    facts = {
        "train_rotation": rotation,
        "train_augmentation": "; then ".join(dict.fromkeys(earlier_augmentation + [augmentation])),
        "val_accuracy": val_acc,
        "epochs": before.get("epochs", 0) + result.epochs_run,
        "best_epoch": before.get("epochs", 0) + result.best_epoch,
        "points": budget["points"],
        "width_scale": budget["width_scale"],
        "parameters": count_parameters(model),
        "train_time_s": before.get("train_time_s", 0.0) + result.train_time_s,
        **({"warm_start": before["path"]} if before else {}),
    }
    checkpoint.save(run_dir / "model.pt", model, meta=_meta(cfg, data, budget["points"], key, facts))
    return model, facts


def _augmentation_record(objective: ShapesObjective, run_dir: Path, resume: bool) -> str:
    """How the model of ``run_dir`` is trained, in words: ``objective``'s augmentation for a fresh run (recorded
    in ``run_dir/augmentation.json``), the recorded one for a run that is resumed, whatever the configuration
    says now. Runs begun before augmentation was recorded were trained with their rotation only."""
    record = run_dir / "augmentation.json"
    if resume and (run_dir / "checkpoints").is_dir():
        return json.loads(record.read_text()) if record.is_file() else f"rotation {objective.rotation}"
    run_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(objective.describe()))
    return objective.describe()


def _warm_start(
    model: nn.Module, key: tuple[str, str, str], cfg: ShapesBenchConfig, run_dir: Path, resume: bool
) -> dict[str, Any]:
    """Load the weights ``key`` reached in ``cfg.warm_start_dir`` into ``model``; returns that training's facts.

    Only a fresh run is warm-started (recorded in ``run_dir/warm_start.json``); a run already begun in
    ``run_dir`` and resumed continues from its own checkpoints, and returns the record it began with.
    Returns {} when nothing was warm-started, otherwise {"path", "epochs", "train_time_s", ...} of the
    earlier training, which this one continues.
    """
    record = run_dir / "warm_start.json"
    if resume and (run_dir / "checkpoints").is_dir():
        return json.loads(record.read_text()) if record.is_file() else {}
    record.unlink(missing_ok=True)
    if cfg.warm_start_dir is None:
        return {}
    path = Path(cfg.warm_start_dir) / "_".join(key) / "model.pt"
    if not path.is_file():
        return {}
    earlier, meta = checkpoint.load(path)
    try:
        model.load_state_dict(earlier.state_dict())
    except RuntimeError as error:
        raise ValueError(f"warm start {path}: its model does not match this configuration's {key}: {error}") from None
    facts = {**meta.get("facts", {}), "path": str(path)}
    run_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(facts, indent=2))
    return facts


def _meta(
    cfg: ShapesBenchConfig, data: _Data, points: int, key: tuple[str, str, str], facts: dict[str, Any]
) -> dict[str, Any]:
    return {
        "benchmark": "shapes",
        "dataset": cfg.dataset,
        "classes": data.classes,
        "points": points,
        "method": key[0],
        "backbone": key[1],
        "train_rotation": key[2],
        "facts": facts,
        "config": asdict(cfg),
    }


# --------------------------------------------------------------------------------------- throughput


def _shape_batch(batch_size: int, points: int) -> Tensor:
    """[batch_size, points, 3] SyntheticShapes test clouds (all classes in turn): realistic timing input."""
    from ..data.synthetic_shapes import SyntheticShapes

    per_class = -(-batch_size // len(SyntheticShapes.CLASSES))
    return SyntheticShapes("test", per_class, points, seed=0).pos[:batch_size]


def throughput(cfg: ShapesBenchConfig, num_classes: int) -> list[dict[str, Any]]:
    """Clouds/s of every method (augment = plain at inference, not repeated) in eval mode, no grad.

    Each model is timed alternately with the plain backbone (:func:`~geocanon.bench.common.time_alternating`).
    Each row: method, backbone, batch, points, ms_per_batch, clouds_per_s, cost_vs_plain (median over
    rounds of time / plain backbone's time) and, for canonicalized models, canonicalizer_ms and
    canonicalizer_overhead (canonicalizer time / plain backbone time).
    """
    pos = _shape_batch(cfg.throughput_batch, cfg.throughput_points)
    rows = []
    for backbone in cfg.backbones:
        plain = checkpoint.build(model_spec("plain", backbone, cfg, num_classes)).eval()
        for method in dict.fromkeys(["plain"] + [m for m in cfg.budget(backbone)["methods"] if m != "augment"]):
            model = (
                plain if method == "plain" else checkpoint.build(model_spec(method, backbone, cfg, num_classes)).eval()
            )
            fns = [partial(plain, pos)] + ([] if model is plain else [partial(model, pos)])
            if isinstance(model, Canonicalized):
                fns.append(partial(model.canonicalizer, pos))
            times = time_alternating(fns, repeats=cfg.throughput_repeats)
            ms = 1000 * statistics.median(times[1 if len(times) > 1 else 0])
            row: dict[str, Any] = {
                "method": method,
                "backbone": backbone,
                "batch": cfg.throughput_batch,
                "points": cfg.throughput_points,
                "ms_per_batch": ms,
                "clouds_per_s": 1000 * cfg.throughput_batch / ms,
                "cost_vs_plain": _median_ratio(times[1], times[0]) if len(times) > 1 else 1.0,
            }
            if isinstance(model, Canonicalized):
                row.update(
                    canonicalizer_ms=1000 * statistics.median(times[2]),
                    canonicalizer_overhead=_median_ratio(times[2], times[0]),
                )
            rows.append(row)
    return rows


def _median_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of a[r] / b[r]."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def canonicalizer_overhead(
    settings: Sequence[dict[str, Any]] = OVERHEAD_SETTINGS,
    batch_size: int = 32,
    points: int = 1024,
    num_classes: int = 40,
    repeats: int = 5,
    target: float = 0.30,
    results: str | Path = RESULTS_DIR / "canonicalizer_overhead",
) -> dict[str, Any]:
    """Forward time of the E3nnCanonicalizer (SO3) vs a plain PointNet on the same [batch_size, points, 3] batch.

    For each setting the two are called alternately ``repeats`` times (eval, no grad; see
    :func:`~geocanon.bench.common.time_alternating`); overhead = median over rounds of canonicalizer
    time / PointNet time, so a changing machine load affects both alike. Writes ``results.{json,md}``
    and returns the payload; each row has the canonicalizer's effective settings, canonicalizer_ms,
    pointnet_ms (medians), overhead and meets_target.
    """
    from ..canonicalizers.learned import E3nnCanonicalizer
    from ..nn.pointnet import PointNet
    from ..nn.vector_net import EquivariantVectorNetwork

    start = time.perf_counter()
    load_before = os.getloadavg()
    pos = _shape_batch(batch_size, points)
    torch.manual_seed(0)
    pointnet = PointNet(num_classes).eval()
    signature = inspect.signature(EquivariantVectorNetwork).parameters
    defaults = {name: signature[name].default for name in ("num_points", "k", "hidden_mul", "layers")}
    refinement = inspect.signature(E3nnCanonicalizer).parameters
    defaults.update({name: refinement[name].default for name in ("power_iterations", "signs")})
    rows = []
    for setting in settings:
        canon = E3nnCanonicalizer("SO3", **setting).eval()
        effective = {k: canon.config.get(k, v) for k, v in defaults.items()}
        canon_s, pointnet_s = time_alternating([partial(canon, pos), partial(pointnet, pos)], repeats=repeats)
        overhead = _median_ratio(canon_s, pointnet_s)
        rows.append(
            {
                **effective,
                "default": effective == defaults,
                "canonicalizer_ms": 1000 * statistics.median(canon_s),
                "pointnet_ms": 1000 * statistics.median(pointnet_s),
                "overhead": overhead,
                "meets_target": overhead <= target,
                "parameters": count_parameters(canon),
            }
        )
    payload = {
        "benchmark": "canonicalizer_overhead",
        "complete": True,
        "batch": batch_size,
        "points": points,
        "target": target,
        "threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "results": rows,
        "provenance": provenance(time.perf_counter() - start),
    }
    cols = [
        "num_points",
        "k",
        "hidden_mul",
        "layers",
        "power_iterations",
        "signs",
        "default",
        "parameters",
        "canonicalizer_ms",
        "pointnet_ms",
        "overhead",
        "meets_target",
    ]
    default_row = next((r for r in rows if r["default"]), None)
    verdict = (
        ""
        if default_row is None
        else (
            f"Default settings: overhead **{default_row['overhead']:.0%}** — "
            + ("meets" if default_row["meets_target"] else "does NOT meet")
            + f" the ≤ {target:.0%} target.\n\n"
        )
    )
    network_keys = ("num_points", "k", "hidden_mul", "layers")
    refined = [r for r in rows if r["power_iterations"] and all(r[k] == defaults[k] for k in network_keys)]
    verdict += "".join(
        f"Default network with {r['power_iterations']} power iterations and {r['signs']} signs (as in the shape "
        f"configs): overhead **{r['overhead']:.0%}**.\n\n"
        for r in refined
    )
    md = (
        "# Canonicalizer overhead: E3nnCanonicalizer (SO3) vs plain PointNet, "
        f"{batch_size} clouds × {points} points\n\n"
        f"Forward time, eval mode, no grad; the canonicalizer and PointNet are called alternately {repeats} times "
        "(medians shown); overhead = median over rounds of canonicalizer time / PointNet time "
        f"(target ≤ {target:.0%}). "
        f"CPU, torch threads {torch.get_num_threads()}, {os.cpu_count()} cores; load average (1/5/15 min) "
        f"{_fmt_load(load_before)} before and {_fmt_load(payload['load_average_after'])} after (a load above the core "
        "count means other processes shared the CPU: absolute times are inflated, the ratios less so).\n\n"
        + verdict
        + markdown_table(rows, cols)
        + "\n"
    )
    write_results(results, payload, md)
    return payload


def _fmt_load(load: Sequence[float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


# ------------------------------------------------------------------------------------------- figures


def plot_gallery(
    model: Canonicalized,
    pos: Tensor,
    label: Tensor,
    classes: Sequence[str],
    names: Sequence[str],
    path: str | Path,
    seed: int = 0,
) -> Path:
    """PNG: for one test shape of each class in ``names``, two random SO(3) rotations of it and their canonical clouds.

    Args:
        model: a canonicalized classifier; pos: [S, N, 3] upright test clouds; label: [S];
        classes: label names; names: classes to show (those absent from ``label`` are skipped).
    """
    from matplotlib.figure import Figure

    chosen = [
        (name, int((label == classes.index(name)).nonzero()[0]))
        for name in names
        if name in classes and bool((label == classes.index(name)).any())
    ]
    if not chosen:
        raise ValueError(f"gallery: none of the classes {list(names)} has a test shape")
    clouds = pos[[i for _, i in chosen]]
    generator = torch.Generator().manual_seed(seed)
    fig = Figure(figsize=(10, 2.6 * len(chosen)))
    titles = ("input, rotation A", "canonical (from A)", "input, rotation B", "canonical (from B)")
    colours = clouds[..., 2].numpy()  # upright height: the same point has the same colour in every view
    model.eval()
    views = []
    with torch.no_grad():
        for _ in range(2):
            moved = clouds @ random_rotations("SO3", len(chosen), generator, clouds.dtype).transpose(1, 2)
            views += [moved, model.canonicalizer(moved).to_canonical_points(moved)]
    for row, (name, _) in enumerate(chosen):
        for col, view in enumerate(views):
            ax = fig.add_subplot(len(chosen), 4, 4 * row + col + 1, projection="3d")
            p = view[row].numpy()
            ax.scatter(p[:, 0], p[:, 1], p[:, 2], s=1, c=colours[row], cmap="viridis")
            ax.set(xlim=(-1, 1), ylim=(-1, 1), zlim=(-1, 1), xticks=[], yticks=[], zticks=[])
            ax.set_title(f"{name}: {titles[col]}" if col == 0 else titles[col], fontsize=8)
    fig.suptitle(
        "Test shapes, randomly rotated, and their learned canonical clouds (the two canonical views agree;\n"
        "colour = height in the upright pose)"
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return path


def plot_confusion(confusion: Tensor, classes: Sequence[str], title: str, path: str | Path) -> Path:
    """PNG of a confusion matrix [C, C] (rows: true class, columns: predicted), row-normalised."""
    from matplotlib.figure import Figure

    c = len(classes)
    if confusion.shape != (c, c):
        raise ValueError(f"confusion must be [{c}, {c}] for {c} classes, got {list(confusion.shape)}")
    rates = confusion.double() / confusion.sum(1, keepdim=True).clamp_min(1)
    size = max(5.0, 0.25 * c + 2)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.add_subplot()
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(c), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(c), classes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return path


# ------------------------------------------------------------------------------------------- reports


ROW_COLUMNS = ["method", "backbone", "protocol", "train_rotation", "accuracy", "mean_class_accuracy",
               "invariance_error", "frame_turn_deg", "val_accuracy", "points", "epochs", "parameters",
               "train_time_s"]  # fmt: skip
FRAME_NOISE = 0.01  # point jitter (units of the unit-scale clouds) for the frame_turn_deg column
THROUGHPUT_COLUMNS = ["method", "backbone", "ms_per_batch", "clouds_per_s", "cost_vs_plain", "canonicalizer_ms",
                      "canonicalizer_overhead"]  # fmt: skip


def _pivot(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (method, backbone) with an ``accuracy (mean class accuracy)`` cell per protocol."""
    models = dict.fromkeys((r["method"], r["backbone"]) for r in rows)
    lines = []
    for method, backbone in sorted(models, key=lambda mb: (BACKBONES.index(mb[1]), METHODS.index(mb[0]))):
        mine = [r for r in rows if (r["method"], r["backbone"]) == (method, backbone)]
        line: dict[str, Any] = {
            "method": method,
            "backbone": backbone,
            "points": mine[0]["points"],
            # plain's SO3/SO3 cell is the augment training: its epochs can differ from plain's z training
            "epochs": ", ".join(str(e) for e in dict.fromkeys(r["epochs"] for r in mine)),
            "trained with": ", ".join(dict.fromkeys(r.get("train_augmentation", r["train_rotation"]) for r in mine)),
        }
        line.update({r["protocol"]: f"{r['accuracy']:.1f} ({r['mean_class_accuracy']:.1f})" for r in mine})
        lines.append(line)
    return lines


def _markdown(cfg: ShapesBenchConfig, payload: dict[str, Any]) -> str:
    rows = payload["results"]
    status = "complete" if payload["complete"] else "PARTIAL (still running or interrupted; rows so far)"
    shared = (
        "The invariant methods (pca, learned, frame-averaging) see the same canonical input whatever the training "
        "rotation, so each was trained once (column 'trained with') and evaluated under every protocol. "
    )
    text = [
        f"# Shape classification under rotations: `{cfg.label}` configuration — {status}\n",
        (
            f"Data: {payload['data']}. Accuracy in percent, as `overall (mean per class)`, of the best-validation "
            "epoch; protocol = training rotation / test rotation (z: uniform about the up axis, SO3: Haar-random; test "
            "rotations "
            f"drawn once with seed {cfg.test_seed}). Seed {cfg.seed}.\n"
        ),
        (
            "`augment` is the backbone trained with random SO(3) rotations whatever the protocol, i.e. the same model "
            "as "
            "`plain` SO3/SO3. "
            + (shared if cfg.share_invariant_training else "")
            + f"`learned` uses an E3nnCanonicalizer of group {cfg.canon_group}, `learned-o3` one of group O3"
            + (" (each wrapped in a RegressedOrientation trained by the task loss)" if cfg.canon_regression else "")
            + ".\n"
            + (
                f"Warm restarts: {', '.join(sorted(warm))} continued the model of an earlier run (`warm_start` in the "
                "JSON) for this run's epochs with a fresh optimizer and schedule; epochs and train_time_s are totals.\n"
                if (warm := {r["method"] for r in rows if r.get("warm_start")})
                else ""
            )
        ),
        markdown_table(_pivot(rows), ["method", "backbone", "points", "epochs", "trained with", *cfg.protocols]),
    ]
    if cfg.dataset != "synthetic":
        ours = [
            {"model": f"{r['backbone']} + {r['method']} (ours)", "z/SO3": f"{r['accuracy']:.1f}"}
            for r in rows
            if r["protocol"] == "z/SO3"
        ]
        published = [{"model": f"{name} (published)", "z/SO3": value} for name, value in PUBLISHED.items()]
        points = (
            "the official HDF5 points"
            if payload["official_points"]
            else "other points (see Data above), NOT the official HDF5 points: comparable, not identical"
        )
        other = f"; and on {cfg.dataset}, not ModelNet40" if cfg.dataset != "modelnet40" else ""
        text += [
            (
                "\n## Beside the published ModelNet40 z/SO3 accuracies\n\n"
                "Published: Deng et al. 2021 (Vector Neurons), "
                f"Table 1, on the official HDF5 points. **Ours are measured on {points}{other}.**\n"
            ),
            markdown_table(ours + published, ["model", "z/SO3"]),
        ]
    text += [
        "\n## Every row\n",
        markdown_table(rows, ROW_COLUMNS),
        (
            "\ninvariance_error: max relative change of the logits of 8 test clouds under random SO(3) rotations "
            "(float32; ~1e-6 means exactly invariant). frame_turn_deg: median angle (degrees) by which the "
            f"canonical frame of a test cloud turns when its points get N(0, {FRAME_NOISE}²) jitter (256 clouds; "
            "canonicalized models only): equivariance does not make a frame continuous."
        ),
    ]
    if payload["throughput"]:
        text += [
            f"\n## Throughput (CPU, eval, no grad, {cfg.throughput_batch} clouds × {cfg.throughput_points} points)\n",
            (
                "Each model is timed alternately with the plain backbone; cost_vs_plain = time / plain backbone time, "
                "canonicalizer_overhead = canonicalizer time / plain backbone time (medians over rounds). `augment` is "
                "the plain backbone at inference.\n"
            ),
            markdown_table(payload["throughput"], THROUGHPUT_COLUMNS),
        ]
    text += [f"\n{caption}:\n\n![{caption}]({name})" for caption, name in payload["figures"].items()]
    return "\n".join(text)


def _row(
    method: str,
    backbone: str,
    protocol: str,
    facts: dict[str, Any],
    result: dict[str, Any],
    cfg: ShapesBenchConfig,
    invariance: float,
    frame_turn: float | None,
) -> dict[str, Any]:
    return {
        "method": method,
        "backbone": backbone,
        "protocol": protocol,
        "test_rotation": protocol.split("/")[1],
        "group": _group(method, cfg),
        "accuracy": result["accuracy"],
        "mean_class_accuracy": result["mean_class_accuracy"],
        "n_test": result["n"],
        "invariance_error": invariance,
        "frame_turn_deg": frame_turn,
        **facts,
        "hardware": hardware(),
        "seed": cfg.seed,
    }


def _evaluate(
    model: nn.Module,
    key: tuple[str, str, str],
    facts: dict[str, Any],
    planned: list[tuple[str, str, str]],
    cfg: ShapesBenchConfig,
    data: _Data,
    test_views: dict[str, Tensor],
) -> tuple[list[dict[str, Any]], dict]:
    """Rows of the planned (method, backbone, protocol) that ``key``'s model serves; its scores per test rotation."""
    invariance = equivariance_error(
        model, data.test.pos[:8], group="SO3", output="invariant", trials=2, seed=cfg.test_seed
    )
    frame_turn = None
    if isinstance(model, Canonicalized):
        turns = frame_sensitivity(model.canonicalizer, data.test.pos[:256], FRAME_NOISE, seed=cfg.test_seed)
        frame_turn = round(turns.median().item(), 2)
    evaluated: dict[str, dict[str, Any]] = {}
    rows = []
    for method, backbone, protocol in planned:
        train_rotation, test_rotation = protocol.split("/")
        if _training_key(method, backbone, train_rotation, cfg) != key:
            continue
        if test_rotation not in evaluated:
            if test_rotation not in test_views:
                test_views[test_rotation] = rotate_clouds(data.test.pos, test_rotation, cfg.test_seed)
            pred = classify(model, test_views[test_rotation], cfg.eval_batch_size, eval_device(cfg))
            evaluated[test_rotation] = {**scores(pred, data.test.label, len(data.classes)), "n": len(pred)}
        rows.append(_row(method, backbone, protocol, facts, evaluated[test_rotation], cfg, invariance, frame_turn))
        print(f"[shapes] {method} {backbone} {protocol}: accuracy {rows[-1]['accuracy']:.1f}%", flush=True)
    return rows, evaluated


def run(cfg: ShapesBenchConfig, resume: bool = False) -> dict[str, Any]:
    """Train and evaluate every method × backbone × protocol; write results as they come (see module docstring)."""
    start = time.perf_counter()
    payload: dict[str, Any] = {
        "benchmark": "shapes", "dataset": cfg.dataset, "complete": False, "checkpoint": None,
        "units": {"accuracy": "percent", "mean_class_accuracy": "percent"}, "config": asdict(cfg), "data": "",
        "official_points": False, "results": [], "throughput": [], "figures": {},
        "published_z_so3": PUBLISHED if cfg.dataset != "synthetic" else None, "provenance": {},
    }  # fmt: skip

    def write() -> None:
        payload["provenance"] = provenance(time.perf_counter() - start, [cfg.seed])
        write_results(cfg.results, payload, _markdown(cfg, payload))

    planned = [(m, b, p) for p in cfg.protocols for b in cfg.backbones for m in cfg.budget(b)["methods"]]
    keys = list(dict.fromkeys(_training_key(m, b, p.split("/")[0], cfg) for m, b, p in planned))
    data_by_points: dict[int, _Data] = {}
    test_views: dict[int, dict[str, Tensor]] = {}  # points -> test rotation -> rotated test clouds
    best_val_accuracy = -1.0  # of the learned-canonicalized models of cfg.checkpoint_backbone so far
    for key in keys:
        points = cfg.budget(key[1])["points"]
        if points not in data_by_points:
            data_by_points[points] = load_data(cfg, points)
        data = data_by_points[points]
        payload.update(data=data.source, official_points=data.official_points)
        model, facts = _train(key, cfg, data, resume)
        rows, evaluated = _evaluate(model, key, facts, planned, cfg, data, test_views.setdefault(points, {}))
        payload["results"] += rows
        if (
            key[0].startswith("learned")
            and key[1] == cfg.checkpoint_backbone
            and facts["val_accuracy"] > best_val_accuracy
        ):
            best_val_accuracy = facts["val_accuracy"]
            _save_best(cfg, model, facts, data, key, evaluated, payload)
        write()
    if cfg.throughput:
        payload["throughput"] = throughput(cfg, len(next(iter(data_by_points.values())).classes))
    payload["complete"] = True
    write()
    return payload


def _save_best(
    cfg: ShapesBenchConfig,
    model: nn.Module,
    facts: dict[str, Any],
    data: _Data,
    key: tuple[str, str, str],
    evaluated: dict[str, dict[str, Any]],
    payload: dict[str, Any],
) -> None:
    """Save the best learned-canonicalized model so far (of ``cfg.checkpoint_backbone``), its gallery and confusion
    matrix (hardest test rotation)."""
    if cfg.checkpoint:
        checkpoint.save(cfg.checkpoint, model, meta=_meta(cfg, data, facts["points"], key, facts))
        payload["checkpoint"] = cfg.checkpoint
    stem = Path(cfg.results)
    names = cfg.gallery_classes or data.classes[:4]
    gallery = plot_gallery(
        model,
        data.test.pos,
        data.test.label,
        data.classes,
        names,
        stem.with_name(stem.name + "_gallery.png"),
        seed=cfg.test_seed,
    )
    test_rotation = max(evaluated, key=ROTATIONS.index)
    title = f"{key[0]} {BACKBONE_NAMES[key[1]]}, trained {key[2]}, tested {test_rotation}"
    matrix = plot_confusion(
        evaluated[test_rotation]["confusion"], data.classes, title, stem.with_name(stem.name + "_confusion.png")
    )
    payload["figures"] = {
        "Gallery: input vs learned canonical clouds": gallery.name,
        f"Confusion matrix ({title})": matrix.name,
    }


# ------------------------------------------------------------------------------------------ evaluate


def evaluate_checkpoint(
    path: str | Path,
    data_dir: str | Path,
    dataset: str | None = None,
    rotate: str = "none",
    seed: int = 0,
    points: int | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Accuracy of a saved classifier on the ModelNet test split under ``data_dir``.

    Any layout :class:`~geocanon.data.modelnet.ModelNet` reads (at least the per-shape ``.npy`` one).
    ``dataset`` (modelnet40 / modelnet10) and ``points`` default to the checkpoint's; ``rotate``:
    "none" (clouds as on disk, after the loader's centring and unit-sphere scaling, as in training),
    "z" or "SO3" (one rotation per cloud from ``seed``, as :func:`rotate_clouds`).

    Returns ``{"accuracy", "mean_class_accuracy", "n", "dataset", "rotate", "seed", "points", "checkpoint"}``.
    """
    from ..data.modelnet import ModelNet

    model, meta = checkpoint.load(path)
    dataset = dataset or meta.get("dataset", "modelnet40")
    if dataset not in ("modelnet40", "modelnet10"):
        raise ValueError(
            f"--evaluate reads ModelNet test splits: dataset must be modelnet40 or modelnet10, got {dataset!r}"
            + (" (the checkpoint was trained on SyntheticShapes)" if dataset == "synthetic" else "")
        )
    rotate = _rotation_kind(rotate)
    points = points or meta.get("points", 1024)
    data = ModelNet(data_dir, dataset, "test", points)
    if meta.get("classes") is not None and list(meta["classes"]) != list(data.classes):
        raise ValueError(
            f"checkpoint {path} was trained on classes {meta['classes']}, but {data.folder} holds {data.classes}"
        )
    pos = rotate_clouds(data.pos, rotate, seed)
    with torch.no_grad():
        outputs = model(pos[:1]).shape[-1]
    if outputs != len(data.classes):
        raise ValueError(f"checkpoint {path} predicts {outputs} classes, but {dataset} has {len(data.classes)}")
    result = scores(classify(model, pos, batch_size), data.label, len(data.classes))
    return {
        "accuracy": result["accuracy"],
        "mean_class_accuracy": result["mean_class_accuracy"],
        "n": len(data),
        "dataset": dataset,
        "rotate": rotate,
        "seed": seed,
        "points": points,
        "checkpoint": str(path),
    }
