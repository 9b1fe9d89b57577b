"""The one training harness every benchmark uses, on Lightning.

A benchmark supplies a model, an *objective* (``objective(model, batch, stage) -> {"loss": ..., metrics}``)
and data loaders; :func:`fit` trains with early stopping on the validation loss, checkpoints
(``best`` and ``last``) under ``run_dir/checkpoints``, CSV logs under ``run_dir/logs``, a progress
bar, fixed seeds, and passes accelerator / devices / strategy / num_nodes through to Lightning so the
same command runs on several GPUs or nodes. ``resume=True`` continues from ``last.ckpt``; a run whose
``result.json`` exists is not trained again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, EMAWeightAveraging, ModelCheckpoint, TQDMProgressBar, WeightAveraging
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader

__all__ = ["FitResult", "LitTask", "Objective", "TrainConfig", "WarmupEMA", "fit", "train_config"]

Objective = Callable[[nn.Module, Any, str], dict[str, Tensor]]


@dataclass
class HardwareSettings:
    """Lightning pass-through fields every benchmark config inherits (YAML keys of the same names)."""

    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    progress: bool = True


@dataclass
class TrainConfig:
    """Optimisation and hardware settings shared by all benchmarks."""

    max_epochs: int = 100
    lr: float = 1e-3
    weight_decay: float = 0.0
    scheduler: str = "cosine"  # "cosine" or "none"
    patience: int | None = None  # early-stopping patience in validation checks (None: off)
    check_val_every_n_epoch: int = 1
    gradient_clip_val: float | None = None
    max_time_s: float | None = None  # wall-clock cap on training (Lightning ``max_time``); None: epochs only
    # exponential moving average of the weights (Lightning's EMAWeightAveraging, or WarmupEMA with ema_warmup), updated
    # every step; validation, checkpoints and the returned model use the averaged weights. None: off
    ema_decay: float | None = None
    # ramp the averaging decay up as min(ema_decay, (1 + n) / (10 + n)) after n updates (see WarmupEMA), as nequip does;
    # False: the fixed decay, whose average keeps ema_decay^steps of the first step's weights (10% after 2300 steps at 0.999)
    ema_warmup: bool = False
    seed: int = 0
    accelerator: str = "cpu"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def train_config(settings: Any, seed: int) -> TrainConfig:
    """A :class:`TrainConfig` from the same-named fields of a benchmark config (others keep their defaults)."""
    names = {f.name for f in fields(TrainConfig)} - {"seed", "extra"}
    return TrainConfig(seed=seed, **{name: getattr(settings, name) for name in names if hasattr(settings, name)})


class WarmupEMA(WeightAveraging):
    """Exponential moving average of the weights whose decay ramps up: ``min(decay, (1 + n) / (10 + n))`` after n updates.

    Lightning's :class:`~lightning.pytorch.callbacks.EMAWeightAveraging` has a fixed decay, so its average keeps a share
    ``decay^steps`` of the weights after the first step (nearly the random initialisation): at decay 0.999 still 10%
    after 2300 steps, which ruined the 36-epoch runs of the molecules benchmark (frame averaging on ethanol 178 against
    53 meV/Å without averaging). The ramp (the rule of nequip's EMA and TensorFlow's ``num_updates``) weighs early
    weights out within a few hundred steps. Updated after every optimiser step, like ``EMAWeightAveraging``.
    """

    def __init__(self, decay: float = 0.999) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        super().__init__(avg_fn=self.average)

    def average(self, averaged: Tensor, current: Tensor, num_averaged: Tensor | int) -> Tensor:
        """The ``avg_fn`` of :class:`torch.optim.swa_utils.AveragedModel`: the average after ``num_averaged + 1`` updates."""
        decay = min(self.decay, (1 + int(num_averaged)) / (10 + int(num_averaged)))
        return decay * averaged + (1 - decay) * current


class LitTask(L.LightningModule):
    """Wraps ``model`` and ``objective`` for Lightning; logs ``{stage}/{metric}`` per epoch."""

    def __init__(self, model: nn.Module, objective: Objective, config: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.objective = objective
        self.config = config

    def _step(self, batch: Any, stage: str) -> Tensor:
        metrics = self.objective(self.model, batch, stage)
        size = _batch_size(batch)
        for name, value in metrics.items():
            self.log(f"{stage}/{name}", value.detach(), on_step=False, on_epoch=True, batch_size=size, sync_dist=True,
                     prog_bar=(name == "loss" and stage == "val"))
        return metrics["loss"]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        with torch.enable_grad():  # objectives that differentiate w.r.t. inputs (forces) need autograd
            return self._step(batch, "val")

    def configure_optimizers(self):
        cfg = self.config
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.scheduler == "none":
            return optimizer
        if cfg.scheduler != "cosine":
            raise ValueError(f"scheduler must be 'cosine' or 'none', got {cfg.scheduler!r}")
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.max_epochs, 1))
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def _batch_size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (list, tuple)) else next(iter(batch.values())) if isinstance(batch, dict) else batch
    return int(first.shape[0])


@dataclass
class FitResult:
    """What :func:`fit` returns (and stores in ``run_dir/result.json``)."""

    best_val_loss: float
    best_epoch: int
    epochs_run: int
    train_time_s: float
    best_checkpoint: str


def fit(
    model: nn.Module,
    objective: Objective,
    train_loader: DataLoader,
    val_loader: DataLoader,
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
) -> FitResult:
    """Train ``model`` in place and load its best-validation weights back into it.

    Args:
        model: the module to train (its state at return is the best validation epoch's).
        objective: ``objective(model, batch, stage)`` -> dict with "loss" (and any metrics).
        train_loader, val_loader: PyTorch data loaders.
        config: see :class:`TrainConfig`.
        run_dir: folder for checkpoints, logs and ``result.json``.
        resume: continue from ``run_dir/checkpoints/last.ckpt`` if present; a finished run
            (``result.json`` present) only reloads its best weights.
    """
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    result_file = run_dir / "result.json"
    task = LitTask(model, objective, config)
    if resume and result_file.is_file():
        result = FitResult(**json.loads(result_file.read_text()))
        # looked up inside run_dir: the folder may have been moved or renamed since it was trained
        _load_weights(task, ckpt_dir / Path(result.best_checkpoint).name)
        return result
    L.seed_everything(config.seed, workers=True, verbose=False)
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min")
    # Lightning's save_last only writes when the monitored metric improves: a second callback keeps the latest epoch
    latest = ModelCheckpoint(
        dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False
    )
    callbacks: list[L.Callback] = [best, latest]
    if config.ema_decay is not None:
        if not 0.0 < config.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or None, got {config.ema_decay}")
        callbacks.append(WarmupEMA(config.ema_decay) if config.ema_warmup else EMAWeightAveraging(decay=config.ema_decay))
    if config.patience is not None:
        callbacks.append(EarlyStopping(monitor="val/loss", mode="min", patience=config.patience))
    if config.progress:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, len(train_loader) // 4)))
    trainer = L.Trainer(
        max_epochs=config.max_epochs,
        accelerator=config.accelerator,
        devices=config.devices,
        strategy=config.strategy,
        num_nodes=config.num_nodes,
        callbacks=callbacks,
        logger=CSVLogger(run_dir, name="logs", version=0),
        check_val_every_n_epoch=config.check_val_every_n_epoch,
        gradient_clip_val=config.gradient_clip_val,
        max_time=None if config.max_time_s is None else timedelta(seconds=config.max_time_s),
        enable_progress_bar=config.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, len(train_loader))),
        deterministic=False,
    )
    last = ckpt_dir / "last.ckpt"
    time_file = run_dir / "train_time.json"
    previous = json.loads(time_file.read_text())["train_time_s"] if resume and time_file.is_file() else 0.0
    start = time.perf_counter()
    trainer.fit(task, train_loader, val_loader, ckpt_path=str(last) if resume and last.is_file() else None)
    elapsed = previous + time.perf_counter() - start
    run_dir.mkdir(parents=True, exist_ok=True)
    time_file.write_text(json.dumps({"train_time_s": elapsed}))
    best_path = best.best_model_path or str(last)
    _load_weights(task, best_path)
    best_epoch = int(torch.load(best_path, map_location="cpu", weights_only=False).get("epoch", -1))
    score = best.best_model_score
    result = FitResult(
        best_val_loss=float(score) if score is not None else float("nan"),
        best_epoch=best_epoch,
        epochs_run=trainer.current_epoch,
        train_time_s=elapsed,
        best_checkpoint=best_path,
    )
    result_file.write_text(json.dumps(asdict(result), indent=2))
    return result


def _load_weights(task: LitTask, path: str | Path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    task.load_state_dict(state)
