"""Equivariant adaptation of a pretrained backbone (Mondal et al. 2023) and its benchmark.

A backbone trained on upright data without any canonicalization (geocanon's convention:
``backbone(pos [B, N, 3]) -> logits [B, C]``; any ``nn.Module``) is made exactly SO(3)-invariant by
running it in the frame of an :class:`~geocanon.E3nnCanonicalizer` (:class:`~geocanon.Canonicalized`):

1. :func:`pretrain` (optional) trains a PointNet / DGCNN on upright (or z-rotated) shapes with the
   shared harness and saves it with :func:`geocanon.checkpoint.save`;
2. :func:`adapt` freezes the backbone (``requires_grad`` False *and* eval mode, re-applied before every
   forward, so BatchNorm statistics do not move even if the training loop calls ``train()`` on the
   whole model; Lightning 2.5 keeps the modes it finds, older versions call ``train()``) and
   trains only the canonicalizer with ``loss = task loss + β · prior(R)``;
3. :func:`finetune` (optional) then trains backbone and canonicalizer together at a lower learning rate,
   the prior still on.

The training clouds are used as the backbone was pretrained on them (upright, or rotated about "up"
for the axis prior), never SO(3)-rotated: the canonicalized model is exactly invariant, so the task
loss does not depend on the input's rotation, but the prior does. It ties the frames of *upright*
clouds to the identity (or keeps "up" fixed), so the frozen backbone sees the pose it was trained on.

The benchmark (:func:`run`, ``geocanon adapt --benchmark``) evaluates the pretrained backbone and
every configured adaptation (``runs``: prior kind, β, fine-tuned or not) on upright and SO(3)-rotated
test clouds, with the frames' diagnostics on upright test clouds: the fraction within 10° of the
identity, the mean geodesic angle to it, and the mean angle between the canonical and the input
"up" axis. Accuracies are in percent.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from .. import checkpoint
from ..canonicalizers.base import Canonicalizer
from ..canonicalizers.choice import OctahedralChoice
from ..canonicalizers.search import PoseSearch
from ..prior import CanonicalizationPrior, fraction_within, mean_angle_to_identity
from ..testing import equivariance_error
from ..wrap import Canonicalized
from .common import CanonicalizerSettings, count_parameters
from .harness import HardwareSettings, TrainConfig, fit
from .results import markdown_table, provenance, write_results
from .shapes import ShapesBenchConfig, ShapesObjective, classify, load_data, model_spec, random_rotations, rotate_clouds

__all__ = [
    "AdaptBenchConfig",
    "AdaptObjective",
    "adapt",
    "evaluate",
    "finetune",
    "frozen",
    "obtain_backbone",
    "pretrain",
    "run",
]

PRIORS = ("none", "identity", "axis", "appearance")
UP = (0.0, 0.0, 1.0)
RUN_KEYS = {"prior", "beta", "finetune"}


# ------------------------------------------------------------------------------------------ workflow


def _keep_eval(module: nn.Module, args: tuple[Any, ...]) -> None:
    module.eval()  # a parent's train() (Lightning: every epoch) switched it back; undo it before each forward


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Freeze ``module`` inside the block: ``requires_grad`` False and eval mode.

    Eval mode is re-applied before every forward, so a parent's ``train()`` cannot re-enable
    BatchNorm statistics updates or dropout. On exit the ``requires_grad`` flags are restored and the
    module is left in eval mode.
    """
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    module.eval()
    handle = module.register_forward_pre_hook(_keep_eval)
    try:
        yield module
    finally:
        handle.remove()
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


class AdaptObjective:
    """Harness objective: task loss + β · prior of the batch's canonical frames (+ accuracy for class labels).

    Args:
        prior: a :class:`~geocanon.CanonicalizationPrior` (it holds β) applied to ``model.last_frame.rotation``.
        rotation: "none", "z" or "SO3": each training cloud is first rotated by a fresh rotation of this kind
            (the pretraining distribution: "none" for upright data, "z" for data rotated about up).
        task_loss: ``task_loss(output, target)`` -> scalar; default cross-entropy of logits [B, C], labels [B].

    Batches are ``(pos [B, N, 3], target [B, ...])``; the model must be a :class:`~geocanon.Canonicalized`.
    Returns ``{"loss", "task_loss", "prior"[, "acc"]}``.
    """

    def __init__(
        self,
        prior: CanonicalizationPrior,
        rotation: str = "none",
        task_loss: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    ) -> None:
        self.prior = prior
        self.rotation = ShapesObjective(rotation).rotation
        self.task_loss = task_loss

    def __call__(self, model: nn.Module, batch: tuple[Tensor, Tensor], stage: str) -> dict[str, Tensor]:
        if not isinstance(model, Canonicalized):
            raise ValueError(f"AdaptObjective trains a Canonicalized model, got {type(model).__name__}")
        pos, target = batch
        if stage == "train" and self.rotation != "none":
            q = random_rotations(self.rotation, pos.shape[0], dtype=pos.dtype).to(pos.device)
            pos = pos @ q.transpose(1, 2)
        out = model(pos)
        task = self.task_loss(out, target)
        prior = self.prior(model.last_frame.rotation, pos)
        choice = _candidate_choice(model.canonicalizer)
        if choice is not None:
            prior = prior + self.prior.choice_loss(choice.last_base_rotation, choice.last_logits, choice.last_candidates,
                                                   pos=pos)  # fmt: skip
        metrics = {"loss": task + prior, "task_loss": task, "prior": prior}
        if not target.is_floating_point():
            metrics["acc"] = (out.argmax(-1) == target).float().mean()
        return metrics


def adapt(
    backbone: nn.Module,
    canonicalizer: Canonicalizer,
    train_loader: DataLoader,
    val_loader: DataLoader,
    prior: CanonicalizationPrior,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    finetune_config: TrainConfig | None = None,
    rotation: str = "none",
    task_loss: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    resume: bool = False,
) -> Canonicalized:
    """Adapt a pretrained ``backbone``: train ``canonicalizer`` in front of it, frozen; optionally fine-tune after.

    Args:
        backbone: any module called as ``backbone(pos [B, N, 3]) -> output [B, C]`` (geocanon's convention),
            trained on data distributed like ``train_loader``'s (upright).
        canonicalizer: the frame predictor to train (e.g. ``E3nnCanonicalizer(group="SO3")``).
        train_loader, val_loader: batches ``(pos [B, N, 3], target [B])`` as the backbone was trained on.
        prior: β · prior on the frames (:class:`~geocanon.CanonicalizationPrior`: identity / axis / none).
        config: harness settings of the adaptation (epochs, learning rate of the canonicalizer, ...).
        run_dir: the harness writes ``run_dir/adapt`` (and ``run_dir/finetune``): checkpoints, logs and
            ``result.json`` (best epoch, training time).
        finetune_config: if given, :func:`finetune` afterwards with these settings (use a lower ``lr``).
        rotation: rotation kind applied to training clouds ("none"; "z" for data rotated about up).
        task_loss: ``task_loss(output, target)``; default cross-entropy.
        resume: continue interrupted stages (see :func:`~geocanon.bench.harness.fit`).

    Returns:
        ``Canonicalized(backbone, canonicalizer, output="invariant")`` in eval mode with each stage's
        best-validation weights; the backbone's weights and buffers are untouched unless fine-tuned.
        If both modules were built by :func:`geocanon.checkpoint.build`, it can be saved with
        :func:`geocanon.checkpoint.save`.
    """
    model = Canonicalized(backbone, canonicalizer, output="invariant")
    if hasattr(backbone, "geocanon_spec") and hasattr(canonicalizer, "geocanon_spec"):
        model.geocanon_spec = {
            "name": "canonicalized",
            "config": {"backbone": backbone.geocanon_spec, "canonicalizer": canonicalizer.geocanon_spec,
                       "output": "invariant"},
        }  # fmt: skip
    objective = AdaptObjective(prior, rotation, task_loss)
    model.train()  # Lightning keeps the modes it finds (a loaded checkpoint is in eval mode)
    with frozen(backbone):
        fit(model, objective, train_loader, val_loader, config, Path(run_dir) / "adapt", resume)
    if finetune_config is not None:
        finetune(model, train_loader, val_loader, prior, finetune_config, run_dir,
                 rotation=rotation, task_loss=task_loss, resume=resume)  # fmt: skip
    return model.eval()


def finetune(
    model: Canonicalized,
    train_loader: DataLoader,
    val_loader: DataLoader,
    prior: CanonicalizationPrior,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    rotation: str = "none",
    task_loss: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    resume: bool = False,
) -> Canonicalized:
    """Train an adapted model's backbone and canonicalizer together (in place), the prior still on.

    Same arguments as :func:`adapt` (``config.lr`` should be lower than the adaptation's); the harness
    writes ``run_dir/finetune``. Returns ``model`` in eval mode with the best-validation weights.
    """
    model.train()  # Lightning keeps the modes it finds; adapt() returned the model in eval mode
    fit(model, AdaptObjective(prior, rotation, task_loss), train_loader, val_loader, config,
        Path(run_dir) / "finetune", resume)  # fmt: skip
    return model.eval()


# ---------------------------------------------------------------------------------------- benchmark


@dataclass
class AdaptBenchConfig(HardwareSettings, CanonicalizerSettings):
    """Everything an adaptation run depends on (YAML keys of ``benchmarks/adapt_*.yaml``).

    ``runs``: the adaptations, each ``{"prior": "none"|"identity"|"axis", "beta": float, "finetune": bool}``;
    runs differing only in ``finetune`` share one adaptation.
    """

    label: str = "synthetic"
    dataset: str = "synthetic"
    data_root: str | None = None
    n_per_class: int = 30
    n_val_per_class: int = 6
    n_test_per_class: int = 20
    noise: float = 0.01
    val_fraction: float = 0.1
    points: int = 512
    seed: int = 0
    test_seed: int = 0
    # the pretrained backbone
    backbone: str = "pointnet"
    width_scale: float = 0.5
    dgcnn_k: int = 20
    pretrain_rotation: str = "none"  # "none": upright; "z": rotated about up
    pretrain_epochs: int = 20
    backbone_checkpoint: str = "runs/adapt/synthetic/pretrained_pointnet.pt"
    # the learned canonicalizer (E3nnCanonicalizer, group SO3; the other canon_* fields: CanonicalizerSettings)
    canon_k: int = 8
    canon_num_points: int | None = 32
    canon_choice: bool = False  # wrap it in an OctahedralChoice (a learned choice among the cube rotations)
    canon_choice_hidden: int = 64
    canon_regression: bool = False  # wrap it (after the choice) in a RegressedOrientation (a continuous correction)
    canon_regression_hidden: int = 64
    canon_search: bool = False  # wrap it in a PoseSearch (a learned search over a grid of rotations) instead of a choice
    canon_search_candidates: int = 4608
    canon_search_scorer: str = "pointnet"  # or "spherical" (an MLP of rotated spherical-harmonic moments; cheaper)
    canon_search_lmax: int = 6
    canon_search_radial: int = 4
    canon_search_hidden: int = 64
    canon_search_points: int = 64
    canon_search_train_candidates: int = 128
    canon_search_hard_candidates: int = 0
    # adaptations
    runs: list[dict[str, Any]] = field(
        default_factory=lambda: [{"prior": "none"}, {"prior": "identity", "beta": 1.0},
                                 {"prior": "identity", "beta": 1.0, "finetune": True}]
    )  # fmt: skip
    adapt_epochs: int = 10
    finetune_epochs: int = 5
    # optimisation
    lr: float = 1e-3  # pretraining
    adapt_lr: float = 1e-2  # the canonicalizer during adaptation
    finetune_lr: float = 1e-4
    weight_decay: float = 1e-4
    scheduler: str = "cosine"
    batch_size: int = 32
    eval_batch_size: int = 64
    # outputs
    run_dir: str = "runs/adapt/synthetic"
    results: str | None = "benchmarks/results/adapt_synthetic"

    def __post_init__(self) -> None:
        if self.pretrain_rotation not in ("none", "z"):
            raise ValueError(f"pretrain_rotation must be 'none' (upright) or 'z', got {self.pretrain_rotation!r}")
        self.runs = [_check_run(i, r) for i, r in enumerate(self.runs)]
        if self.canon_search and self.canon_choice:
            raise ValueError("canon_search and canon_choice are alternatives (both pick a rotation of the base frame): set one")
        self.shapes_config()  # validates dataset, backbone and the data keys

    def shapes_config(self) -> ShapesBenchConfig:
        """The shape-benchmark settings of the same data, backbone and canonicalizer."""
        return ShapesBenchConfig(
            dataset=self.dataset, backbones=[self.backbone], seed=self.seed, test_seed=self.test_seed,
            data_root=self.data_root, n_per_class=self.n_per_class, n_val_per_class=self.n_val_per_class,
            n_test_per_class=self.n_test_per_class, noise=self.noise, val_fraction=self.val_fraction,
            points=self.points, width_scale=self.width_scale, dgcnn_k=self.dgcnn_k, canon_group="SO3",
            canon_k=self.canon_k, canon_num_points=self.canon_num_points,
            **{f.name: getattr(self, f.name) for f in fields(CanonicalizerSettings)},
        )  # fmt: skip

    def canonicalizer_spec(self, num_classes: int) -> dict[str, Any]:
        """Checkpoint spec of the canonicalizer every adaptation trains."""
        spec = model_spec("learned", self.backbone, self.shapes_config(), num_classes)["config"]["canonicalizer"]
        if self.canon_choice:
            spec = {"name": "octahedral_choice", "config": {"base": spec, "hidden": self.canon_choice_hidden}}
        if self.canon_search:
            spec = {"name": "pose_search", "config": {
                "base": spec, "num_candidates": self.canon_search_candidates, "scorer": self.canon_search_scorer,
                "lmax": self.canon_search_lmax, "num_radial": self.canon_search_radial, "hidden": self.canon_search_hidden,
                "num_points": self.canon_search_points, "train_candidates": self.canon_search_train_candidates,
                "hard_candidates": self.canon_search_hard_candidates}}  # fmt: skip
        if self.canon_regression:
            spec = {"name": "regressed_orientation", "config": {"base": spec, "hidden": self.canon_regression_hidden}}
        return spec

    def train_config(self, max_epochs: int, lr: float) -> TrainConfig:
        """Harness settings of one stage."""
        return TrainConfig(
            max_epochs=max_epochs, lr=lr, weight_decay=self.weight_decay, scheduler=self.scheduler, seed=self.seed,
            accelerator=self.accelerator, devices=self.devices, strategy=self.strategy, num_nodes=self.num_nodes,
            progress=self.progress,
        )  # fmt: skip


def _check_run(index: int, run: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(run, dict) or set(run) - RUN_KEYS or "prior" not in run:
        raise ValueError(f"runs[{index}] must be a mapping with 'prior' and optional 'beta', 'finetune'; got {run!r}")
    if run["prior"] not in PRIORS:
        raise ValueError(f"runs[{index}]: prior must be one of {PRIORS}, got {run['prior']!r}")
    beta = 0.0 if run["prior"] == "none" else float(run.get("beta", 1.0))
    if not beta >= 0:
        raise ValueError(f"runs[{index}]: beta must be >= 0, got {run.get('beta')!r}")
    return {"prior": run["prior"], "beta": beta, "finetune": bool(run.get("finetune", False))}


def _loaders(cfg: AdaptBenchConfig, data: Any) -> tuple[DataLoader, DataLoader]:
    """Training loader of the train split as is; validation clouds rotated once as in pretraining."""
    train_set = TensorDataset(data.train.pos, data.train.label)
    train = DataLoader(
        train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=len(train_set) > cfg.batch_size,
        generator=torch.Generator().manual_seed(cfg.seed),
    )  # fmt: skip
    val_pos = rotate_clouds(data.val.pos, cfg.pretrain_rotation, cfg.seed)
    return train, DataLoader(TensorDataset(val_pos, data.val.label), batch_size=cfg.eval_batch_size)


def pretrain(cfg: AdaptBenchConfig, data: Any, path: str | Path, resume: bool = False) -> nn.Module:
    """Train the plain backbone on ``data`` (rotated as ``cfg.pretrain_rotation``) and save it to ``path``.

    ``data``: :func:`~geocanon.bench.shapes.load_data`'s splits. Returns the backbone (eval mode).
    """
    shapes_cfg = cfg.shapes_config()
    torch.manual_seed(cfg.seed)
    model = checkpoint.build(model_spec("plain", cfg.backbone, shapes_cfg, len(data.classes)))
    train, val = _loaders(cfg, data)
    result = fit(model, ShapesObjective(cfg.pretrain_rotation), train, val,
                 cfg.train_config(cfg.pretrain_epochs, cfg.lr), Path(cfg.run_dir) / "pretrain", resume)  # fmt: skip
    meta = {
        "benchmark": "adapt", "dataset": cfg.dataset, "classes": data.classes, "points": cfg.points,
        "method": "plain", "backbone": cfg.backbone, "train_rotation": cfg.pretrain_rotation,
        "facts": {"epochs": result.epochs_run, "best_epoch": result.best_epoch, "train_time_s": result.train_time_s},
        "config": asdict(cfg),
    }  # fmt: skip
    checkpoint.save(path, model, meta=meta)
    return model.eval()


def obtain_backbone(
    cfg: AdaptBenchConfig, data: Any, path: str | Path | None = None, pretrain_missing: bool = False,
    resume: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:  # fmt: skip
    """Load the backbone checkpoint ``path`` (default ``cfg.backbone_checkpoint``), or pretrain it if missing.

    Returns (backbone in eval mode, its checkpoint meta). Raises ``ValueError`` if the checkpoint was
    trained on other classes or another rotation than ``cfg.pretrain_rotation``, or predicts another
    number of classes, and ``FileNotFoundError`` if it is missing and ``pretrain_missing`` is False.
    """
    path = Path(path or cfg.backbone_checkpoint)
    if not path.is_file():
        if not pretrain_missing:
            raise FileNotFoundError(f"backbone checkpoint {path} does not exist; pass --pretrain to train one")
        pretrain(cfg, data, path, resume)
    backbone, meta = checkpoint.load(path)
    if meta.get("classes") is not None and list(meta["classes"]) != list(data.classes):
        raise ValueError(f"backbone checkpoint {path} was trained on classes {meta['classes']}, not {data.classes}")
    if meta.get("train_rotation", cfg.pretrain_rotation) != cfg.pretrain_rotation:
        raise ValueError(
            f"backbone checkpoint {path} was trained with rotation {meta['train_rotation']!r}, but the config says "
            f"pretrain_rotation {cfg.pretrain_rotation!r}"
        )
    with torch.no_grad():
        outputs = backbone(data.test.pos[:1]).shape[-1]
    if outputs != len(data.classes):
        raise ValueError(f"backbone checkpoint {path} predicts {outputs} classes, the data have {len(data.classes)}")
    return backbone, meta


def _frames(model: Canonicalized, pos: Tensor, batch_size: int) -> Tensor:
    """Canonical rotations [S, 3, 3] of clouds ``pos`` [S, N, 3]."""
    model.eval()
    with torch.no_grad():
        chunks = [model.canonicalizer(pos[i : i + batch_size]).rotation for i in range(0, len(pos), batch_size)]
    return torch.cat(chunks)


def _correct(model: nn.Module, pos: Tensor, label: Tensor, batch_size: int) -> Tensor:
    """[S] bool: whether ``model`` classifies each cloud of ``pos`` [S, N, 3] as its label [S]."""
    return classify(model, pos, batch_size) == label


def _accuracy(model: nn.Module, pos: Tensor, label: Tensor, batch_size: int) -> float:
    """Accuracy in percent of ``model`` on clouds ``pos`` [S, N, 3] with labels [S]."""
    return 100.0 * _correct(model, pos, label, batch_size).double().mean().item()


def _per_class(correct: Tensor, label: Tensor, num_classes: int) -> list[float | None]:
    """Accuracy in percent per class (None for a class without test clouds) from ``correct`` [S] bool."""
    hits = torch.bincount(label, weights=correct.double(), minlength=num_classes)
    support = torch.bincount(label, minlength=num_classes)
    return [100.0 * h / n if n else None for h, n in zip(hits.tolist(), support.tolist())]


def evaluate(
    model: nn.Module, pos: Tensor, label: Tensor, seed: int, batch_size: int = 64, num_classes: int | None = None,
    trained_pose: str = "axis",
) -> dict[str, Any]:
    """Accuracy (percent) on upright clouds ``pos`` [S, N, 3] and on the same clouds SO(3)-rotated (``seed``).

    For a :class:`~geocanon.Canonicalized` model also the frames of the upright clouds: ``within_10deg``
    (fraction within 10° of the identity), ``mean_angle_deg`` (mean geodesic angle to it),
    ``up_angle_deg`` (mean angle between the canonical and the input z axis: what the axis prior
    constrains) and ``invariance_error`` (SO(3), 8 clouds, 2 trials); None otherwise. For an
    :class:`~geocanon.OctahedralChoice` or :class:`~geocanon.PoseSearch` among its canonicalizers also ``choice_ceiling``: the upright accuracy when
    each cloud gets the candidate closest to the pose the backbone was trained in — with ``trained_pose="axis"``
    (backbones trained on clouds rotated about z) the one that brings the canonical "up" closest to the
    input's, with ``trained_pose="identity"`` (one fixed upright pose) the one closest to the identity (an
    oracle choice: what a perfect head could reach with these base frames).
    ``per_class`` holds the upright, SO(3) and ceiling accuracies of every class (lists of length
    ``num_classes``, default ``label.max() + 1``; None where not measured).
    """
    classes = int(label.max()) + 1 if num_classes is None else num_classes
    upright = _correct(model, pos, label, batch_size)
    so3 = _correct(model, rotate_clouds(pos, "SO3", seed), label, batch_size)
    row: dict[str, Any] = {
        "accuracy_upright": 100.0 * upright.double().mean().item(),
        "accuracy_so3": 100.0 * so3.double().mean().item(),
        "n_test": len(label),
        "within_10deg": None, "mean_angle_deg": None, "up_angle_deg": None, "choice_ceiling": None,
        "per_class": {"upright": _per_class(upright, label, classes), "so3": _per_class(so3, label, classes),
                      "choice_ceiling": None},
    }  # fmt: skip
    if isinstance(model, Canonicalized):
        rotation = _frames(model, pos, batch_size)
        up = torch.tensor(UP, dtype=rotation.dtype)
        cos_up = (rotation @ up)[:, 2].clamp(-1.0, 1.0)  # (R u)·u with u = z
        row.update(
            within_10deg=fraction_within(rotation, 10.0),
            mean_angle_deg=mean_angle_to_identity(rotation),
            up_angle_deg=math.degrees(cos_up.acos().mean().item()),
        )
        choice = _candidate_choice(model.canonicalizer)
        if choice is not None:
            ceiling = _choice_ceiling(model.backbone, choice, pos, label, batch_size, trained_pose)
            row["choice_ceiling"] = 100.0 * ceiling.double().mean().item()
            row["per_class"]["choice_ceiling"] = _per_class(ceiling, label, classes)
    row["invariance_error"] = equivariance_error(model, pos[:8], group="SO3", output="invariant", trials=2, seed=seed)
    return row


def _candidate_choice(canon: nn.Module) -> OctahedralChoice | PoseSearch | None:
    """The OctahedralChoice or PoseSearch in a chain of canonicalizers wrapping one another through ``.base``, if any."""
    while canon is not None and not isinstance(canon, (OctahedralChoice, PoseSearch)):
        canon = getattr(canon, "base", None)
    return canon


def _forget_last_call(model: nn.Module) -> None:
    """Drop what modules keep of their last forward (``last_frame``, ``last_logits``, ...).

    Those tensors hold the autograd graph of that call, which ``copy.deepcopy`` refuses.
    """
    for module in model.modules():
        for name in [n for n in vars(module) if n.startswith("last_")]:
            setattr(module, name, None)


def _choice_ceiling(
    backbone: nn.Module, choice: OctahedralChoice | PoseSearch, pos: Tensor, label: Tensor, batch_size: int,
    trained_pose: str = "axis",
) -> Tensor:
    """[S] bool: correct on upright clouds with the oracle candidate of an OctahedralChoice or PoseSearch (see :func:`evaluate`)."""
    if trained_pose not in ("axis", "identity"):
        raise ValueError(f"trained_pose must be 'axis' or 'identity', got {trained_pose!r}")
    with torch.no_grad():
        base = torch.cat([choice.base(pos[i : i + batch_size]).rotation for i in range(0, len(pos), batch_size)])
        frames = base[:, None] @ choice.candidates.to(base.dtype)  # [S, K, 3, 3]
        if trained_pose == "axis":
            best = (frames @ torch.tensor(UP, dtype=base.dtype))[..., 2].argmax(1)  # [S]
        else:
            best = frames.diagonal(dim1=-2, dim2=-1).sum(-1).argmax(1)  # largest trace: smallest angle to I
        frames = base @ choice.candidates.to(base.dtype)[best]
        canonical = torch.einsum("snd,sde->sne", pos, frames)  # clouds are centred: no translation (SO3)
    return _correct(backbone, canonical, label, batch_size)


def _stage_time(run_dir: Path) -> tuple[float, int]:
    """Training time (s) and epochs of a harness stage from its ``result.json``."""
    result = json.loads((run_dir / "result.json").read_text())
    return result["train_time_s"], result["epochs_run"]


ROW_COLUMNS = ["model", "prior", "beta", "finetuned", "accuracy_upright", "accuracy_so3", "within_10deg",
               "mean_angle_deg", "up_angle_deg", "choice_ceiling", "invariance_error", "epochs", "trained_parameters",
               "train_time_s"]  # fmt: skip


def _prior_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The adapted (not fine-tuned) rows trained with a prior."""
    return [r for r in rows if r["prior"] not in (None, "none") and not r["finetuned"]]


def _selected(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The prior row with the best validation accuracy (the model selection the target is judged on)."""
    return max(_prior_rows(rows), key=lambda r: r["val_accuracy"])


def _verdict(rows: list[dict[str, Any]], n_test: int) -> str:
    """The target (prior rows' SO(3) accuracy within 1 point of the pretrained upright accuracy, above no prior)."""
    pretrained = next(r for r in rows if r["model"] == "pretrained")
    base = next((r for r in rows if r["prior"] == "none" and not r["finetuned"]), None)
    prior_rows = _prior_rows(rows)
    if not prior_rows:
        return ""
    best = _selected(rows)
    gap = best["accuracy_so3"] - pretrained["accuracy_upright"]
    lines = [
        (
            f"\n## Target\n\nOne test cloud is {100 / n_test:.2f} points. Pretrained backbone: "
            f"{pretrained['accuracy_upright']:.1f}% upright, {pretrained['accuracy_so3']:.1f}% SO(3)-rotated.\n"
        ),
        (
            f"* Prior chosen by validation accuracy: {best['prior']} β = {best['beta']:g} (val "
            f"{best['val_accuracy']:.1f}%): SO(3) accuracy {best['accuracy_so3']:.1f}%, {gap:+.1f} points from the "
            f"pretrained upright accuracy — target (within 1 point) **{'met' if gap >= -1.0 else 'NOT met'}**."
        ),
    ]
    if base is not None:
        diff = best["accuracy_so3"] - base["accuracy_so3"]
        lines.append(
            f"* Without prior: {base['accuracy_so3']:.1f}% SO(3) accuracy; the prior adds {diff:+.1f} points "
            f"({diff * n_test / 100:+.0f} test clouds)."
        )
    within = [r for r in prior_rows if abs(r["accuracy_so3"] - pretrained["accuracy_upright"]) <= 1.0]
    lines.append(
        "* β within 1 point of the pretrained upright accuracy: "
        + (", ".join(f"{r['prior']} β = {r['beta']:g}" for r in within) if within else "none")
        + "."
    )
    for tuned in (r for r in rows if r["finetuned"] and r["prior"] != "none"):
        gap = tuned["accuracy_so3"] - pretrained["accuracy_upright"]
        lines.append(
            f"* Adapted and fine-tuned, {tuned['prior']} prior β = {tuned['beta']:g} (still on while fine-tuning): "
            f"{tuned['accuracy_so3']:.1f}%, {gap:+.1f} points — {'within' if gap >= -1.0 else 'not within'} 1 point."
        )
    return "\n".join(lines)


def _per_class_table(rows: list[dict[str, Any]], classes: list[str]) -> str:
    """Markdown table of per-class accuracies: the pretrained model upright and SO(3)-rotated, then the SO(3)
    accuracies of the adaptations without prior, with the selected prior (and its choice ceiling), fine-tuned."""
    if not _prior_rows(rows):
        return ""
    best, pretrained = _selected(rows), next(r for r in rows if r["model"] == "pretrained")
    columns: dict[str, list[float | None]] = {
        "pretrained upright": pretrained["per_class"]["upright"],
        "pretrained SO(3)": pretrained["per_class"]["so3"],
    }
    for row in rows:
        if row["prior"] == "none" and not row["finetuned"]:
            columns["no prior SO(3)"] = row["per_class"]["so3"]
    columns[f"{best['model']} SO(3)"] = best["per_class"]["so3"]
    if best["per_class"]["choice_ceiling"] is not None:
        columns[f"{best['model']} choice_ceiling"] = best["per_class"]["choice_ceiling"]
    for row in rows:
        if row["finetuned"]:
            columns[f"{row['model']} SO(3)"] = row["per_class"]["so3"]
    table = [{"class": name, **{key: values[i] for key, values in columns.items()}} for i, name in enumerate(classes)]
    return (
        "\n## Per class\n\nTest accuracy (%) per class: where the canonicalizer loses, and whether a better choice "
        "among its candidates could have helped (choice_ceiling).\n\n" + markdown_table(table, ["class", *columns])
    )


def _markdown(cfg: AdaptBenchConfig, payload: dict[str, Any]) -> str:
    rows = payload["results"]
    status = "complete" if payload["complete"] else "PARTIAL (still running or interrupted; rows so far)"
    text = [
        f"# Equivariant adaptation of a pretrained {cfg.backbone}: `{cfg.label}` configuration — {status}\n",
        (
            f"Data: {payload['data']}, {cfg.points} points. The backbone ({cfg.backbone}, width {cfg.width_scale}) "
            f"was trained for {cfg.pretrain_epochs} epochs on "
            f"{'upright' if cfg.pretrain_rotation == 'none' else 'z-rotated'} clouds without canonicalization "
            f"({payload['backbone_checkpoint']}). Each adaptation freezes it and trains an E3nnCanonicalizer "
            f"(SO3; hidden_mul {cfg.canon_hidden_mul}, layers {cfg.canon_layers}, k {cfg.canon_k}, num_points "
            f"{cfg.canon_num_points}, power iterations {cfg.canon_power_iterations}, signs {cfg.canon_signs})"
            + (
                f" wrapped in an OctahedralChoice (a PointNet head of width {cfg.canon_choice_hidden} picks one of the "
                "24 cube rotations from the base-canonical cloud; the prior trains it through its choice loss)"
                if cfg.canon_choice else ""
            )
            + (
                " wrapped in a PoseSearch ("
                + (f"a PointNet of width {cfg.canon_search_hidden} scores the {cfg.canon_search_points}-point base-canonical cloud"
                   if cfg.canon_search_scorer == "pointnet" else
                   f"an MLP of width {cfg.canon_search_hidden} scores the degree ≤ {cfg.canon_search_lmax} spherical-harmonic "
                   f"moments on {cfg.canon_search_radial} shells of the base-canonical cloud")
                + f" rotated by each of {cfg.canon_search_candidates} grid rotations and the best is taken; "
                f"{cfg.canon_search_train_candidates} random ones per training step"
                + (f" plus each cloud's {cfg.canon_search_hard_candidates} best" if cfg.canon_search_hard_candidates else "")
                + "; the prior trains it through its choice loss)"
                if cfg.canon_search else ""
            )
            + (
                f", then in a RegressedOrientation (a PointNet head of width {cfg.canon_regression_hidden} regresses "
                "a rotation from the canonical cloud, trained through the prior on the final frame)"
                if cfg.canon_regression else ""
            )
            + f" for {cfg.adapt_epochs} epochs at lr {cfg.adapt_lr:g} with loss = cross-entropy + "
            f"β · prior on the training clouds as pretrained; fine-tuning then trains both for {cfg.finetune_epochs} "
            f"epochs at lr {cfg.finetune_lr:g}, the prior still on. Best-validation weights of each stage. Seed "
            f"{cfg.seed}.\n"
        ),
        (
            "accuracy_upright / accuracy_so3: test accuracy (%) on upright clouds and on the same clouds under one "
            f"Haar-random rotation each (seed {cfg.test_seed}). Frames of the upright test clouds: within_10deg = "
            "fraction within 10° of the identity, mean_angle_deg = mean geodesic angle to it, up_angle_deg = mean "
            "angle between the canonical and the input z axis. choice_ceiling (OctahedralChoice / PoseSearch only): upright "
            "accuracy if every cloud got the candidate rotation closest to the pose the backbone was trained in ("
            + ("the identity" if cfg.pretrain_rotation == "none" else "the one that best restores its z axis")
            + ") — the best any head could do with these base frames. invariance_error: max relative change of the logits of "
            "8 test clouds under random SO(3) rotations (float32; ~1e-6 = exactly invariant). Priors: identity "
            "‖R − I‖²_F = 4(1 − cos θ); axis ‖R z − z‖²; appearance: Chamfer distance between canonical and input cloud / mean "
            "squared radius (zero at every symmetry of the upright shape).\n"
        ),
        markdown_table(sorted(rows, key=_order), ROW_COLUMNS),
    ]
    if payload["complete"]:
        text.append(_verdict(rows, rows[0]["n_test"]))
        text.append(_per_class_table(rows, payload["classes"]))
    text.append(
        "\nModelNet40 is run only when its data and a GPU are available "
        f"(`geocanon adapt --benchmark --config` with `dataset: modelnet40`); "
        f"{'this run had no GPU, so there are no ModelNet40 rows.' if cfg.accelerator == 'cpu' else ''}"
    )
    return "\n".join(text)


def _order(row: dict[str, Any]) -> tuple[int, bool, float]:
    """Table order: pretrained, then the priors in the order of ``PRIORS`` (by β), fine-tuned after their adaptation."""
    return ((None, *PRIORS).index(row["prior"]), row["finetuned"], row["beta"] or 0.0)


def _name(run: dict[str, Any]) -> str:
    if run["prior"] is None:
        return "pretrained"
    prior = "no prior" if run["prior"] == "none" else f"{run['prior']} prior β={run['beta']:g}"
    return f"adapted{' + fine-tuned' if run['finetune'] else ''}, {prior}"


def run(
    cfg: AdaptBenchConfig,
    backbone_path: str | Path | None = None,
    pretrain_missing: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Pretrained backbone + every adaptation of ``cfg.runs``, evaluated; results written as they come.

    Each adapted model is saved to ``<run_dir>/<prior>_beta<β>[_finetuned]/model.pt``; results (JSON +
    Markdown with provenance) to ``cfg.results`` unless it is None. Returns the payload; the last
    adapted model is in ``payload["last_model"]`` (the path of its checkpoint).
    """
    start = time.perf_counter()
    data = load_data(cfg.shapes_config(), cfg.points)
    backbone, meta = obtain_backbone(cfg, data, backbone_path, pretrain_missing, resume)
    payload: dict[str, Any] = {
        "benchmark": "adapt", "dataset": cfg.dataset, "complete": False, "data": data.source,
        "backbone_checkpoint": str(backbone_path or cfg.backbone_checkpoint), "backbone_meta_facts": meta.get("facts"),
        "classes": data.classes,
        "units": {"accuracy_upright": "percent", "accuracy_so3": "percent", "mean_angle_deg": "degrees",
                  "up_angle_deg": "degrees"},
        "config": asdict(cfg), "results": [], "last_model": None, "provenance": {},
    }  # fmt: skip

    def write() -> None:
        payload["provenance"] = provenance(time.perf_counter() - start, [cfg.seed])
        if cfg.results is not None:
            write_results(cfg.results, payload, _markdown(cfg, payload))

    train, val = _loaders(cfg, data)
    val_pos = val.dataset.tensors[0]

    def row(model: nn.Module, spec: dict[str, Any], **facts: Any) -> dict[str, Any]:
        return {
            "model": _name(spec), "prior": spec["prior"], "beta": spec["beta"], "finetuned": spec["finetune"],
            **evaluate(model, data.test.pos, data.test.label, cfg.test_seed, cfg.eval_batch_size, len(data.classes),
                       trained_pose="identity" if cfg.pretrain_rotation == "none" else "axis"),
            "val_accuracy": _accuracy(model, val_pos, data.val.label, cfg.eval_batch_size), **facts,
        }  # fmt: skip

    facts = meta.get("facts") or {}
    payload["results"].append(row(backbone, {"prior": None, "beta": None, "finetune": False},
                                  epochs=facts.get("epochs"), trained_parameters=count_parameters(backbone),
                                  train_time_s=facts.get("train_time_s")))  # fmt: skip
    write()
    adapted: dict[tuple[str, float], Canonicalized] = {}
    for spec in cfg.runs:
        key = (spec["prior"], spec["beta"])
        prior = CanonicalizationPrior(spec["prior"], spec["beta"], axis=UP)
        stem = Path(cfg.run_dir) / f"{spec['prior']}_beta{spec['beta']:g}"
        if key not in adapted:
            torch.manual_seed(cfg.seed)
            canon = checkpoint.build(cfg.canonicalizer_spec(len(data.classes)))
            adapted[key] = adapt(copy.deepcopy(backbone), canon, train, val, prior,
                                 cfg.train_config(cfg.adapt_epochs, cfg.adapt_lr), stem, rotation=cfg.pretrain_rotation,
                                 resume=resume)  # fmt: skip
        model, stage, trained = adapted[key], stem / "adapt", count_parameters(adapted[key].canonicalizer)
        if spec["finetune"]:
            _forget_last_call(model)
            model = finetune(copy.deepcopy(model), train, val, prior, cfg.train_config(cfg.finetune_epochs,
                             cfg.finetune_lr), stem, rotation=cfg.pretrain_rotation, resume=resume)  # fmt: skip
            stage, trained = stem / "finetune", count_parameters(model)
        train_time, epochs = _stage_time(stage)
        result = row(model, spec, epochs=epochs, trained_parameters=trained, train_time_s=train_time)
        path = Path(f"{stem}{'_finetuned' if spec['finetune'] else ''}") / "model.pt"
        checkpoint.save(path, model, meta={"benchmark": "adapt", "classes": data.classes, "points": cfg.points,
                                           "run": spec, "row": result, "config": asdict(cfg)})  # fmt: skip
        payload["results"].append(result)
        payload["last_model"] = str(path)
        print(f"[adapt] {result['model']}: upright {result['accuracy_upright']:.1f}%, SO(3) "
              f"{result['accuracy_so3']:.1f}%, within 10° {result['within_10deg']:.2f}", flush=True)  # fmt: skip
        write()
    payload["complete"] = True
    write()
    return payload
