#!/usr/bin/env python
"""Train the noise-aware classifier p(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021, §4).

Each batch draws Fashion-MNIST training images x_0 (32 px, [-1, 1], random flips), a timestep t per image and
noise ε, forms x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε with the diffusion model's schedule (the book's DDPM schedule,
1000 steps, linear betas), and minimises the cross-entropy of the classifier's logits at (x_t, t) against
the label. Plain cross-entropy, no label smoothing: guidance follows ∇ log p, so p should stay calibrated.

The timesteps are weighted towards the middle of the schedule, where a class is decided and guidance acts:
a share ``--middle-share`` of them comes from N(``--middle-mean``, ``--middle-std``²) (clipped to 0 … 999),
the rest uniformly from 0 … 999 (at t ≈ 999 the image is all noise, at t ≈ 0 the class is fixed already).

AdamW, linear warm-up then cosine decay, bf16 autocast on the CPU (``--fp32`` turns it off), an EMA of the
weights (what ships). Resumable: ``--out`` holds ``checkpoint.pt``; a run started again carries on. At the
end it writes ``config.json``, ``model.safetensors`` (EMA, fp32) and ``metrics.json`` (test accuracy by t) to
``--export``.

Example::

    python scripts/train_noisy_classifier.py --steps 3000 --out runs/noisy_classifier \\
        --export assets/fashion/noisy-classifier
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.fashion.classifier import NoisyClassifier  # noqa: E402
from engine.fashion.configs import CLASS_NAMES, SCHEDULER_CONFIG  # noqa: E402
from engine.fashion.data import load_split, random_flip, require_dataset, to_model_space  # noqa: E402
from engine.training import (autocast, ema_update, load_checkpoint, lr_at, optimizer_step,  # noqa: E402
                             resumable_loop, save_checkpoint, set_lr)

#: The timesteps of the accuracy-by-t table in the model card.
EVAL_TIMESTEPS = (0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/noisy_classifier", help="run folder (checkpoint)")
    p.add_argument("--export", default="assets/fashion/noisy-classifier", help="where the EMA weights go")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--widths", default="32,64,128", help="channels per level (32, 16, 8 px ...)")
    p.add_argument("--middle-share", type=float, default=0.6, help="share of t drawn around the middle")
    p.add_argument("--middle-mean", type=float, default=450.0)
    p.add_argument("--middle-std", type=float, default=150.0)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--eval-per-t", type=int, default=2000, help="test images per timestep in the final table")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def alphas_cumprod() -> torch.Tensor:
    """ᾱ_t for t = 0 … 999 of the diffusion model's schedule (float32, ``(1000,)``)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULER_CONFIG).alphas_cumprod.float()


def draw_timesteps(n: int, args: argparse.Namespace, gen: torch.Generator, total: int = 1000) -> torch.Tensor:
    """``n`` timesteps ``(n,)`` long: a share ``middle_share`` from N(middle_mean, middle_std²), clipped to
    0 … total−1, the rest uniform."""
    uniform = torch.randint(0, total, (n,), generator=gen)
    middle = args.middle_mean + args.middle_std * torch.randn(n, generator=gen)
    middle = middle.round().clamp(0, total - 1).long()
    return torch.where(torch.rand(n, generator=gen) < args.middle_share, middle, uniform)


def noised(x0: torch.Tensor, t: torch.Tensor, abar: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A draw of q(x_t | x_0): √ᾱ_t x_0 + √(1−ᾱ_t) ε (Ho et al. 2020, eq. 4).
    ``x0`` ``(N, 1, 32, 32)``, ``t`` ``(N,)`` → ``(N, 1, 32, 32)``."""
    a = abar[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=gen)


@torch.no_grad()
def accuracy_by_t(model: NoisyClassifier, images: torch.Tensor, labels: torch.Tensor, abar: torch.Tensor,
                  timesteps=EVAL_TIMESTEPS, seed: int = 0) -> dict:
    """Test accuracy of ``model`` on ``images`` ``(N, 1, 32, 32)`` noised to each t (fixed noise seed), as
    {"t": [...], "accuracy": [...], "mean": the average over t}."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    accuracy = []
    for t in timesteps:
        steps = torch.full((len(images),), t, dtype=torch.long)
        x_t = noised(images, steps, abar, gen)
        preds = torch.cat([model(chunk, t).argmax(1) for chunk in x_t.split(500)])
        accuracy.append(round(float((preds == labels).float().mean()), 4))
    return {"t": list(timesteps), "accuracy": accuracy, "mean": round(float(np.mean(accuracy)), 4)}


def export(ema: NoisyClassifier, folder: Path, metrics: dict) -> None:
    """``config.json`` + ``model.safetensors`` (fp32) + ``metrics.json`` into ``folder``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.float().contiguous() for k, v in ema.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architecture": "NoisyClassifier", **ema.config, "input": "x_t (N, 1, 32, 32) in model space, t (N,) 0-999",
        "classes": list(CLASS_NAMES), "schedule": SCHEDULER_CONFIG}, indent=2) + "\n")
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def main(argv=None) -> None:
    args = parse_args(argv)
    require_dataset()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    images, labels = load_split("train")
    data, targets = to_model_space(images), torch.as_tensor(labels.astype(np.int64))
    abar = alphas_cumprod()

    model = NoisyClassifier(widths=tuple(int(w) for w in args.widths.split(",")))
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = load_checkpoint(out / "checkpoint.pt", "cpu") or {"step": 0, "seconds": 0.0}
    if "model" in state:
        model.load_state_dict(state["model"]), ema.load_state_dict(state["ema"]), opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        print(f"resumed at step {state['step']}", flush=True)
    started = time.time()

    def train_step(step: int) -> float:
        idx = torch.randint(0, len(data), (args.batch_size,), generator=gen)
        t = draw_timesteps(args.batch_size, args, gen)
        x_t = noised(random_flip(data[idx], generator=gen), t, abar, gen)
        set_lr(opt, args.lr * lr_at(step, args.steps, args.warmup))
        model.train()
        with autocast("cpu", enabled=not args.fp32):
            logits = model(x_t, t)
        loss = F.cross_entropy(logits.float(), targets[idx])
        optimizer_step(opt, loss, model)
        ema_update(ema, model, step, args.ema_decay)
        return loss.item()

    def checkpoint(step: int, running: float, last: bool) -> None:
        save_checkpoint(out / "checkpoint.pt", dict(
            model=model.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(), gen=gen.get_state(), step=step,
            seconds=state["seconds"] + time.time() - started, loss=running, args=vars(args)))

    step, running = resumable_loop(state["step"], args.steps, train_step, desc="noisy classifier",
                                   every=[(args.checkpoint_every, checkpoint)])
    finish(ema, args, abar, load_checkpoint(out / "checkpoint.pt", "cpu"))


def finish(ema: NoisyClassifier, args: argparse.Namespace, abar: torch.Tensor, state: dict) -> None:
    """Measure the EMA weights' test accuracy by t and export them with the training figures."""
    test_x, test_y = load_split("test")
    pick = np.random.default_rng(args.seed).choice(len(test_x), args.eval_per_t, replace=False)
    table = accuracy_by_t(ema, to_model_space(test_x[pick]), torch.as_tensor(test_y[pick].astype(np.int64)), abar)
    metrics = {"test_accuracy_by_t": table, "test_images_per_t": args.eval_per_t, "steps": state["step"],
               "batch_size": args.batch_size, "train_cpu_seconds": round(state["seconds"]),
               "final_loss_ema": round(state["loss"], 4), "threads": args.threads,
               "params": sum(p.numel() for p in ema.parameters()), "args": state["args"]}
    print(json.dumps(table), flush=True)
    export(ema, Path(args.export), metrics)
    print(f"exported to {args.export}", flush=True)


if __name__ == "__main__":
    main()
