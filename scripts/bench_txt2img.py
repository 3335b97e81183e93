"""Per-step CPU cost of our sampling loop (engine.txt2img) against the diffusers pipeline.

Both run the same shipped mini models (the "mini-SD (offline)" and "mini-SDXL
(offline)" presets, loaded through engine.loader, as the app loads them) at the
same size, guidance and scheduler (Euler). We time each denoising step from end
to end: the pipeline stamps the clock in ``callback_on_step_end``, our loop at
each step it yields. Fixed costs (prompt encoding, VAE decoding) are left out.
The clock is the thread's CPU time (``time.thread_time``) with torch on one
thread, so time spent waiting for a busy CPU is not counted: wall-clock
numbers on a shared machine swing by tens of percent.
A step time is the median over all steps of ``--repeats`` runs, alternating
ours and theirs so background load hits both alike.

    python scripts/bench_txt2img.py                 # SD and SDXL, guidance 1 and 7.5
    python scripts/bench_txt2img.py --size 128 --repeats 7 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.loader import load  # noqa: E402
from engine.presets import get_preset  # noqa: E402
from engine.txt2img import text_to_image  # noqa: E402

PROMPT = "a red sneaker"
MINI = {"sd": "mini-SD (offline)", "sdxl": "mini-SDXL (offline)"}


def build(kind: str):
    """The shipped mini pipeline of ``kind`` on the CPU in float32, and its preset with the size and step
    limits opened (``--size`` may exceed what the tab offers)."""
    preset = get_preset(MINI[kind], kind)
    pipe = load(preset, device="cpu", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe, replace(preset, options={**preset.options, "min_size": 32, "max_size": 1024, "max_steps": 1000})


def step_intervals(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:])]


def ours(pipe, preset, steps, size, guidance, preview_every) -> list[float]:
    """Seconds between consecutive steps of our loop (as the tab consumes it)."""
    stamps = []
    for event in text_to_image(pipe, preset, prompt=PROMPT, num_inference_steps=steps, width=size, height=size,
                               guidance_scale=guidance, scheduler="Euler", seed=0, preview_every=preview_every):
        if isinstance(event, dict):
            stamps.append(time.thread_time())
    return step_intervals(stamps)


def theirs(pipe, steps, size, guidance) -> list[float]:
    """Seconds between consecutive steps of the diffusers pipeline."""
    from diffusers import EulerDiscreteScheduler

    stamps = []

    def stamp(pipeline, i, t, callback_kwargs):
        stamps.append(time.thread_time())
        return {}

    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)  # fresh, as ours makes one
    pipe(PROMPT, num_inference_steps=steps, width=size, height=size, guidance_scale=guidance,
         generator=torch.Generator("cpu").manual_seed(0), output_type="np", callback_on_step_end=stamp)
    return step_intervals(stamps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads; CPU time is only exact with 1")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    rows = []
    for kind in ("sd", "sdxl"):
        pipe, preset = build(kind)
        for guidance in (1.0, 7.5):
            # warm-up: first calls allocate and import
            ours(pipe, preset, 2, args.size, guidance, 0)
            theirs(pipe, 2, args.size, guidance)
            t = {"theirs": [], "ours": [], "preview": []}
            for _ in range(args.repeats):
                t["theirs"] += theirs(pipe, args.steps, args.size, guidance)
                t["ours"] += ours(pipe, preset, args.steps, args.size, guidance, 0)
                t["preview"] += ours(pipe, preset, args.steps, args.size, guidance, 1)
            theirs_ms, ours_ms, prev_ms = (1000 * statistics.median(t[k]) for k in ("theirs", "ours", "preview"))
            rows.append((kind.upper(), guidance, theirs_ms, ours_ms, prev_ms))

    print(f"\nPer-step CPU time, shipped mini models, {args.size}x{args.size}, Euler, {args.threads} CPU thread(s), "
          f"median over {args.repeats} runs of {args.steps} steps\n")
    print("| model | guidance | diffusers ms/step | ours ms/step | overhead | ours + preview every step | overhead |")
    print("|---|---|---|---|---|---|---|")
    for kind, guidance, theirs_ms, ours_ms, prev_ms in rows:
        print(f"| {kind} | {guidance:g} | {theirs_ms:.2f} | {ours_ms:.2f} | {100 * (ours_ms / theirs_ms - 1):+.1f}% "
              f"| {prev_ms:.2f} | {100 * (prev_ms / theirs_ms - 1):+.1f}% |")


if __name__ == "__main__":
    main()
