"""The refiner's hand-off, side by side: the base alone, the latents it hands over, and base + refiner.

SDXL's two stages (Podell et al. 2023, §2.5; eDiff-I's ensemble of expert
denoisers, Balaji et al. 2022): with the same seed, prompt and step count,

1. the base model runs the whole schedule alone (``denoising_end`` = 1);
2. the base runs the timesteps t >= the switch timestep (``denoising_end`` f,
   e.g. 0.8: t >= 200 of 1000), and its latents there, still noisy, are decoded
   as they are: what the refiner receives;
3. the refiner denoises those latents from the switch point to t = 0.

Runs 2 and 3 are one ``text_to_image`` call with ``refiner``; its base half
visits the same timesteps as run 1's first part, so run 1 and run 2 agree up to
the switch point and differ only in who denoises the rest.

Images are [B, H, W, 3] in [0, 1]; the run details give both models' step
counts and loop seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from engine.errors import UserError
from engine.txt2img.info import Result
from engine.txt2img.pipeline import text_to_image
from engine.txt2img.request import NO_REFINER


@dataclass
class HandOff:
    """The three pictures of one hand-off, each [B, H, W, 3] in [0, 1], and the run details (JSON)."""

    base_alone: np.ndarray
    switch_point: np.ndarray
    refined: np.ndarray
    info: dict


def _finished(events: Iterator, stage: str) -> Iterator[dict]:
    """Pass ``text_to_image``'s progress on, labelled with ``stage``; returns its ``Result``."""
    result = None
    for event in events:
        if isinstance(event, Result):
            result = event
        else:
            yield {**event, "stage": stage}
    return result


def handoff_info(alone: Result, refined: Result) -> dict:
    """Both runs' step counts and loop times: the base alone, and the base's and the refiner's shares of the
    hand-off (``refiner_info``'s figures). No ratio of the two: the first run of a fresh process pays the
    warm-up (``scripts/eval_mini_refiner.py`` times them properly)."""
    stage = refined.info["refiner"]
    alone_seconds = alone.info["loop_seconds"]
    handoff_seconds = stage["base_seconds"] + stage["refiner_seconds"]
    return {"model": alone.info["model"], "seed": alone.info["seed"],
            "num_inference_steps": alone.info["num_inference_steps"], "scheduler": alone.info["scheduler"],
            "base_alone": {"steps": alone.info["timesteps"], "seconds": alone_seconds},
            "handoff": {k: stage[k] for k in ("model", "denoising_end", "switch_timestep", "base_steps",
                                              "base_seconds", "refiner_steps", "refiner_seconds",
                                              "aesthetic_score", "negative_aesthetic_score")},
            "handoff_seconds": round(handoff_seconds, 3)}


def compare_handoff(pipe, preset, refiner: str, refiner_pipe=None, **inputs) -> Iterator[dict | HandOff]:
    """Base alone, then base + ``refiner`` (a refiner preset's name) with ``denoising_end``, same seed and
    inputs (``make_request``'s names); yields progress dicts (with "stage"), then one ``HandOff``.
    ``refiner_pipe``: the refiner's pipeline when the caller has it (tests), else the loader's."""
    if refiner in (None, "", NO_REFINER):
        raise UserError("Choose a refiner: the hand-off needs one (the base alone is the left picture).")
    if inputs.get("guidance_scales"):
        raise UserError("The hand-off view runs one guidance scale; use guidance_scale, not a sweep.")
    alone = yield from _finished(text_to_image(pipe, preset, **{**inputs, "refiner": NO_REFINER}), "base alone")
    refined = yield from _finished(text_to_image(pipe, preset, refiner_pipe, decode_switch=True,
                                                 **{**inputs, "refiner": refiner}), "base + refiner")
    yield HandOff(base_alone=alone.images, switch_point=refined.switch_images, refined=refined.images,
                  info=handoff_info(alone, refined))
