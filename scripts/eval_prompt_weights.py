#!/usr/bin/env python
"""Measure prompt weights on the mini models: does "(red:w)" make a red item more or less often?

For each weight w (``--weights``) it makes "a (red:w) sneaker" with ``--seeds`` seeds (0, 1, ...) at the
preset's default steps and guidance through the app's loop (``engine.txt2img``), and reports the share of
items whose hue is red (``engine.mini.measure.item_colours``). It also checks that "a (red:1.0) sneaker" gives
exactly the image of "a red sneaker", seed by seed.

Example::

    python scripts/eval_prompt_weights.py --preset "mini-SD (offline)" --out runs/eval_prompt_weights.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import loader  # noqa: E402
from engine.mini.measure import item_colours  # noqa: E402
from engine.presets import get_preset  # noqa: E402
from engine.prompt_weights import with_weight  # noqa: E402
from engine.txt2img import run_to_end, text_to_image  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="mini-SD (offline)")
    p.add_argument("--prompt", default="a red sneaker")
    p.add_argument("--word", default="red")
    p.add_argument("--weights", default="0,0.2,0.5,1,1.5,2")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/eval_prompt_weights.json")
    return p.parse_args(argv)


def images_for(pipe, preset, prompt: str, seeds: int) -> torch.Tensor:
    """One image per seed, ``(seeds, 3, H, W)`` in [0, 1], at the preset's default size, steps and guidance."""
    size, options = preset.options.get("default_size", 64), preset.options
    pictures = []
    for seed in range(seeds):
        result = run_to_end(text_to_image(pipe, preset, prompt=prompt, seed=seed, width=size, height=size,
                                          num_inference_steps=options.get("default_steps", 25),
                                          guidance_scale=options.get("default_guidance", 7.5)))
        pictures.append(torch.from_numpy(np.asarray(result.images[0], dtype=np.float32)).permute(2, 0, 1))
    return torch.stack(pictures)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    preset = get_preset(args.preset, "sd") if "SDXL" not in args.preset else get_preset(args.preset, "sdxl")
    pipe = loader.load(preset, device="cpu")
    report = {"preset": args.preset, "prompt": args.prompt, "word": args.word, "seeds": args.seeds,
              "machine": {"cores": os.cpu_count(), "torch_threads": args.threads}, "red_share": {}}
    plain = images_for(pipe, preset, args.prompt, args.seeds)
    for weight in (float(w) for w in args.weights.split(",")):
        prompt = with_weight(args.prompt, args.word, weight)
        images = images_for(pipe, preset, prompt, args.seeds)
        report["red_share"][f"{weight:g}"] = float(np.mean([c == args.word for c in item_colours(images)]))
        if weight == 1.0:
            report["weight_one_identical_to_plain"] = bool(torch.equal(images, plain))
        print(prompt, report["red_share"][f"{weight:g}"], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
