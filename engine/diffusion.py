"""What every sampler in the engine yields per step (the noise schedule and the x0 estimate: ``engine.noise_schedule``).

Both loops (the Fashion-MNIST sampler in ``engine.fashion.sampling`` and the
text-to-image loop in ``engine.txt2img.loop``) are generators in the style of
smalldiffusion's ``samples()``: they yield one ``StepState`` after every
scheduler step, which is all a UI needs for progress bars, previews and
trajectories.
"""

from __future__ import annotations

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
    unet_calls: UNet calls so far; guidance_losses: every step callback's loss at
    this step, by name ("clip", "colour"), for those that ran.
    """

    index: int
    timestep: float
    num_steps: int
    latents: torch.Tensor
    pred_original: torch.Tensor
    unet_calls: int = 0
    guidance_losses: dict | None = None

