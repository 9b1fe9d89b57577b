"""Time training steps on the GPU and choose the epoch budgets that fit a wall-clock budget.

Step: ``python benchmarks/gpu/calibrate.py step CONFIG.yaml OUT.json`` times optimizer steps of the config's
first method and backbone (batch of its ``batch_size`` clouds of ``points`` points, its training
augmentation, AdamW) on CUDA. Run one per config at the same time to time them as they will share the GPU.
Plan: ``python benchmarks/gpu/calibrate.py plan SECONDS TRAIN_SHAPES STEP.json [STEP.json ...]`` prints
``NAME_EPOCHS=n`` lines (n epochs of ``TRAIN_SHAPES // batch_size`` steps at the measured rate, times
``OVERHEAD`` for Lightning, validation and data loading, fit in SECONDS).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from geocanon import checkpoint
from geocanon.bench.common import load_config
from geocanon.bench.shapes import ShapesBenchConfig, ShapesObjective, model_spec

OVERHEAD = 1.3
WARMUP, TIMED = 5, 20


def time_steps(config: Path) -> dict:
    """Seconds per training step of ``config``'s first method × backbone on CUDA (the CPU where there is none)."""
    cfg = load_config(ShapesBenchConfig, config)
    method, backbone = cfg.methods[0], cfg.backbones[0]
    budget = cfg.budget(backbone)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = checkpoint.build(model_spec(method, backbone, cfg, 40)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    objective = ShapesObjective(cfg.protocols[0].split("/")[0], cfg.train_scale, cfg.train_jitter)
    generator = torch.Generator().manual_seed(0)
    pos = torch.randn(budget["batch_size"], budget["points"], 3, generator=generator)
    pos = (pos / pos.norm(dim=-1).amax(-1)[:, None, None]).to(device)  # unit-sphere Gaussian blobs: cost only
    label = torch.randint(0, 40, (budget["batch_size"],), generator=generator).to(device)
    for step in range(WARMUP + TIMED):
        if step == WARMUP:
            _synchronize(device)
            start = time.perf_counter()
        optimizer.zero_grad()
        objective(model, (pos, label), "train")["loss"].backward()
        optimizer.step()
    _synchronize(device)
    seconds = (time.perf_counter() - start) / TIMED
    return {"name": backbone, "method": method, "batch_size": budget["batch_size"], "s_per_step": seconds,
            "device": str(device)}  # fmt: skip


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def plan(seconds: float, train_shapes: int, steps: list[dict]) -> list[str]:
    """``NAME_EPOCHS=n`` lines: the epochs of each timed model that fit in ``seconds``."""
    lines = []
    for s in steps:
        epoch_s = (train_shapes // s["batch_size"]) * s["s_per_step"] * OVERHEAD
        lines.append(f"{s['name'].upper()}_EPOCHS={max(1, int(seconds // epoch_s))}")
    return lines


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "step":
        result = time_steps(Path(sys.argv[2]))
        Path(sys.argv[3]).write_text(json.dumps(result))
        print(json.dumps(result))
    elif len(sys.argv) > 4 and sys.argv[1] == "plan":
        steps = [json.loads(Path(p).read_text()) for p in sys.argv[4:]]
        print("\n".join(plan(float(sys.argv[2]), int(sys.argv[3]), steps)))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
