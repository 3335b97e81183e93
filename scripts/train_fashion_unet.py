#!/usr/bin/env python
"""Train the class-conditional Fashion-MNIST UNet (the book's chapter model, plus EMA, LR schedule and CFG).

The loss is the book's: MSE between the true noise and the UNet's prediction
at a uniformly drawn timestep (DDPM, Ho et al. 2020, Algorithm 1). On top:

* an exponential moving average (EMA) of the weights, which is what we ship;
* linear learning-rate warm-up then cosine decay;
* label dropout: ``--label-dropout`` (default 10%) of the labels become the
  null class 10, so the same model also predicts unconditional noise and can
  be sampled with classifier-free guidance (Ho & Salimans 2022).

It is resumable: ``--out DIR`` holds ``checkpoint.pt`` (model, EMA, optimiser,
schedule, step, RNG) and a run started again with the same ``--out`` carries
on from it. Every ``--sample-every`` steps it writes a grid (one row per class,
EMA weights, DPM-Solver++ 20 steps, guidance 2) to ``DIR/samples/``, and it
exports the EMA weights as a diffusers folder (``DIR/ema``, loadable with
``UNet2DModel.from_pretrained``, plus ``scheduler_config.json``).

Examples::

    # the CPU model (what ships in assets/fashion/unet-cpu)
    python scripts/train_fashion_unet.py --config cpu --steps 6000 --batch-size 128 --out runs/fashion_cpu
    # the book-sized model: needs a GPU (bf16 autocast on CUDA), 25 epochs of batch 256
    python scripts/train_fashion_unet.py --config book --epochs 25 --batch-size 256 --lr 3e-4 --out runs/fashion_book
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffusers import DDPMScheduler, UNet2DModel  # noqa: E402
from PIL import Image  # noqa: E402

from engine.fashion.configs import SCHEDULER_CONFIG, UNET_CONFIGS  # noqa: E402
from engine.fashion.data import (NULL_CLASS, NUM_CLASSES, load_split, random_flip,  # noqa: E402
                                 require_dataset, to_model_space)
from engine.fashion.sampling import sample_to_end  # noqa: E402
from engine.training import (autocast, ema_update, lr_at, optimizer_step, resumable_loop,  # noqa: E402
                             save_checkpoint, set_lr)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(UNET_CONFIGS), default="cpu", help="UNet size (book needs a GPU)")
    p.add_argument("--out", default="runs/fashion_cpu", help="run folder (checkpoint, samples, EMA export)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps in total (default: from --epochs)")
    p.add_argument("--epochs", type=float, default=25, help="epochs, used when --steps is not given")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=250, help="linear warm-up steps")
    p.add_argument("--deadline", default=None,
                   help="UTC time HH:MM to stop at; the cosine decay then follows the wall clock from the "
                        "first start to the deadline instead of the step count (for a shared CPU whose speed "
                        "is unknown). --steps still caps the run.")
    p.add_argument("--min-lr-ratio", type=float, default=0.02, help="cosine decays to lr * this")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--label-dropout", type=float, default=0.1, help="share of labels replaced by the null class")
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--sample-every", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--cpu-bf16", action="store_true",
                   help="bf16 autocast for the forward pass on CPU too (fp32 master weights); "
                        "on CUDA bf16 autocast is always on")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def deadline_epoch(hhmm: str, now: float) -> float:
    """Unix time of the next HH:MM (UTC) after ``now``."""
    import datetime as dt

    hour, minute = (int(v) for v in hhmm.split(":"))
    now_dt = dt.datetime.fromtimestamp(now, dt.timezone.utc)
    target = now_dt.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if target <= now_dt:
        target += dt.timedelta(days=1)
    return target.timestamp()


@torch.no_grad()
def sample_grid(unet: UNet2DModel, per_class: int = 8, steps: int = 20, guidance: float = 2.0,
                seed: int = 0) -> Image.Image:
    """One row per class, sampled by the app's own sampler (``engine.fashion.sampling.sample_to_end``:
    DPM-Solver++ with classifier-free guidance). Returns a grey PIL grid."""
    unet.eval()
    rows = [sample_to_end(unet, label, per_class, "DPM-Solver++", steps, guidance, seed, cpu_bf16=False).images
            for label in range(NUM_CLASSES)]
    img = (torch.cat(rows).clamp(0, 1) * 255).round().byte().cpu().numpy()[:, 0]
    grid = img.reshape(NUM_CLASSES, per_class, 32, 32).transpose(0, 2, 1, 3).reshape(NUM_CLASSES * 32, per_class * 32)
    return Image.fromarray(grid, mode="L")


def export_ema(ema: UNet2DModel, out: Path, meta: dict) -> None:
    """Write the EMA weights as a diffusers folder (safetensors) with the scheduler config."""
    tmp = out / "ema.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    ema.save_pretrained(tmp, safe_serialization=True)
    DDPMScheduler(**SCHEDULER_CONFIG).save_pretrained(tmp)  # scheduler_config.json
    (tmp / "training.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(out / "ema", ignore_errors=True)
    tmp.rename(out / "ema")


def main(argv=None) -> None:
    args = parse_args(argv)
    require_dataset()
    torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        torch.set_flush_denormal(True)
    out = Path(args.out)
    (out / "samples").mkdir(parents=True, exist_ok=True)

    images, labels = load_split("train")
    data = to_model_space(images)  # (60000, 1, 32, 32) in [-1, 1]
    targets = torch.as_tensor(labels.astype(np.int64))
    steps_per_epoch = len(data) // args.batch_size
    total = args.steps or int(args.epochs * steps_per_epoch)

    torch.manual_seed(args.seed)
    unet = UNet2DModel(**UNET_CONFIGS[args.config]).to(device)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, eps=1e-5, weight_decay=args.weight_decay)
    noise_scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)
    step, perm, cursor, gen = 0, None, 0, torch.Generator().manual_seed(args.seed)
    first_start = time.time()

    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        unet.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step, perm, cursor = state["step"], state["perm"], state["cursor"]
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        first_start = state.get("first_start", first_start)
        print(f"resumed from {ckpt_path} at step {step}", flush=True)

    n_params = sum(p.numel() for p in unet.parameters())
    meta = dict(config=args.config, unet=UNET_CONFIGS[args.config], params=n_params, batch_size=args.batch_size,
                lr=args.lr, warmup=args.warmup, ema_decay=args.ema_decay, label_dropout=args.label_dropout,
                total_steps=total, device=device, cpu_bf16=args.cpu_bf16)
    print(json.dumps(meta), flush=True)
    use_bf16 = device.startswith("cuda") or args.cpu_bf16
    started = time.time()
    end_time = deadline_epoch(args.deadline, first_start) if args.deadline else None
    if end_time:
        print(f"deadline {args.deadline} UTC: {(end_time - started) / 60:.1f} min left", flush=True)
    state = {"perm": perm, "cursor": cursor}

    def train_step(step: int) -> float:
        # Next batch: walk through a fresh permutation each epoch.
        if state["perm"] is None or state["cursor"] + args.batch_size > len(data):
            state["perm"], state["cursor"] = torch.randperm(len(data), generator=gen), 0
        idx = state["perm"][state["cursor"]: state["cursor"] + args.batch_size]
        state["cursor"] += args.batch_size
        x0 = random_flip(data[idx], generator=gen).to(device)
        y = targets[idx].clone()
        y[torch.rand(len(y), generator=gen) < args.label_dropout] = NULL_CLASS
        y = y.to(device)

        # Forward process q(x_t | x_0): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(x0),), generator=gen).to(device)
        noise = torch.randn(x0.shape, generator=gen).to(device)
        abar = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = abar.sqrt() * x0 + (1 - abar).sqrt() * noise

        progress = None if end_time is None else (time.time() - first_start) / (end_time - first_start)
        set_lr(opt, args.lr * lr_at(step, total, args.warmup, args.min_lr_ratio, progress))
        unet.train()
        with autocast(device, enabled=use_bf16):
            pred = unet(xt, t, class_labels=y).sample
        loss = F.mse_loss(pred.float(), noise)
        optimizer_step(opt, loss, unet)
        ema_update(ema, unet, step, args.ema_decay)
        return loss.item()

    def checkpoint(step: int, running: float, last: bool) -> None:
        save_checkpoint(ckpt_path, dict(model=unet.state_dict(), ema=ema.state_dict(), opt=opt.state_dict(),
                                         step=step, perm=state["perm"], cursor=state["cursor"], gen=gen.get_state(),
                                         torch_rng=torch.get_rng_state(), args=vars(args), first_start=first_start))
        export_ema(ema, out, {**meta, "step": step, "epochs": round(step * args.batch_size / len(data), 2),
                              "loss_ema": running, "wall_seconds_this_run": round(time.time() - started)})

    def grid(step: int, running: float, last: bool) -> None:
        sample_grid(ema).save(out / "samples" / f"step{step:06d}.png")
        print(f"\nstep {step}: loss {running:.4f}, grid saved", flush=True)

    step, _ = resumable_loop(step, total, train_step, desc=f"train {args.config}",
                             every={args.checkpoint_every: checkpoint, args.sample_every: grid},
                             stop=lambda: end_time is not None and time.time() >= end_time)
    print(f"done: {step} steps in {time.time() - started:.0f} s this run; EMA weights in {out / 'ema'}", flush=True)


if __name__ == "__main__":
    main()
