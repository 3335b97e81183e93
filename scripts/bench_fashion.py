#!/usr/bin/env python
"""Benchmark the class-conditional sampler: CPU wall time for 16 images per sampler and step count.

Each row is the median of ``--repeats`` timed runs after one warm-up run,
through ``engine.fashion.sampling.sample`` exactly as the tab calls it (classifier-free
guidance on, so two UNet evaluations per step when the guidance scale is > 1).
The last column is the speed-up over the book's 1000-step DDPM loop.

Example::

    python scripts/bench_fashion.py --model assets/fashion/unet-cpu
    python scripts/bench_fashion.py --fp32          # without bf16 autocast
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.fashion import sampling as fashion  # noqa: E402
from engine.presets import Preset  # noqa: E402

DEFAULT_RUNS = "DDPM:1000,DDIM:10,DDIM:20,DDIM:50,DPM-Solver++:10,DPM-Solver++:20,DPM-Solver++:50"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="assets/fashion/unet-cpu")
    p.add_argument("--runs", default=DEFAULT_RUNS, help="comma-separated SAMPLER:STEPS")
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row (DDPM 1000 runs once)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on CPU")
    p.add_argument("--label", default="Sandal")
    return p.parse_args(argv)


def time_run(unet, schedule, args, sampler: str, steps: int, cpu_bf16) -> float:
    start = time.perf_counter()
    fashion.sample_to_end(unet, args.label, args.count, sampler, steps, args.guidance, 0, scheduler_config=schedule,
                          cpu_bf16=cpu_bf16)
    return time.perf_counter() - start


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    unet = fashion.load_class_unet(Preset("bench", "class-unet", path=str(Path(args.model).resolve())), "cpu",
                                   torch.float32, True)
    schedule = fashion.scheduler_config_of(args.model)
    cpu_bf16 = False if args.fp32 else None
    dtype = "fp32" if args.fp32 or not fashion.use_cpu_bf16("cpu") else "bf16 autocast"
    params = sum(p.numel() for p in unet.parameters())

    rows = []
    for spec in tqdm(args.runs.split(","), desc="bench", file=sys.stderr):
        sampler, steps = spec.rsplit(":", 1)
        steps = int(steps)
        time_run(unet, schedule, args, sampler, min(steps, 20), cpu_bf16)  # warm-up
        repeats = 1 if steps >= 500 else args.repeats
        times = [time_run(unet, schedule, args, sampler, steps, cpu_bf16) for _ in range(repeats)]
        rows.append((sampler, steps, statistics.median(times)))

    base = next((t for s, n, t in rows if s == "DDPM" and n == 1000), None)
    print(f"\n{args.count} images, guidance {args.guidance:g}, {params / 1e6:.2f} M-parameter UNet, {dtype}, "
          f"{args.threads} threads, torch {torch.__version__}\n")
    print("| sampler | steps | wall time (s) | images/s | speed-up vs DDPM 1000 |")
    print("|---|---|---|---|---|")
    for sampler, steps, t in rows:
        ratio = f"{base / t:.0f}×" if base else "n/a"
        print(f"| {sampler} | {steps} | {t:.2f} | {args.count / t:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
