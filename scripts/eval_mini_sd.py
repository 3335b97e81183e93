#!/usr/bin/env python
"""Measure the mini SD and mini SDXL: the figures their model cards and the README carry.

For each pipeline folder (``ASSETS/mini-sd``, ``ASSETS/mini-sdxl``):

* **class fidelity**: the share of "a {colour} {class}" images (8 colours x 10
  classes x ``--per-prompt``) that the Fashion-MNIST judge (issue 3's
  classifier preset, ``engine.fashion``) assigns to the asked class. It reads
  the grey version of each image: the item's ink (``engine.mini.measure.to_judge_grey``).
  Target >= 80%, at guidance ``--guidance`` (the default, 2); and in a sweep over
  guidance 1, 3 and 5 (``--sweep``), where guidance 1 must score below guidance 5.
* **colour accuracy**: the share of the same images whose item hue is nearest
  the asked colour (``engine.mini.measure.item_colours``). Target >= 80%.
* **negative prompt**: the share of red items for "a sneaker", with and without
  the negative prompt "red"; it must drop.
* **micro-conditioning** (SDXL): the high-frequency energy (mean squared
  Laplacian) at ``original_size`` (16, 16) against (64, 64), which must drop by
  >= 30%; and the item's centroid shift for ``crops_coords_top_left`` (16, 16)
  against (0, 0), which must be >= 4 px.
* **speed**: 4 images at 25 steps (guidance on), median of 3 runs, with our
  engine loop and with the plain diffusers pipeline.
* as references, the judge's accuracy and the hue measure's accuracy on real
  colour pictures of the test split.

Images come from our engine loop (``engine.txt2img.text_to_image``) when it is
there, else from the plain diffusers pipeline (``--backend``). ``--write-cards``
puts the results into each folder's ``README.md`` (between the ``eval`` markers)
and ``eval.json``.

Examples::

    python scripts/eval_mini_sd.py --write-cards
    python scripts/eval_mini_sd.py --which sdxl --per-prompt 2 --backend diffusers
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from engine.mini import data as cf  # noqa: E402

from engine.mini import measure  # noqa: E402
from engine.mini import models as ms  # noqa: E402

from engine.mini import cards  # noqa: E402

FOLDERS = {"sd": "mini-sd", "sdxl": "mini-sdxl"}
TARGETS = {"class_fidelity": 0.88, "colour_accuracy": 0.95, "high_frequency_cut": 0.3, "centroid_shift_px": 4.0,
           "seconds_4_images_25_steps": 2.0}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--assets", default=str(REPO_ROOT / "assets"), help="folder holding mini-sd/ and mini-sdxl/")
    p.add_argument("--which", default="sd,sdxl", help="sd, sdxl or both (comma-separated)")
    p.add_argument("--backend", choices=("auto", "engine", "diffusers"), default="auto")
    p.add_argument("--per-prompt", type=int, default=4, help="images per 'a {colour} {class}' prompt")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=cards.DEFAULT_GUIDANCE,
                   help="the default guidance the figures are taken at")
    p.add_argument("--sweep", default="1,3,5", help="other guidance scales to measure (class and colour)")
    p.add_argument("--sweep-per-prompt", type=int, default=2, help="images per prompt in the sweep")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--judge", default=None, help="classifier preset name (default: the first 'classifier' preset)")
    p.add_argument("--write-cards", action="store_true", help="write README.md sections and eval.json")
    p.add_argument("--parts", default="all", help=f"what to measure: all, or some of {', '.join(PARTS)}")
    p.add_argument("--compare-assets", default=None,
                   help="an assets folder with the previous mini-sd/ and mini-sdxl/: time them in the same run")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------
# Generating: our engine loop if it is there, else the diffusers pipeline


def engine_available() -> bool:
    try:
        from engine.txt2img import run_to_end, text_to_image  # noqa: F401
    except ImportError:
        return False
    return True


class Generator:
    """Makes images [n, 3, 64, 64] in [0, 1] for one prompt and seed, with one backend."""

    def __init__(self, path: Path, kind: str, backend: str):
        self.kind, self.backend = kind, backend
        self.pipe = ms.load_pipeline(path)
        if backend == "engine":
            from engine.presets import Preset

            self.preset = Preset(name=f"{FOLDERS[kind]} (eval)", kind=kind, path=str(path),
                                 options={"min_size": 64, "max_size": 256, "default_size": 64})

    def __call__(self, prompt: str, *, seed: int, n: int = 4, **kwargs) -> torch.Tensor:
        """``n`` images, made 4 at a time (the engine's limit) with seeds seed, seed + 1000, ..."""
        chunks = [min(4, n - start) for start in range(0, n, 4)]
        return torch.cat([self.generate(prompt, seed=seed + 1000 * k, n=m, **kwargs) for k, m in enumerate(chunks)])

    @torch.no_grad()
    def generate(self, prompt: str, *, seed: int, n: int = 4, guidance_scale: float = cards.DEFAULT_GUIDANCE,
                 steps: int = 25, negative_prompt: str = "", original_size=(64, 64), crops_coords_top_left=(0, 0)) -> torch.Tensor:
        """Up to 4 images from one seed: the engine's ``text_to_image`` or ``pipe(...)``, which agree."""
        sdxl = {}
        if self.kind == "sdxl":
            sdxl = dict(original_size=tuple(original_size), crops_coords_top_left=tuple(crops_coords_top_left))
        if self.backend == "engine":
            from engine.txt2img import run_to_end, text_to_image

            result = run_to_end(text_to_image(self.pipe, self.preset, prompt=prompt, negative_prompt=negative_prompt,
                                              guidance_scale=guidance_scale, num_inference_steps=steps, seed=seed,
                                              width=64, height=64, num_images=n, preview_every=0, **sdxl))
            return torch.from_numpy(np.asarray(result.images)).permute(0, 3, 1, 2).float()
        if sdxl:
            sdxl["target_size"] = (64, 64)
        out = self.pipe(prompt, negative_prompt=negative_prompt or None, guidance_scale=guidance_scale,
                        num_inference_steps=steps, num_images_per_prompt=n, height=64, width=64,
                        generator=torch.Generator("cpu").manual_seed(seed), output_type="pt", **sdxl)
        return out.images.float().cpu()


# ----------------------------------------------------------------------------
# Measures


def load_judge(name: str | None):
    """The Fashion-MNIST judge through the cached loader, or None (with a note) when there is no such preset."""
    from engine import loader
    from engine.presets import presets_for

    names = [p.name for p in presets_for("classifier")]
    if name is None and not names:
        print("No 'classifier' preset: class fidelity is not measured.", flush=True)
        return None
    return loader.load(name or names[0], "classifier", device="cpu")


def judged_classes(judge, pictures: torch.Tensor, boxes=None) -> torch.Tensor:
    """The judge's class [N] for each picture [N, 3, 64, 64] in [0, 1], from its grey version (cut from
    ``boxes`` [N, 3], else the classic centred box)."""
    from engine.fashion.judge import judge_images

    predictions, _ = judge_images(judge, measure.to_judge_grey(pictures, boxes))
    return predictions


def high_frequency_energy(pictures: torch.Tensor) -> float:
    """Mean squared Laplacian of the grey pictures [N, 3, H, W]: the energy at the highest frequencies."""
    grey = pictures.float().mean(1, keepdim=True)
    laplacian = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    return float(F.conv2d(grey, laplacian).pow(2).mean())


def grid_prompts() -> list[tuple[int, str, str]]:
    """(class, colour, prompt) for every class and colour: "a red ankle boot", "blue trousers"..."""
    return [(label, colour, cf.prompt_for(label, colour)) for label in range(10) for colour in cf.COLOUR_NAMES]


def class_and_colour(gen: Generator, judge, args, guidance_scale: float, desc: str, per_prompt: int) -> dict:
    """Class fidelity and colour accuracy over all 80 prompts, ``per_prompt`` images each."""
    asked_class, asked_colour, images = [], [], []
    for i, (label, colour, prompt) in enumerate(tqdm(grid_prompts(), desc=desc, mininterval=10, file=sys.stdout)):
        images.append(gen(prompt, seed=args.seed + i, n=per_prompt, guidance_scale=guidance_scale,
                          steps=args.steps))
        asked_class += [label] * per_prompt
        asked_colour += [colour] * per_prompt
    images = torch.cat(images)
    found_colour = measure.item_colours(images)
    out = {"images": len(images), "colour_accuracy": float(np.mean([a == b for a, b in zip(found_colour,
                                                                                           asked_colour)]))}
    if judge is not None:
        found = judged_classes(judge, images)
        hits = (found == torch.tensor(asked_class)).float()
        out["class_fidelity"] = float(hits.mean())
        out["class_fidelity_per_class"] = {cf.CLASS_NOUNS[c][0][0] or cf.CLASS_NOUNS[c][0][1]:
                                           round(float(hits[torch.tensor(asked_class) == c].mean()), 3)
                                           for c in range(10)}
    return out


def positioned_prompts(per_place: int = 8) -> list[tuple[int, str, str, str]]:
    """(class, colour, place, prompt) for every place, ``per_place`` class/colour pairs each, cycling through
    the classes and colours: "a red sneaker on the left", "blue trousers in the top right corner"..."""
    out = []
    for p, place in enumerate(cf.PLACE_NAMES):
        for k in range(per_place):
            label, colour = (p + 3 * k) % 10, cf.COLOUR_NAMES[(p + k) % len(cf.COLOUR_NAMES)]
            out.append((label, colour, place, cf.positioned_prompt_for(label, colour, place)))
    return out


def positioned(gen: Generator, judge, args, per_place: int = 8, per_prompt: int = 2) -> dict:
    """Position accuracy (the item's ink centroid in the named region: a half, a quadrant, or the middle),
    and class fidelity and colour accuracy on the same images, the judge reading a crop around the item; and
    the share with both the place and the class right."""
    asked, images = [], []
    for i, (label, colour, place, prompt) in enumerate(tqdm(positioned_prompts(per_place), desc=f"{gen.kind} placed",
                                                             mininterval=10, file=sys.stdout)):
        images.append(gen(prompt, seed=args.seed + i, n=per_prompt, guidance_scale=args.guidance, steps=args.steps))
        asked += [(label, colour, place)] * per_prompt
    images = torch.cat(images)
    hits = [measure.in_place(place, c) for (_, _, place), c in zip(asked, measure.ink_centroids(images))]
    per_place_hits = {place: float(np.mean([h for h, a in zip(hits, asked) if a[2] == place]))
                      for place in cf.PLACE_NAMES}
    out = {"images": len(images), "position_accuracy": float(np.mean(hits)), "position_accuracy_per_place":
           {k: round(v, 3) for k, v in per_place_hits.items()},
           "colour_accuracy": float(np.mean([a[1] == b for a, b in zip(asked, measure.item_colours(images))]))}
    if judge is not None:
        found = judged_classes(judge, images, measure.find_item_boxes(images))
        right = (found == torch.tensor([a[0] for a in asked])).numpy()
        out["class_fidelity_on_crop"] = float(right.mean())
        # both at once: a model that ignores the place word draws large centred items, which read easily
        out["in_place_and_right_class"] = float((right & np.array(hits)).mean())
    return out


def two_item_prompts(count: int = 16) -> list[tuple[tuple[int, int], tuple[str, str], tuple[str, str], str]]:
    """((class, class_2), (colour, colour_2), (place, place_2), prompt): two items of different classes and
    colours at opposite sides, "a red sneaker on the left and a blue bag on the right" (half left/right,
    half top/bottom), cycling through the classes and colours."""
    out = []
    for k in range(count):
        labels = (k % 10, (k + 3 + k // 10) % 10)
        colours = (cf.COLOUR_NAMES[k % 8], cf.COLOUR_NAMES[(k + 4) % 8])
        places = ("left", "right") if k % 2 == 0 else ("top", "bottom")
        first, second = (cf.prompt_for(label, colour) for label, colour in zip(labels, colours))
        out.append((labels, colours, places, cf.two_item_caption(first, places[0], second, places[1], 0)))
    return out


def half_picture(pictures: torch.Tensor, place: str) -> torch.Tensor:
    """The named half of each picture [N, 3, 64, 64], the other half painted with the background."""
    out = cf.rgb_tensor(cf.BACKGROUND).expand_as(pictures).clone()
    h = pictures.shape[-1] // 2
    region = {"left": (slice(None), slice(0, h)), "right": (slice(None), slice(h, None)),
              "top": (slice(0, h), slice(None)), "bottom": (slice(h, None), slice(None))}[place]
    out[..., region[0], region[1]] = pictures[..., region[0], region[1]]
    return out


def two_items(gen: Generator, judge, args, count: int = 16, per_prompt: int = 4) -> dict:
    """Binding: for "a red sneaker on the left and a blue bag on the right", does each half hold its own
    colour (the hue of its strongest ink), and its own class (the judge on a crop around the half's ink)?"""
    colour_ok, class_ok = [], []
    for i, (labels, colours, places, prompt) in enumerate(tqdm(two_item_prompts(count), desc=f"{gen.kind} two",
                                                                mininterval=10, file=sys.stdout)):
        images = gen(prompt, seed=args.seed + i, n=per_prompt, guidance_scale=args.guidance, steps=args.steps)
        halves = [half_picture(images, place) for place in places]
        colour_ok.append(np.all([[c == want for c in measure.item_colours(h)] for h, want in zip(halves, colours)],
                                axis=0))
        if judge is not None:
            class_ok.append(np.all([(judged_classes(judge, h, measure.find_item_boxes(h)) == want).numpy()
                                    for h, want in zip(halves, labels)], axis=0))
    colour_ok = np.concatenate(colour_ok)
    out = {"images": len(colour_ok), "each_half_its_colour": float(colour_ok.mean())}
    if class_ok:
        class_ok = np.concatenate(class_ok)
        out.update(each_half_its_class=float(class_ok.mean()), each_half_its_item_and_colour=float(
            (class_ok & colour_ok).mean()))
    return out


def vae_round_trips(path: Path, judge, count: int = 1000) -> dict:
    """The judge on placed real test items before and after the VAE's round trip, by item side."""
    from diffusers import AutoencoderKL

    from engine.fashion.data import load_split

    if judge is None:
        return {}
    items, labels = load_split("test")
    vae = AutoencoderKL.from_pretrained(path / "vae", dtype=torch.float32).eval()
    result = measure.judge_on_round_trips(vae, lambda p, b: judged_classes(judge, p, b), items[:count],
                                          labels[:count])
    return {str(side): r for side, r in result.items()}


def attention_lift(gen: Generator, args, per_place: int = 6) -> dict:
    """The item word's cross-attention lift (``engine.mini.measure.item_lifts``, the UNet tab's measure):
    mean over 9 places x ``per_place`` placed prompts (54 at the default) and over 48 centred
    prompts "a {colour} {item}"; the engine loop runs once per prompt, one image."""
    from engine.presets import Preset

    preset = Preset(name=f"{FOLDERS[gen.kind]} (eval)", kind=gen.kind, path="/unused",
                    options={"min_size": 64, "max_size": 256, "default_size": 64})
    run = dict(guidance_scale=args.guidance, num_inference_steps=args.steps, width=64, height=64)
    placed = [(label, colour, prompt) for label, colour, _, prompt in positioned_prompts(per_place)]
    centred = grid_prompts()[:: max(1, len(grid_prompts()) // 48)][:48]
    out = {}
    for name, prompts in (("positioned", placed), ("centred", centred)):
        rows = [measure.item_lifts(gen.pipe, preset, label, colour, prompt, seed=args.seed + i, **run)
                for i, (label, colour, prompt) in enumerate(tqdm(prompts, desc=f"{gen.kind} lift {name}",
                                                                 mininterval=10, file=sys.stdout))]
        rows = [r for r in rows if r is not None]
        out[name] = {key: round(float(np.mean([r[key] for r in rows])), 3) for key in ("item", "noun", "colour",
                                                                                       "start", "area")}
        out[name]["prompts"] = len(rows)
    return out


def negative_prompt_effect(gen: Generator, args, n_seeds: int = 8) -> dict:
    """Share of red items for "a sneaker", without and with the negative prompt "red" (same seeds)."""
    shares = {}
    for negative in ("", "red"):
        images = torch.cat([gen("a sneaker", seed=args.seed + s, n=4, guidance_scale=args.guidance, steps=args.steps,
                                negative_prompt=negative) for s in range(n_seeds)])
        shares["with_negative_red" if negative else "without"] = float(np.mean([c == "red" for c in
                                                                                measure.item_colours(images)]))
    shares["images_each"] = 4 * n_seeds
    return shares


def micro_conditioning_effect(gen: Generator, args, n_prompts: int = 16) -> dict:
    """High-frequency energy at original_size 16 vs 64, and centroid shift at crop (16, 16) vs (0, 0)."""
    prompts = grid_prompts()[:: max(1, len(grid_prompts()) // n_prompts)][:n_prompts]

    def batch(**cond):
        return torch.cat([gen(p, seed=args.seed + i, n=2, guidance_scale=args.guidance, steps=args.steps, **cond)
                          for i, (_, _, p) in enumerate(prompts)])

    base = batch()
    small = batch(original_size=(16, 16))
    cropped = batch(crops_coords_top_left=(16, 16))
    energy_64, energy_16 = high_frequency_energy(base), high_frequency_energy(small)
    move = measure.ink_centroids(cropped, 0.0) - measure.ink_centroids(base, 0.0)
    shift, mean_shift = move.norm(dim=1), move.mean(0)
    return {"high_frequency_energy_64": energy_64, "high_frequency_energy_16": energy_16,
            "high_frequency_cut": 1 - energy_16 / energy_64, "centroid_shift_px": float(shift.mean()),
            "mean_centroid_move_rows_cols_px": [round(float(v), 2) for v in mean_shift], "images_each": len(base)}


def speed(gen: Generator, args, runs: int = 3) -> float:
    """Median seconds for 4 images at 25 steps with guidance, after one warm-up run."""
    gen("a blue sneaker", seed=0, n=4, guidance_scale=args.guidance, steps=25)
    times = []
    for r in range(runs):
        start = time.perf_counter()
        gen("a blue sneaker", seed=r, n=4, guidance_scale=args.guidance, steps=25)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def references(judge) -> dict:
    """The measures on 1,000 real colour test pictures: what a perfect generator would score."""
    data = cf.make_dataset("test", seed=0, num_items=1000)
    pictures = data.pictures()
    out = {"colour_accuracy_real": float(np.mean([a == cf.COLOUR_NAMES[b] for a, b in
                                                  zip(measure.item_colours(pictures), data.colours)]))}
    if judge is not None:
        out["judge_accuracy_real"] = float((judged_classes(judge, pictures, data.boxes) == torch.as_tensor(data.labels)).float()
                                           .mean())
    return out


def sweep_scales(args) -> list[float]:
    """The sweep's guidance scales; 1 is always there (the issue's check: guidance 1 scores below guidance 5)."""
    scales = {float(g) for g in args.sweep.split(",") if g.strip()} | {1.0}
    return sorted(scales - {args.guidance})


PARTS = ("class", "sweep", "positioned", "two_items", "text_binding", "vae", "lift", "negative", "micro", "speed")


def evaluate(kind: str, path: Path, judge, args) -> dict:
    backend = args.backend
    if backend == "auto":
        backend = "engine" if engine_available() else "diffusers"
    gen = Generator(path, kind, backend)
    parts = set(PARTS if args.parts == "all" else args.parts.split(","))
    result = {"model": FOLDERS[kind], "backend": backend, "steps": args.steps, "guidance": args.guidance,
              "threads": torch.get_num_threads(), "weights_mb": round(ms.weights_megabytes(path), 1)}
    steps = {
        "at_guidance": ("class", lambda: class_and_colour(gen, judge, args, args.guidance, f"{kind} g={args.guidance:g}",
                                                          args.per_prompt)),
        "sweep": ("sweep", lambda: {f"{g:g}": class_and_colour(gen, judge, args, g, f"{kind} g={g:g}",
                                                               args.sweep_per_prompt) for g in sweep_scales(args)}),
        "positioned": ("positioned", lambda: positioned(gen, judge, args)),
        "two_items": ("two_items", lambda: two_items(gen, judge, args)),
        "text_binding": ("text_binding", lambda: measure.second_item_hearing(gen.pipe, kind)),
        "vae_round_trips": ("vae", lambda: vae_round_trips(path, judge)),
        "attention_lift": ("lift", lambda: attention_lift(gen, args)),
        "negative_prompt_red": ("negative", lambda: negative_prompt_effect(gen, args)),
        "micro_conditioning": ("micro", lambda: micro_conditioning_effect(gen, args) if kind == "sdxl" else None),
        "seconds_4_images_25_steps": ("speed", lambda: timings(gen, path, kind, backend, args)),
    }
    for key, (part, run) in steps.items():
        if part in parts:
            value = run()
            if value is not None:
                result[key] = value
    return result


def timings(gen: Generator, path: Path, kind: str, backend: str, args) -> dict:
    """Seconds for 4 images at 25 steps: ours, the plain diffusers pipeline, and (``--compare-assets``) the
    previous models, in the same run on the same machine."""
    out = {backend: round(speed(gen, args), 3)}
    if backend == "engine":
        out["diffusers"] = round(speed(Generator(path, kind, "diffusers"), args), 3)
    if args.compare_assets:
        previous = Path(args.compare_assets) / FOLDERS[kind]
        out["previous models"] = round(speed(Generator(previous, kind, backend), args), 3)
    return out


# ----------------------------------------------------------------------------
# Reporting


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def placed_rows(result: dict) -> list[str]:
    """The model card's rows for positions, grounding (lifts), two items and the VAE's round trips."""
    rows, placed, lifts = [], result.get("positioned"), result.get("attention_lift")
    if placed:
        crop = placed.get("class_fidelity_on_crop")
        rows += [
            f"| position accuracy, positioned prompts ({placed['images']} images; centroid in the named half, "
            f"quadrant or middle) | {pct(placed['position_accuracy'])} | >= 95% | "
            f"{verdict(placed['position_accuracy'] >= 0.95)} |",
            f"| class fidelity on positioned prompts (judge on a crop around the item) | {pct(crop)} | >= 75% | "
            f"{verdict(None if crop is None else crop >= 0.75)} |",
            f"| colour accuracy on positioned prompts | {pct(placed['colour_accuracy'])} | - | - |",
        ]
        if "in_place_and_right_class" in placed:
            rows.append(f"| positioned prompts: the item in its place and of the asked class | "
                        f"{pct(placed['in_place_and_right_class'])} | report | - |")
    if lifts:
        p, c = lifts["positioned"], lifts["centred"]
        rows += [f"| cross-attention lift of the item word, positioned prompts ({p['prompts']}) | {p['item']:.2f} | "
                 f">= 3.0 | {verdict(p['item'] >= 3.0)} |",
                 f"| lift of the colour word, positioned prompts | {p['colour']:.2f} | >= 3.0 | "
                 f"{verdict(p['colour'] >= 3.0)} |",
                 f"| lift of the item word, centred prompts ({c['prompts']}) | {c['item']:.2f} | >= 2.0 | "
                 f"{verdict(c['item'] >= 2.0)} |"]
    two = result.get("two_items")
    if two:
        rows += [f"| two items (\"a red sneaker on the left and a blue bag on the right\", {two['images']} images): "
                 f"each half holds its own colour | {pct(two['each_half_its_colour'])} | >= 80% | "
                 f"{verdict(two['each_half_its_colour'] >= 0.8)} |",
                 f"| two items: each half holds its own class and colour | "
                 f"{pct(two.get('each_half_its_item_and_colour'))} | report | - |"]
    heard = result.get("text_binding")
    if heard:
        rows.append(f"| text the UNet reads, second item's noun: change when its own colour changes / when the "
                    f"first item's does (1 - cos; `second_item_hearing`) | {heard['own colour, noun']:.2f} / "
                    f"{heard['other colour, noun']:.2f} | report | - |")
    for side, r in result.get("vae_round_trips", {}).items():
        target = {"30": 0.75, "36": 0.80}.get(side)
        rows.append(f"| judge on VAE round trips of placed real test items, {side} px (real pictures: "
                    f"{pct(r['real'])}) | {pct(r['vae'])} | {'>= ' + pct(target) if target else 'report'} | "
                    f"{verdict(r['vae'] >= target) if target else '-'} |")
    return rows


def markdown(result: dict, refs: dict) -> str:
    """The "Measured quality" section of a model card."""
    g, sweep = result["at_guidance"], result["sweep"]
    fid = g.get("class_fidelity")
    fid1, fid5 = (sweep.get(k, {}).get("class_fidelity") for k in ("1", "5"))
    neg = result["negative_prompt_red"]
    rows = [
        "| measure | value | target | met |",
        "|---|---|---|---|",
        f"| class fidelity, guidance {result['guidance']:g} ({g['images']} images) | {pct(fid)} | >= 88% | "
        f"{verdict(None if fid is None else fid >= TARGETS['class_fidelity'])} |",
        f"| colour accuracy (item hue), guidance {result['guidance']:g} | {pct(g['colour_accuracy'])} | >= 95% | "
        f"{verdict(g['colour_accuracy'] >= TARGETS['colour_accuracy'])} |",
        f"| class fidelity at guidance 1 -> 5 (sweep below) | {pct(fid1)} -> {pct(fid5)} | guidance 1 below 5 | "
        f"{verdict(None if fid5 is None or fid1 is None else fid1 < fid5)} |",
        f"| red items for \"a sneaker\", no negative prompt -> negative \"red\" ({neg['images_each']} each) | "
        f"{pct(neg['without'])} -> {pct(neg['with_negative_red'])} | drops | "
        f"{verdict(neg['with_negative_red'] < neg['without'])} |",
    ]
    rows += placed_rows(result)
    if "micro_conditioning" in result:
        m = result["micro_conditioning"]
        rows += [
            f"| high-frequency energy, original_size (16, 16) vs (64, 64) | {pct(m['high_frequency_cut'])} lower | "
            f">= 30% lower | {verdict(m['high_frequency_cut'] >= TARGETS['high_frequency_cut'])} |",
            f"| item centroid shift, crop (16, 16) vs (0, 0) | {m['centroid_shift_px']:.1f} px "
            f"(rows, cols: {m['mean_centroid_move_rows_cols_px']}) | >= 4 px | "
            f"{verdict(m['centroid_shift_px'] >= TARGETS['centroid_shift_px'])} |",
        ]
    for backend, seconds in result["seconds_4_images_25_steps"].items():
        rows.append(f"| 4 images, 25 steps, guidance on, {result['threads']} CPU threads ({backend}) | {seconds:.2f} s "
                    f"| <= 2 s | {verdict(seconds <= TARGETS['seconds_4_images_25_steps'])} |")
    table = ["| guidance | class fidelity | colour accuracy | images |", "|---|---|---|---|"]
    every = {**sweep, f"{result['guidance']:g}": g}
    for key in sorted(every, key=float):
        row = every[key]
        table.append(f"| {key}{' (default)' if float(key) == result['guidance'] else ''} | "
                     f"{pct(row.get('class_fidelity'))} | {pct(row['colour_accuracy'])} | {row['images']} |")
    rows += ["", "Guidance sweep (same prompts and seeds):", ""] + table
    notes = [
        "",
        f"Measured by `scripts/eval_mini_sd.py` ({result['backend']} loop, {result['steps']} steps, the pipeline's "
        "own scheduler, seeds from 0). Class fidelity is the Fashion-MNIST judge's verdict on the grey version "
        "of each image (the item's ink, `engine.mini.measure.to_judge_grey`); colour is the hue of the item's "
        "strongest pixels (`item_colours`).",
    ]
    if refs:
        notes.append(f"On real colour test pictures the judge scores {pct(refs.get('judge_accuracy_real'))} and the "
                     f"hue measure {pct(refs.get('colour_accuracy_real'))}: the ceilings of these measures.")
    return "\n".join(rows + notes)


def write_card(path: Path, section: str, result: dict, kind: str, guidance: float) -> None:
    """eval.json; ``samples.png`` drawn again at the measured guidance; the model card rewritten from
    ``training.json`` (train_mini_sd.model_card) with this measured-quality section."""
    (path / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    record_path = path / "training.json"
    if not record_path.exists():
        return
    record = json.loads(record_path.read_text())
    record["grid_guidance"] = guidance
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    pipe = ms.load_pipeline(path)
    pipe.set_progress_bar_config(disable=True)
    cards.sample_grid(pipe, kind == "sdxl", path / "samples.png", steps=record.get("grid_steps", 20),
                         guidance_scale=guidance)
    text = cards.model_card(path.name, record, path)
    new = re.sub(r"<!-- eval:start -->.*<!-- eval:end -->", lambda _: f"<!-- eval:start -->\n{section}\n<!-- eval:end -->",
                 text, flags=re.S)
    (path / "README.md").write_text(new, encoding="utf-8")


def main(argv=None) -> None:
    args = parse_args(argv)
    from engine.fashion.data import require_dataset

    require_dataset()  # one line saying how to install it, when it is missing
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    judge = load_judge(args.judge)
    refs = references(judge)
    print(json.dumps({"references": refs}), flush=True)
    for kind in [k.strip() for k in args.which.split(",") if k.strip()]:
        path = Path(args.assets) / FOLDERS[kind]
        if not (path / "model_index.json").exists():
            print(f"{path}: no pipeline there (train it with scripts/train_mini_sd.py), skipped.", flush=True)
            continue
        result = evaluate(kind, path, judge, args)
        result["references"] = refs
        print(json.dumps(result, indent=2), flush=True)
        if args.parts != "all":
            continue
        section = markdown(result, refs)
        print(section, flush=True)
        if args.write_cards:
            write_card(path, section, result, kind, args.guidance)


if __name__ == "__main__":
    main()
