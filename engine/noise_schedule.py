"""The noise schedule, in one place: ᾱ_t, the forward process and the x0 estimate that every view, sampler
and training step reads.

DDPM (Ho et al. 2020, §2; the book's chapter on diffusion models): betas β_1..β_T, α_t = 1 − β_t and
ᾱ_t = ∏_{s≤t} α_s, the fraction of the signal's variance left at timestep t (1 at t = 0, about 0 at T).

* the forward process q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) (eq. 4):
  x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε, ``q_sample``;
* its inverse for a noise estimate ε̂ (eq. 15): x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t, ``predict_x0``, and for
  any scheduler and prediction type, ``pred_original_sample``.

The numbers are diffusers': ᾱ is a scheduler's ``alphas_cumprod``, computed from a scheduler config, and
the forward process is ``DDPMScheduler.add_noise``. Two configs are in use: Stable Diffusion's
(``SD_NOISE_SCHEDULE``: SD 1.x, SDXL and our mini models) and the book's Fashion-MNIST one
(``engine.fashion.configs.SCHEDULER_CONFIG``: linear betas 1e-4 .. 0.02). Both have T = 1000.

Shapes: x_0, ε and x_t alike, e.g. [B, 4, h, w] latents or [B, 1, 32, 32] Fashion images; ᾱ [T] float32.
This module imports torch and diffusers only inside its functions: the tabs read ``SD_NOISE_SCHEDULE``
while the page is laid out, before torch loads (``engine.imports``).
"""

from __future__ import annotations

import math

#: Stable Diffusion's training noise schedule ("scaled_linear" betas from 0.00085 to 0.012 over 1000
#: steps, epsilon prediction), shared by SD 1.x and SDXL and by our mini models.
SD_NOISE_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type="epsilon")


def noise_scheduler(config: dict | None = None):
    """The forward process of training as a diffusers ``DDPMScheduler``: from ``config`` (a scheduler config,
    e.g. the Fashion UNet's), else Stable Diffusion's (``SD_NOISE_SCHEDULE``, ``clip_sample`` off)."""
    from diffusers import DDPMScheduler

    if config is None:
        return DDPMScheduler(**SD_NOISE_SCHEDULE, clip_sample=False)
    return DDPMScheduler.from_config(dict(config))


def alphas_cumprod(scheduler, device=None):
    """ᾱ_t for t = 0..T−1 of any diffusers scheduler: float32 [T] in (0, 1), decreasing, on ``device``."""
    import torch

    return scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)


def alpha_bar_at(scheduler, t) -> float:
    """ᾱ_t of ``scheduler`` at timestep ``t`` as a float in (0, 1), linearly interpolated for a fractional t
    (Euler-style schedulers' timesteps), clamped to 0..T−1."""
    table = scheduler.alphas_cumprod
    t = min(max(float(t), 0.0), len(table) - 1.0)
    low = int(math.floor(t))
    high = min(low + 1, len(table) - 1)
    w = t - low
    return float(table[low]) * (1 - w) + float(table[high]) * w


def q_sample(scheduler, x0, noise, timesteps):
    """The forward process (Ho et al. 2020, eq. 4): x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, by ``scheduler.add_noise``.

    ``x0`` and ``noise`` [B, ...] of one shape; ``timesteps`` long [B] (integers 0..T−1). Returns x_t [B, ...].
    """
    return scheduler.add_noise(x0, noise, timesteps)


def predict_x0(x_t, eps, alpha_bar_t):
    """x̂_0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t (Ho et al. 2020, eq. 15), ᾱ_t a float or a tensor that broadcasts."""
    import torch

    sqrt = math.sqrt if isinstance(alpha_bar_t, float) else torch.sqrt
    return (x_t - sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_bar_t)


def pred_original_sample(scheduler, latents, model_output, t):
    """The clean latents the model predicts at this step, [B, 4, h, w] (diffusers' ``pred_original_sample``).

    ``scale_model_input`` turns every scheduler's latents into the DDPM form
    x_t = √ᾱ x0 + √(1 − ᾱ) ε, the UNet's input. Solving for x0 gives ``predict_x0``;
    for v-prediction (SD 2.x 768), x0 = √ᾱ x_t − √(1 − ᾱ) v. Differentiable in ``latents``.
    """
    x_t = scheduler.scale_model_input(latents, t)
    a = alpha_bar_at(scheduler, t)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return predict_x0(x_t, model_output, a)
    if prediction_type == "v_prediction":
        return math.sqrt(a) * x_t - math.sqrt(1 - a) * model_output
    return model_output  # "sample": the model predicts x0 itself
