"""Colour guidance (the book's exercise 9): a loss on the decoded predicted x0 steers the latents towards a colour.

The recipe is the "additional guidance" of Jonathan Whitaker's Stable Diffusion
deep dive (fast.ai, 2022): at a guided step with latents x_t and noise
prediction eps (after classifier-free guidance),

1. predicted x0 = (x_t - sqrt(1 - a) eps) / sqrt(a) (Ho et al. 2020, eq. 15; a = alpha-bar_t),
2. decode it with the VAE, pictures in [0, 1],
3. loss = scale * mean |pixel - colour|,
4. step the latents against its gradient by sigma^2.

It is a step callback, like CLIP guidance (``clip_guidance.py``) and diffusers'
``callback_on_step_end``: ``engine.txt2img.loop.denoise`` calls it and the
loop's body stays the book's loop.

Shapes: latents [B, 4, h, w] in the scheduler's space; pictures [B, 3, H, W].
"""

from __future__ import annotations

import torch

from engine.latent_scale import unscale_latent
from engine.noise_schedule import alpha_bar_at, pred_original_sample


def colour_loss(images: torch.Tensor, target_rgb: torch.Tensor) -> torch.Tensor:
    """Mean absolute distance of every pixel of images [B, 3, H, W] in [0, 1] to a colour [3] in [0, 1]."""
    return (images - target_rgb.view(1, 3, 1, 1).to(images)).abs().mean()


def colour_guidance(vae, scheduler, latents, noise_pred, t, target_rgb: torch.Tensor, scale: float):
    """Nudge the latents so the decoded predicted x0 moves towards a colour (the book's exercise 9).

    The same recipe as the "additional guidance" of Whitaker's Stable
    Diffusion deep dive: decode the predicted x0, take the colour loss,
    its gradient with respect to the latents, and step against it by sigma^2
    (sigma^2 = (1 - a) / a for Euler-style latents; (1 - a), the same step
    measured in DDPM-form latents, for the others). Returns (latents, loss).
    """
    with torch.enable_grad():
        latents = latents.detach().requires_grad_(True)
        x0 = pred_original_sample(scheduler, latents, noise_pred.detach(), t)
        images = vae.decode(unscale_latent(x0, vae), return_dict=False)[0]
        loss = colour_loss(images / 2 + 0.5, target_rgb) * scale
        grad = torch.autograd.grad(loss, latents)[0]
    a = alpha_bar_at(scheduler, t)
    step = (1 - a) / a if scheduler.init_noise_sigma > 1 else 1 - a
    return (latents - step * grad).detach(), float(loss)


class ColourGuidanceStep:
    """Colour guidance as a step callback for ``engine.txt2img.loop.denoise`` (named "colour", every
    ``colour.every`` steps): ``step(scheduler, latents, noise_pred, t)`` -> (guided latents, noise_pred, loss),
    by ``colour_guidance``. ``colour``: the request's ``ColourGuidance`` (target_rgb [3] in [0, 1], scale, every)."""

    name = "colour"

    def __init__(self, vae, colour):
        self.vae, self.colour, self.every = vae, colour, colour.every

    def __call__(self, scheduler, latents, noise_pred, t):
        latents, loss = colour_guidance(self.vae, scheduler, latents, noise_pred, t, self.colour.target_rgb,
                                        self.colour.scale)
        return latents, noise_pred, loss


def make_colour_guidance(vae, colour) -> ColourGuidanceStep | None:
    """The step callback for a request's ``colour`` (None when colour guidance is off)."""
    return None if colour is None else ColourGuidanceStep(vae, colour)
