#!/usr/bin/env python
"""Train the judge: a small CNN Fashion-MNIST classifier used to measure the diffusion model.

It sees images the way the diffusion model makes them: 32×32, 28×28 padded by
2 px, in [-1, 1], randomly flipped left-right during training (the diffusion
model is trained with flips too, so its ankle boots may point either way).
AdamW with a one-cycle (warm-up + cosine) schedule, a few epochs on CPU.

Writes ``config.json`` + ``model.safetensors`` + ``metrics.json`` to ``--out``.

Example::

    python scripts/train_judge.py --epochs 4 --out assets/fashion/judge
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.fashion.judge import FashionJudge, judge_images  # noqa: E402
from engine.fashion.data import CLASS_NAMES, load_split, random_flip, require_dataset, to_model_space  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="assets/fashion/judge")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def evaluate(judge: FashionJudge, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Overall and per-class accuracy of ``judge`` on model-space images ``(N, 1, 32, 32)``."""
    judge.eval()
    preds, _ = judge_images(judge, (images + 1) / 2)
    correct = preds == labels
    per_class = {CLASS_NAMES[c]: round(correct[labels == c].float().mean().item(), 4) for c in range(len(CLASS_NAMES))}
    return {"accuracy": round(correct.float().mean().item(), 4), "per_class": per_class}


def main(argv=None) -> None:
    args = parse_args(argv)
    require_dataset()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    train_x, train_y = load_split("train")
    test_x, test_y = load_split("test")
    train_x, test_x = to_model_space(train_x), to_model_space(test_x)
    train_y, test_y = torch.as_tensor(train_y.astype(np.int64)), torch.as_tensor(test_y.astype(np.int64))

    judge = FashionJudge(width=args.width)
    steps_per_epoch = len(train_x) // args.batch_size
    opt = torch.optim.AdamW(judge.parameters(), lr=args.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch,
                                                pct_start=0.15)
    start = time.time()
    for epoch in range(args.epochs):
        judge.train()
        perm = torch.randperm(len(train_x), generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"judge epoch {epoch + 1}/{args.epochs}", mininterval=10, file=sys.stdout)
        for i in bar:
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            x = random_flip(train_x[idx], generator=gen)
            loss = F.cross_entropy(judge(x), train_y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        print(f"epoch {epoch + 1}: test accuracy {evaluate(judge, test_x, test_y)['accuracy']:.4f}", flush=True)

    metrics = evaluate(judge, test_x, test_y)
    metrics.update(epochs=args.epochs, batch_size=args.batch_size, train_seconds=round(time.time() - start),
                   params=sum(p.numel() for p in judge.parameters()))
    print(json.dumps(metrics, indent=2))

    from safetensors.torch import save_file

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({"architecture": "FashionJudge", **judge.config,
                                                  "input": "(N, 1, 32, 32) in [-1, 1]",
                                                  "classes": list(CLASS_NAMES)}, indent=2))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"saved to {out}")


if __name__ == "__main__":
    main()
