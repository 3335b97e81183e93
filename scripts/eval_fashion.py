#!/usr/bin/env python
"""Measure the class-conditional Fashion-MNIST model with the judge classifier.

For each sampler and step count (default: the book's DDPM 1000-step loop, and
DDIM and DPM-Solver++ at 10, 20 and 50 steps) it generates ``--per-class``
samples of every class and reports:

* **class fidelity**: the share of the first ``--fidelity-per-class`` (64)
  samples of each class that the judge assigns to the class asked for, per
  class and overall;
* **Fréchet distance** between the judge's penultimate features (128-d) of
  all generated samples (10 × per-class, 1,000 by default) and of 1,000 test
  images. For scale, the script also reports the distance between 1,000
  training and 1,000 test images (what a perfect generator would score).

The 1000-step DDPM loop is slow on a CPU: ``--ddpm-per-class`` lets it use
fewer samples (its Fréchet distance is then over fewer samples and biased
upwards; the table says how many).

Example::

    python scripts/eval_fashion.py --model assets/fashion/unet-cpu --judge assets/fashion/judge \\
        --guidance 2 --out runs/eval_fashion.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.fashion import sampling as fashion  # noqa: E402
from engine.fashion.judge import judge_images, load_classifier  # noqa: E402
from engine.metrics import frechet_distance  # noqa: E402
from engine.fashion.data import CLASS_NAMES, load_split, require_dataset, to_model_space, to_unit_range  # noqa: E402
from engine.presets import Preset  # noqa: E402

DEFAULT_RUNS = "DDPM:1000,DDIM:10,DDIM:20,DDIM:50,DPM-Solver++:10,DPM-Solver++:20,DPM-Solver++:50"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="assets/fashion/unet-cpu", help="diffusers UNet folder")
    p.add_argument("--judge", default="assets/fashion/judge")
    p.add_argument("--runs", default=DEFAULT_RUNS, help="comma-separated SAMPLER:STEPS")
    p.add_argument("--per-class", type=int, default=100, help="samples per class (10x this for the Fréchet distance)")
    p.add_argument("--fidelity-per-class", type=int, default=64)
    p.add_argument("--ddpm-per-class", type=int, default=None, help="fewer samples for the slow 1000-step DDPM")
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--batch", type=int, default=64, help="images per sampler call")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/eval_fashion.json")
    return p.parse_args(argv)


def generate_class(unet, schedule, label: int, n: int, sampler: str, steps: int, guidance: float, seed: int,
                   batch: int, cpu_bf16: bool | None) -> torch.Tensor:
    """``n`` samples of one class, ``(n, 1, 32, 32)`` in [0, 1], in calls of at most ``batch``."""
    out, done = [], 0
    while done < n:
        k = min(batch, n - done)
        result = fashion.sample_to_end(unet, label, k, sampler, steps, guidance, seed + 1000 * label + done,
                                       scheduler_config=schedule, cpu_bf16=cpu_bf16)
        out.append(result.images)
        done += k
    return torch.cat(out)


def main(argv=None) -> None:
    args = parse_args(argv)
    require_dataset()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    unet = fashion.load_class_unet(Preset("eval", "class-unet", path=str(Path(args.model).resolve())), "cpu",
                                   torch.float32, True)
    judge = load_classifier(Preset("judge", "classifier", path=str(Path(args.judge).resolve())), "cpu",
                                    torch.float32, True)
    schedule = fashion.scheduler_config_of(args.model)
    cpu_bf16 = False if args.fp32 else None

    test_x, test_y = load_split("test")
    train_x, _ = load_split("train")
    rng = np.random.default_rng(args.seed)
    test_pick = rng.choice(len(test_x), 1000, replace=False)
    train_pick = rng.choice(len(train_x), 1000, replace=False)
    test01 = to_unit_range(to_model_space(test_x[test_pick]))
    _, test_feats = judge_images(judge, test01)
    all_test_preds, _ = judge_images(judge, to_unit_range(to_model_space(test_x)))
    _, train_feats = judge_images(judge, to_unit_range(to_model_space(train_x[train_pick])))
    report = {
        "model": args.model, "guidance_scale": args.guidance, "judge": args.judge,
        "judge_test_accuracy": round(float((all_test_preds.numpy() == test_y).mean()), 4),
        "fd_train_vs_test_1000": round(frechet_distance(train_feats.numpy(), test_feats.numpy()), 3),
        "runs": [],
    }
    print(f"judge test accuracy {report['judge_test_accuracy']:.4f}; FD train vs test (1000 each) "
          f"{report['fd_train_vs_test_1000']:.3f}", flush=True)

    for spec in args.runs.split(","):
        sampler, steps = spec.rsplit(":", 1)
        steps = int(steps)
        per_class = args.per_class
        if sampler == "DDPM" and steps >= 1000 and args.ddpm_per_class:
            per_class = args.ddpm_per_class
        start = time.perf_counter()
        images, labels = [], []
        for c in tqdm(range(len(CLASS_NAMES)), desc=f"{sampler} {steps}", file=sys.stdout, mininterval=10):
            images.append(generate_class(unet, schedule, c, per_class, sampler, steps, args.guidance, args.seed,
                                         args.batch, cpu_bf16))
            labels.append(torch.full((per_class,), c))
        seconds = time.perf_counter() - start
        images, labels = torch.cat(images), torch.cat(labels)
        preds, feats = judge_images(judge, images)
        k = min(args.fidelity_per_class, per_class)
        per_class_fid = {}
        for c, name in enumerate(CLASS_NAMES):
            p = preds[labels == c][:k]
            per_class_fid[name] = round(float((p == c).float().mean()), 4)
        row = {
            "sampler": sampler, "steps": steps, "samples": len(images), "fidelity_per_class_n": k,
            "fidelity": round(float(np.mean(list(per_class_fid.values()))), 4),
            "fidelity_per_class": per_class_fid,
            "frechet_distance": round(frechet_distance(feats.numpy(), test_feats.numpy()), 3),
            "seconds": round(seconds, 1),
        }
        report["runs"].append(row)
        print(json.dumps({k_: v for k_, v in row.items() if k_ != "fidelity_per_class"}), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))

    print(markdown(report))


def markdown(report: dict) -> str:
    """The README tables: overall figures per sampler, then fidelity per class."""
    lines = [f"Guidance scale {report['guidance_scale']:g}. Judge test accuracy {report['judge_test_accuracy']:.1%}; "
             f"Fréchet distance of 1,000 training vs 1,000 test images: {report['fd_train_vs_test_1000']:.2f}.", "",
             "| sampler | steps | samples | class fidelity | Fréchet distance | CPU time |", "|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lines.append(f"| {r['sampler']} | {r['steps']} | {r['samples']} | {r['fidelity']:.1%} | "
                     f"{r['frechet_distance']:.2f} | {r['seconds']:.0f} s |")
    lines += ["", "| class | " + " | ".join(f"{r['sampler']} {r['steps']}" for r in report["runs"]) + " |",
              "|---|" + "---|" * len(report["runs"])]
    for name in CLASS_NAMES:
        lines.append(f"| {name} | " + " | ".join(f"{r['fidelity_per_class'][name]:.0%}" for r in report["runs"]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
