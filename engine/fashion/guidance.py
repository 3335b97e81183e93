"""Guidance side by side on Fashion-MNIST: none, classifier-free, classifier, both (the book's exercise 5).

Every panel samples the same class from the same seed (the same x_T) with the
Fashion sampler, and differs only in its two scales:

* classifier-free guidance (Ho & Salimans 2022): ε = ε_uncond + g · (ε_cond − ε_uncond),
  a second UNet pass per step (the null class 10);
* classifier guidance (Dhariwal & Nichol 2021, §4): ε ← ε − s · √(1−ᾱ_t) · ∇ log p(y | x_t),
  a forward and a backward pass of a separate noise-aware classifier per step.

The judge (``engine.fashion.judge``, a classifier of clean images, not the
guiding one) says how many samples look like the class asked, and each panel
times itself, so the cost of the extra gradient is in plain view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from engine.diffusion import StepState
from engine.errors import one_of
from engine.fashion.configs import SAMPLER_STEPS
from engine.fashion.sampling import SampleResult, sample, sample_to_end, validate_request

#: The panels, in the order shown.
MODES = ("none", "classifier-free", "classifier", "both")


def mode_scales(mode: str, guidance_scale: float, classifier_scale: float) -> tuple[float, float]:
    """(g, s) of a panel: "none" (1, 0), "classifier-free" (g, 0), "classifier" (1, s), "both" (g, s)."""
    g = guidance_scale if mode in ("classifier-free", "both") else 1.0
    s = classifier_scale if mode in ("classifier", "both") else 0.0
    return g, s


@dataclass
class Panel:
    """One finished panel: its mode and scales, the samples ``(N, 1, 32, 32)`` in [0, 1], the wall time, and
    how many of them the judge assigns to the class asked (None without a judge)."""

    mode: str
    guidance_scale: float
    classifier_scale: float
    result: SampleResult
    hits: int | None

    @property
    def seconds_per_image(self) -> float:
        return self.result.seconds / len(self.result.images)

    @property
    def fidelity(self) -> float | None:
        return None if self.hits is None else self.hits / len(self.result.images)

    def summary(self) -> dict:
        """The panel's figures as plain values (the tab's JSON, the evaluation script's rows)."""
        return {"mode": self.mode, "guidance_scale": self.guidance_scale, "classifier_scale": self.classifier_scale,
                "judged_as_asked": self.hits, "count": len(self.result.images),
                "class_fidelity": None if self.hits is None else round(self.fidelity, 4),
                "seconds_per_image": round(self.seconds_per_image, 4), "wall_time_s": round(self.result.seconds, 3)}


def judged_hits(judge, images01: torch.Tensor, label: int) -> int | None:
    """How many images ``(N, 1, 32, 32)`` in [0, 1] the judge assigns to ``label`` (None without a judge)."""
    if judge is None:
        return None
    from engine.fashion.judge import judge_images

    preds, _ = judge_images(judge, images01)
    return int((preds == label).sum())


def compare(unet, classifier, judge, label, count: int, sampler: str, num_inference_steps: int,
            guidance_scale: float, classifier_scale: float, seed: int, modes=MODES,
            scheduler_config: dict | None = None, cpu_bf16: bool | None = None,
            warm_up: bool = True) -> Iterator[StepState | Panel]:
    """Sample the same class from the same seed once per mode; yield every step, and a ``Panel`` after each mode.

    ``warm_up``: first one untimed image at the sampler's fewest steps, with both guidances on, so that the
    first panel's time does not carry the first calls' set-up (the CPU's kernels, autocast).

    Every value is checked first (``UserError`` naming the input), as the Fashion sampler checks its request
    (``guidance_scale`` is used by "classifier-free" and "both", ``classifier_scale`` by "classifier" and
    "both"), and ``modes`` among ``MODES``.
    """
    request = validate_request(label, count, sampler, num_inference_steps, guidance_scale, seed, classifier_scale)
    modes = [one_of(mode, "mode", MODES) for mode in modes]
    if warm_up:
        steps = SAMPLER_STEPS[request.sampler][0]
        sample_to_end(unet, request.label, 1, request.sampler, steps, max(request.guidance_scale, 1.5), request.seed,
                      scheduler_config=scheduler_config, cpu_bf16=cpu_bf16, classifier_scale=request.classifier_scale,
                      classifier=classifier if request.classifier_scale > 0 else None)
    for mode in modes:
        g, s = mode_scales(mode, request.guidance_scale, request.classifier_scale)
        for state in sample(unet, request.label, request.count, request.sampler, request.num_inference_steps, g,
                            request.seed, scheduler_config=scheduler_config, cpu_bf16=cpu_bf16,
                            classifier_scale=s, classifier=classifier):
            if isinstance(state, SampleResult):
                yield Panel(mode, g, s, state, judged_hits(judge, state.images, request.label))
            else:
                yield state
