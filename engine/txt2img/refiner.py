"""SDXL's refiner: the base model denoises from t = T to the switch point, a second expert from there to t = 0.

Podell et al. 2023, "SDXL", §2.5 (the refinement stage): a second latent
diffusion model, trained on high-quality pictures and only on the first 20% of
the noise schedule, takes the base model's latents at that point and denoises
them to the end. It is an ensemble of expert denoisers as in eDiff-I (Balaji et
al. 2022, "eDiff-I: Text-to-Image Diffusion Models with an Ensemble of Expert
Denoisers", §4): each expert is trained on one stretch of the noise levels.
The refiner reads the second text encoder only (OpenCLIP bigG), and its
micro-conditioning swaps SDXL's target size for an aesthetic score.

In diffusers' names this is ``StableDiffusionXLPipeline(..., denoising_end=f,
output_type="latent")`` followed by ``StableDiffusionXLImg2ImgPipeline(image=latents,
denoising_start=f)``; ``tests/engine/test_refiner.py`` checks that our loop
gives the same latents and pixels. Both halves use the same number of
inference steps, so each runs its share of one schedule: with 25 steps and
f = 0.8 the base runs the timesteps t >= 200 and the refiner those below.

Shapes: latents [B, 4, h, w] in the scaled space the UNets work in (the
hand-off passes them as they are: no decode, no new noise); time ids [1, 5].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.schedulers import make_scheduler
from engine.text_encoding import PromptEmbeds, encode_prompt
from engine.txt2img.loop import prepare_conditioning, prepare_extra_step_kwargs
from engine.txt2img.time_ids import prepare_refiner_add_time_ids


def switch_timestep(scheduler, fraction: float) -> int:
    """diffusers' ``discrete_timestep_cutoff``: round(T - f T) with T = ``num_train_timesteps`` (1000), so 200 for
    f = 0.8. The base runs the timesteps t >= it, the refiner those t < it."""
    total = scheduler.config.num_train_timesteps
    return int(round(total - fraction * total))


def base_timesteps(scheduler, timesteps: torch.Tensor, denoising_end: float) -> torch.Tensor:
    """The base model's share of ``timesteps`` (descending) [n_base]: those at or above the switch timestep,
    as ``StableDiffusionXLPipeline.__call__`` step 8.1 ("Apply denoising_end")."""
    cutoff = switch_timestep(scheduler, denoising_end)
    return timesteps[:len([t for t in timesteps if t >= cutoff])]


def refiner_timesteps(scheduler, num_inference_steps: int, denoising_start: float, device) -> torch.Tensor:
    """The refiner's share [n_refiner]: the same schedule set afresh, then the timesteps below the switch
    timestep, as ``StableDiffusionXLImg2ImgPipeline.get_timesteps`` with ``denoising_start`` (one more for a
    second-order scheduler, so it never stops between the two halves of a Heun step). Sets the scheduler's
    begin index, so its step counter starts there."""
    scheduler.set_timesteps(num_inference_steps, device=device)
    cutoff = switch_timestep(scheduler, denoising_start)
    count = int((scheduler.timesteps < cutoff).sum().item())
    if scheduler.order == 2 and count % 2 == 0:
        count += 1
    start = len(scheduler.timesteps) - count
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]


@dataclass
class Refiner:
    """A loaded refiner, ready for every run of a request: its pipeline (``StableDiffusionXLImg2ImgPipeline``,
    sharing the base's ``text_encoder_2`` and VAE), preset name, prompt embeddings ([B, 77, D2], pooled
    [B, P]) and time ids ([1, 5] each)."""

    pipe: object
    name: str
    embeds: PromptEmbeds
    time_ids: tuple[torch.Tensor, torch.Tensor]


def prepare_refiner(pipe, name: str, request) -> Refiner:
    """Encode the prompt through the refiner's text encoder (the second one only) and build its time ids, once
    per request (a guidance sweep reuses them)."""
    any_guidance = any(g > 1 for g in request.guidance_scales)
    with torch.no_grad():
        embeds = encode_prompt(pipe, "sdxl-refiner", request.prompt, request.negative_prompt, any_guidance,
                               request.num_images)
    return Refiner(pipe, name, embeds, prepare_refiner_add_time_ids(pipe, request, embeds.prompt_embeds.dtype))


def refiner_loop(refiner: Refiner, request, guidance_scale: float) -> dict:
    """What the refiner's half of one run needs: its scheduler (the request's sampler on the refiner's config),
    timesteps, conditioning batch, whether guidance is on, and a fresh CPU generator seeded with the request's
    seed (as a diffusers user passes ``generator=torch.Generator().manual_seed(seed)`` to each pipeline)."""
    unet = refiner.pipe.unet
    scheduler = make_scheduler(refiner.pipe.scheduler, request.scheduler)
    timesteps = refiner_timesteps(scheduler, request.num_inference_steps, request.denoising_end, unet.device)
    do_cfg = guidance_scale > 1 and unet.config.time_cond_proj_dim is None
    generator = torch.Generator("cpu").manual_seed(request.seed)
    return {"unet": unet, "scheduler": scheduler, "timesteps": timesteps,
            "cond": prepare_conditioning(refiner.embeds, do_cfg, unet.device, *refiner.time_ids),
            "extra_step_kwargs": prepare_extra_step_kwargs(scheduler, generator)}


def refiner_info(refiner: Refiner, request, loop: dict, base: dict, refine: dict) -> dict:
    """The run details of the hand-off: both models' step counts, UNet calls and loop times (``base`` and
    ``refine``: ``run_stage``'s figures; ``loop``: ``refiner_loop``'s)."""
    return {"model": refiner.name, "denoising_end": request.denoising_end,
            "switch_timestep": switch_timestep(loop["scheduler"], request.denoising_end),
            "aesthetic_score": request.aesthetic_score,
            "negative_aesthetic_score": request.negative_aesthetic_score,
            "base_steps": base["steps"], "base_unet_calls": base["calls"], "base_seconds": base["seconds"],
            "refiner_steps": refine["steps"], "refiner_unet_calls": refine["calls"],
            "refiner_seconds": refine["seconds"],
            "add_time_ids": refiner.time_ids[0][0].tolist(), "negative_add_time_ids": refiner.time_ids[1][0].tolist(),
            "add_time_ids_order": "original (h, w), crop (top, left), aesthetic score"}


def load_refiner(preset, name: str):
    """The refiner called ``name`` for the base ``preset``, through the one cached loader (``engine.loader``):
    a ``StableDiffusionXLImg2ImgPipeline`` that shares the base's ``text_encoder_2`` and VAE."""
    from engine import loader
    from engine.txt2img.request import get_refiner_preset

    return loader.load(get_refiner_preset(preset, name))
