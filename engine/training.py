"""What the training scripts share: the learning-rate schedule, the EMA, checkpoints, the resumable loop.

``scripts/train_fashion_unet.py`` and ``scripts/train_mini_sd.py`` both train
with AdamW, a linear warm-up then cosine decay (Loshchilov & Hutter 2017,
"SGDR"), gradient clipping at 1, and an exponential moving average of the
weights that is what ships (as in DDPM, Ho et al. 2020, appendix B). A run is
resumable: a checkpoint holds the model, the EMA, the optimiser, the step and
whatever the script adds, written atomically. The app never imports this.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm import tqdm


def lr_at(step: int, total: int, warmup: int, min_ratio: float = 0.02, progress: float | None = None) -> float:
    """Multiplier of the base LR: linear warm-up to 1, then cosine decay to ``min_ratio``.

    ``progress`` (0..1) overrides the step-based progress (a wall-clock schedule).
    """
    if step < warmup:
        return (step + 1) / warmup
    if progress is None:
        progress = (step - warmup) / max(1, total - warmup)
    progress = min(1.0, max(0.0, progress))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, model: torch.nn.Module,
                   max_norm: float = 1.0) -> None:
    """Backward, clip the gradient norm at ``max_norm``, step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, max_decay: float) -> None:
    """EMA with the usual warm-up: decay = min(max_decay, (1 + step) / (10 + step))."""
    decay = min(max_decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - decay)


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves half a checkpoint."""
    tmp = Path(path).with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, device: str) -> dict | None:
    path = Path(path)
    return torch.load(path, map_location=device, weights_only=False) if path.exists() else None


def autocast(device: str, enabled: bool | None = None):
    """bf16 autocast on CUDA (or where ``enabled``); a no-op context on the CPU otherwise (fp32 there)."""
    on = device.startswith("cuda") if enabled is None else enabled
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16,
                          enabled=on)


def resumable_loop(step: int, total: int, train_step: Callable[[int], float], *, desc: str,
                   running: float | None = None,
                   every: Sequence[tuple[int, Callable[[int, float, bool], None]]] = (),
                   stop: Callable[[], bool] = lambda: False) -> tuple[int, float | None]:
    """Run ``train_step(step) -> loss`` from ``step`` to ``total`` with a progress bar and a running loss.

    ``every``: (interval n, callback ``(step, running, last)``) pairs, each
    callback called after every n-th step and after the last one (checkpoints,
    sample grids). Pairs, not a dict keyed by n: two callbacks may share an
    interval. ``stop()`` ends the run early (a deadline). Returns (step, running loss).
    """
    if isinstance(every, dict):
        raise TypeError("every takes (interval, callback) pairs: a dict keyed by interval drops callbacks "
                        "that share one.")
    bar = tqdm(total=total, initial=step, desc=desc, mininterval=10, file=sys.stdout)
    while step < total and not stop():
        loss = train_step(step)
        step += 1
        running = loss if running is None else 0.98 * running + 0.02 * loss
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}", refresh=False)
        last = step == total or stop()
        for interval, callback in every:
            if step % interval == 0 or last:
                callback(step, running, last)
    bar.close()
    return step, running
