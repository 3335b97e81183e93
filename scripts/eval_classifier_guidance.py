#!/usr/bin/env python
"""Measure classifier guidance against classifier-free guidance on Fashion-MNIST: class fidelity and cost.

For each panel of the Guidance tab (none, classifier guidance at ``--scale``, classifier-free guidance at
``--guidance``, both) it samples ``--per-class`` images of every class (DPM-Solver++, ``--steps`` steps, the
seeds of ``scripts/eval_fashion.py``: seed + 1000 · class + index) and reports the judge's class fidelity,
overall and per class. ``--sweep`` adds classifier guidance alone at other scales (to choose the default).

Then it times each panel as the tab runs it: ``--bench-count`` images of one class, the median of
``--repeats`` runs after a warm-up, panels interleaved so a shared CPU's load falls on all of them alike; the
cost of a classifier-guided step against a classifier-free one is the ratio of their times (same steps:
one UNet pass plus the classifier's forward and backward, against two UNet passes).

Example::

    python scripts/eval_classifier_guidance.py --scale 5 --sweep 2,5,10 --out runs/eval_classifier_guidance.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.fashion import sampling as fashion  # noqa: E402
from engine.fashion.classifier import load_noisy_classifier  # noqa: E402
from engine.fashion.configs import CLASS_NAMES, DEFAULT_CLASSIFIER_SCALE  # noqa: E402
from engine.fashion.guidance import MODES, judged_hits, mode_scales  # noqa: E402
from engine.fashion.judge import load_classifier  # noqa: E402
from engine.presets import Preset  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="assets/fashion/unet-cpu")
    p.add_argument("--classifier", default="assets/fashion/noisy-classifier")
    p.add_argument("--judge", default="assets/fashion/judge")
    p.add_argument("--sampler", default="DPM-Solver++")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale g")
    p.add_argument("--scale", type=float, default=DEFAULT_CLASSIFIER_SCALE, help="classifier guidance scale s")
    p.add_argument("--sweep", default="", help="more classifier scales, alone at g = 1 (comma-separated)")
    p.add_argument("--per-class", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--bench-count", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/eval_classifier_guidance.json")
    return p.parse_args(argv)


def load_models(args):
    """(UNet, its scheduler config, noise-aware classifier, judge), fp32 on the CPU."""
    def preset(kind, path):
        return Preset(kind, kind, path=str(Path(path).resolve()))

    unet = fashion.load_class_unet(preset("class-unet", args.model), "cpu", torch.float32, True)
    classifier = load_noisy_classifier(preset("noisy-classifier", args.classifier), "cpu", torch.float32, True)
    judge = load_classifier(preset("classifier", args.judge), "cpu", torch.float32, True)
    return unet, fashion.scheduler_config_of(args.model), classifier, judge


def fidelity(models, args, g: float, s: float, cpu_bf16) -> dict:
    """Class fidelity at guidance g and classifier scale s: {"fidelity", "fidelity_per_class", "seconds"}."""
    unet, schedule, classifier, judge = models
    per_class, start = {}, time.perf_counter()
    for label in tqdm(range(len(CLASS_NAMES)), desc=f"g={g:g} s={s:g}", file=sys.stdout, mininterval=30):
        hits, done = 0, 0
        while done < args.per_class:
            k = min(args.batch, args.per_class - done)
            result = fashion.sample_to_end(unet, label, k, args.sampler, args.steps, g, args.seed + 1000 * label + done,
                                           scheduler_config=schedule, cpu_bf16=cpu_bf16, classifier_scale=s,
                                           classifier=classifier)
            hits += judged_hits(judge, result.images, label)
            done += k
        per_class[CLASS_NAMES[label]] = round(hits / args.per_class, 4)
    return {"guidance_scale": g, "classifier_scale": s, "fidelity": round(float(np.mean(list(per_class.values()))), 4),
            "fidelity_per_class": per_class, "seconds": round(time.perf_counter() - start, 1)}


def bench(models, args, cpu_bf16) -> dict:
    """Median wall time per image of each panel (``--bench-count`` Sandals, seed 0), panels interleaved."""
    unet, schedule, classifier, _ = models
    times = {mode: [] for mode in MODES}
    for repeat in range(args.repeats + 1):
        for mode in MODES:
            g, s = mode_scales(mode, args.guidance, args.scale)
            result = fashion.sample_to_end(unet, "Sandal", args.bench_count, args.sampler, args.steps, g, 0,
                                           scheduler_config=schedule, cpu_bf16=cpu_bf16, classifier_scale=s,
                                           classifier=classifier)
            if repeat > 0:  # the first round warms up
                times[mode].append(result.seconds / args.bench_count)
    per_image = {mode: round(statistics.median(t), 5) for mode, t in times.items()}
    return {"seconds_per_image": per_image,
            "classifier_step_vs_classifier_free_step": round(per_image["classifier"] / per_image["classifier-free"], 2),
            "classifier_step_vs_plain_step": round(per_image["classifier"] / per_image["none"], 2)}


def machine(args) -> dict:
    """The CPU, its cores, torch's threads and the dtype the sampler ran in."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    dtype = "fp32" if args.fp32 or not fashion.use_cpu_bf16("cpu") else "bf16 autocast"
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": args.threads, "dtype": dtype,
            "torch": torch.__version__}


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    models = load_models(args)
    cpu_bf16 = False if args.fp32 else None
    report = {"machine": machine(args), "sampler": args.sampler, "steps": args.steps, "per_class": args.per_class,
              "guidance": args.guidance, "scale": args.scale, "classifier": args.classifier, "runs": {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = [(mode, *mode_scales(mode, args.guidance, args.scale)) for mode in MODES]
    runs += [(f"classifier s={v}", 1.0, float(v)) for v in args.sweep.split(",") if v and float(v) != args.scale]
    for name, g, s in runs:
        report["runs"][name] = fidelity(models, args, g, s, cpu_bf16)
        print(name, json.dumps({k: v for k, v in report["runs"][name].items() if k != "fidelity_per_class"}),
              flush=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    report["bench"] = bench(models, args, cpu_bf16)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))


def markdown(report: dict) -> str:
    """The README's table: one row per panel (and sweep scale), fidelity and time per image."""
    per_image = report["bench"]["seconds_per_image"]
    lines = [f"{report['sampler']}, {report['steps']} steps, {report['per_class']} samples per class; "
             f"{report['machine']['cpu']}, {report['machine']['torch_threads']} torch thread(s), "
             f"{report['machine']['dtype']}.", "",
             "| panel | g | s | class fidelity | time per image |", "|---|---|---|---|---|"]
    for name, run in report["runs"].items():
        seconds = f"{per_image[name] * 1000:.0f} ms" if name in per_image else ""
        lines.append(f"| {name} | {run['guidance_scale']:g} | {run['classifier_scale']:g} | "
                     f"{run['fidelity']:.1%} | {seconds} |")
    bench_ = report["bench"]
    lines += ["", f"A classifier-guided step costs {bench_['classifier_step_vs_classifier_free_step']}× a "
              f"classifier-free one ({bench_['classifier_step_vs_plain_step']}× an unguided one).", "",
              "| class | " + " | ".join(report["runs"]) + " |", "|---|" + "---|" * len(report["runs"])]
    for name in CLASS_NAMES:
        lines.append(f"| {name} | " + " | ".join(f"{r['fidelity_per_class'][name]:.0%}"
                                                 for r in report["runs"].values()) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
