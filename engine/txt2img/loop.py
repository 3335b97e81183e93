"""The denoising loop of Stable Diffusion and SDXL, with classifier-free guidance in plain sight.

``denoise`` is the loop body of diffusers' ``StableDiffusionXLPipeline.__call__``
(step "8. Denoising loop"; "7." in ``StableDiffusionPipeline``) written as a
generator that yields an ``engine.diffusion.StepState`` per timestep:

* Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", eq. 6:
  eps~ = (1 + w) eps(x, c) - w eps(x); diffusers (and we) write it with
  g = 1 + w as eps(x) + g (eps(x, c) - eps(x)), so g = 1 is no guidance.
* Model-based guidance comes in as step callbacks, as diffusers' ``callback_on_step_end``:
  CLIP guidance (``clip_guidance.py``) and colour guidance (``colour_guidance.py``, the
  book's exercise 9). ``denoise`` calls them after classifier-free guidance and knows
  nothing else about them.

Shapes: B images, latents [B, 4, h, w] (h = height / 8) in the scaled space the
UNet works in (VAE latents times ``vae.config.scaling_factor``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from diffusers.utils.torch_utils import randn_tensor

from engine.diffusion import StepState
from engine.noise_schedule import pred_original_sample
from engine.text_encoding import PromptEmbeds


def prepare_latents(batch_size: int, num_channels_latents: int, height: int, width: int, vae_scale_factor: int,
                    dtype: torch.dtype, device, generator: torch.Generator, init_noise_sigma: float) -> torch.Tensor:
    """x_T ~ N(0, I) of shape [B, 4, H/8, W/8], times the scheduler's ``init_noise_sigma``.

    The noise comes from ``randn_tensor`` with a CPU ``torch.Generator``: it is
    drawn on the CPU and then moved, so a seed gives the same image on any
    device, and the same one as the diffusers pipeline given that generator.
    ``init_noise_sigma`` is 1 for DDPM-style schedulers and about 14.6 for
    Euler-style ones, which work in the sigma (variance-exploding) space.
    As diffusers' ``StableDiffusionPipeline.prepare_latents``.
    """
    shape = (batch_size, num_channels_latents, height // vae_scale_factor, width // vae_scale_factor)
    latents = randn_tensor(shape, generator=generator, device=torch.device(device), dtype=dtype)
    return latents * init_noise_sigma


@dataclass
class Conditioning:
    """The UNet's conditioning for one loop, already batched as [uncond, cond] when guidance is on.

    encoder_hidden_states: [2B or B, 77, D]; added_cond_kwargs (SDXL):
    {"text_embeds": [2B or B, 1280], "time_ids": [2B or B, 6]}, else None.
    """

    encoder_hidden_states: torch.Tensor
    added_cond_kwargs: dict | None
    do_classifier_free_guidance: bool


def prepare_conditioning(embeds: PromptEmbeds, do_classifier_free_guidance: bool, device,
                         add_time_ids: torch.Tensor | None = None,
                         negative_add_time_ids: torch.Tensor | None = None) -> Conditioning:
    """Concatenate unconditional and conditional inputs into one batch, so one UNet call does both.

    ``embeds`` may have been encoded with guidance on and be used here with it
    off (the guidance sweep does this): then only the conditional half is used.
    """
    hidden = embeds.prompt_embeds
    if do_classifier_free_guidance:
        hidden = torch.cat([embeds.negative_prompt_embeds, hidden])
    added = None
    if add_time_ids is not None:
        batch = embeds.prompt_embeds.shape[0]
        text_embeds = embeds.pooled_prompt_embeds
        time_ids = add_time_ids.repeat(batch, 1)
        if do_classifier_free_guidance:
            negative = add_time_ids if negative_add_time_ids is None else negative_add_time_ids
            text_embeds = torch.cat([embeds.negative_pooled_prompt_embeds, text_embeds])
            # [uncond x B, cond x B], the same order as the hidden states
            time_ids = torch.cat([negative.repeat(batch, 1), time_ids])
        added = {"text_embeds": text_embeds.to(device), "time_ids": time_ids.to(device)}
    return Conditioning(hidden.to(device), added, do_classifier_free_guidance)


def prepare_extra_step_kwargs(scheduler, generator: torch.Generator, eta: float = 0.0) -> dict:
    """``eta`` for DDIM, ``generator`` for ancestral samplers: only what ``scheduler.step`` accepts."""
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


def classifier_free_guidance(noise_pred_uncond: torch.Tensor, noise_pred_text: torch.Tensor,
                             guidance_scale: float) -> torch.Tensor:
    """Ho & Salimans 2022, eq. 6, as diffusers writes it: eps_uncond + g * (eps_cond - eps_uncond), g = 1 + w.

    The one home of the combination: ``denoise`` below and the Fashion sampler
    (``engine.fashion.sampling.predict_noise``) both call it.
    """
    return noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)


@torch.no_grad()
def denoise(unet, scheduler, latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning,
            guidance_scale: float, extra_step_kwargs: dict, guides: Sequence = ()) -> Iterator[StepState]:
    """The denoising loop, one ``StepState`` per timestep.

    At each timestep t:
      1. duplicate the latents when guidance is on (one batch: [uncond, cond]),
      2. ``scale_model_input`` (Euler divides by sqrt(sigma^2 + 1); DDIM does nothing),
      3. one UNet call predicts the noise eps for the whole batch,
      4. classifier-free guidance: eps = eps_uncond + g * (eps_cond - eps_uncond)
         (Ho & Salimans 2022); with g <= 1 there is no unconditional half at all,
      5. the step callbacks ``guides``, in order, each every ``guide.every`` steps (CLIP guidance,
         ``engine.txt2img.clip_guidance``; colour guidance, ``engine.txt2img.colour_guidance``):
         ``guide(scheduler, latents, eps, t)`` -> (latents, eps, loss), the loss kept under ``guide.name``,
      6. ``scheduler.step``: x_t -> x_{t-1}.
    """
    unet_calls = 0
    for i, t in enumerate(timesteps):
        # expand the latents if we are doing classifier-free guidance
        latent_model_input = torch.cat([latents] * 2) if cond.do_classifier_free_guidance else latents
        latent_model_input = scheduler.scale_model_input(latent_model_input, t)

        # predict the noise residual
        noise_pred = unet(latent_model_input, t, encoder_hidden_states=cond.encoder_hidden_states,
                          added_cond_kwargs=cond.added_cond_kwargs, return_dict=False)[0]
        unet_calls += 1

        # perform guidance
        if cond.do_classifier_free_guidance:
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
            noise_pred = classifier_free_guidance(noise_pred_uncond, noise_pred_text, guidance_scale)

        x0 = pred_original_sample(scheduler, latents, noise_pred, t)
        losses = {}
        for guide in guides:  # step callbacks: model-based guidance
            if i % guide.every == 0:
                latents, noise_pred, losses[guide.name] = guide(scheduler, latents, noise_pred, t)

        # compute the previous noisy sample x_t -> x_t-1
        latents = scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]
        yield StepState(index=i, timestep=float(t), num_steps=len(timesteps), latents=latents, pred_original=x0,
                        unet_calls=unet_calls, guidance_losses=losses or None)
