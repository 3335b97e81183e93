"""What every sampler in the engine shares: the state it yields per step, and the x0 estimate.

Both loops (the Fashion-MNIST sampler in ``engine.fashion.sampling`` and the
text-to-image loop in ``engine.txt2img.loop``) are generators in the style of
smalldiffusion's ``samples()``: they yield one ``StepState`` after every
scheduler step, which is all a UI needs for progress bars, previews and
trajectories.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class StepState:
    """The state after one denoising step.

    index: 0-based step number, out of ``num_steps``; timestep: the t the model
    was evaluated at (a float for schedulers with fractional timesteps);
    latents: x_{t-1} after the step; pred_original: the model's estimate of the
    clean sample x0 made at this step (same shape as ``latents``: [B, 1, 32, 32]
    in model space for Fashion-MNIST, [B, 4, h, w] scaled latents for SD);
    unet_calls: UNet calls so far; colour_loss: the colour-guidance loss when it
    ran at this step; guidance_losses: every step callback's loss at this step, by
    name ("colour", "clip"), for those that ran.
    """

    index: int
    timestep: float
    num_steps: int
    latents: torch.Tensor
    pred_original: torch.Tensor
    unet_calls: int = 0
    colour_loss: float | None = None
    guidance_losses: dict | None = None


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar_t: float | torch.Tensor) -> torch.Tensor:
    """x̂_0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t (Ho et al. 2020, eq. 15), ᾱ_t a float or a tensor."""
    sqrt = math.sqrt if isinstance(alpha_bar_t, float) else torch.sqrt
    return (x_t - sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_bar_t)
