"""Text (or image) to image, step by step: diffusers' ``StableDiffusionPipeline.__call__`` as our own loop.

We take the components of a pipeline loaded by ``engine.loader`` (the
tokenizer(s), text encoder(s), UNet, VAE, scheduler, safety checker) and never
call ``pipe(...)``. ``run`` reads like the pipeline's ``__call__``, with the same step numbers and
comments as ``StableDiffusionXLPipeline.__call__`` (SD 1.x/2.x too: ``StableDiffusionPipeline`` has no
step 7, so its loop is its "7."), to be read side by side:

0. Default height and width, 1. Check inputs (``make_request``, before anything loads).
2. Define call parameters (guidance on or off: the unconditional half of the batch).
3. Encode input prompt (``engine.text_encoding.encode_prompt``), once even for a sweep.
4. Prepare timesteps, 5. Prepare latent variables (seeded noise, or the noised image for img2img).
6. Prepare extra step kwargs (``eta``, ``generator``: what the scheduler's ``step`` takes).
7. Prepare added time ids & embeddings (SDXL's ``add_time_ids``: ``engine.txt2img.time_ids``; the
   [uncond, cond] batch: ``engine.txt2img.loop.prepare_conditioning``).
8. Denoising loop (``engine.txt2img.loop.denoise``), classifier-free guidance in plain sight; CLIP and
   colour guidance (``engine.txt2img.clip_guidance``, ``colour_guidance``) are step callbacks.
   8.1 Apply denoising_end: with SDXL's refiner (``engine.txt2img.refiner``), the base runs to
   ``denoising_end`` and the refiner from there (Podell et al. 2023, §2.5; eDiff-I's expert denoisers,
   Balaji et al. 2022).
Then decode (``decode_latents``): VAE decoder, safety checker, post-processing (unnumbered in diffusers).

References: Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models" (CVPR), §3; Podell et al. 2023, "SDXL", §2.1-2.2; the book's
chapter on Stable Diffusion and its exercises 8 (micro-conditioning) and 9
(colour guidance).
"""

from __future__ import annotations

import math
import time
from typing import Iterator

import numpy as np
import torch

from engine.errors import UserError
from engine.loader import free_memory
from engine.schedulers import make_scheduler
from engine.text_encoding import encode_prompt
from engine.txt2img.clip_guidance import make_clip_guidance
from engine.txt2img.colour_guidance import make_colour_guidance
from engine.txt2img.info import Result, RunInfo, png_parameters, run_info
from engine.txt2img.latents import (decode_latents, encode_image, get_img2img_timesteps, image_to_tensor, numpy_to_pil,
                                    prepare_img2img_latents, preview)
from engine.txt2img.loop import denoise, prepare_conditioning, prepare_extra_step_kwargs, prepare_latents
from engine.txt2img.refiner import base_timesteps, load_refiner, prepare_refiner, refiner_info, refiner_loop
from engine.txt2img.request import Request, make_request
from engine.txt2img.time_ids import prepare_add_time_ids

try:  # ZeroGPU on Hugging Face Spaces; off a ZeroGPU Space spaces.GPU returns the function unchanged
    import spaces
except ImportError:  # pragma: no cover - spaces is optional locally
    spaces = None

PREVIEW_MAX_SIDE = 512


def gpu(duration):
    """``@spaces.GPU(duration=duration)`` when the ``spaces`` package is there (a no-op off ZeroGPU)."""
    if spaces is None:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


#: Seconds of one UNet step per megapixel of image, with guidance (a batch of 2), on an H100 in fp16:
#: SD 1.5 at 512x512 (0.26 MP) runs 54.5 it/s and SDXL at 1024x1024 (1.05 MP) 14.9 it/s with stock
#: diffusers (stable-fast's README, torch 2.1), i.e. 0.070 and 0.064 s per megapixel-step. This project has
#: not measured a GPU yet (scripts/bench_gpu.py will: replace these with its figures); until then the
#: published rates stand, with ``GPU_MARGIN`` on top for a slower or shared card and attention's growth.
SECONDS_PER_MEGAPIXEL_STEP = {"sd": 0.070, "sdxl": 0.064}
GPU_MARGIN = 3.0
GPU_FIXED_SECONDS = 15  # moving inputs, the VAE decode, the safety checker, PNG encoding
GPU_MAX_SECONDS = 300


def gpu_seconds(pipe=None, preset=None, *, num_inference_steps=30, width=512, height=512, num_images=1,
                guidance_scales=None, colour=None, clip_guidance_scale=0, **_) -> int:
    """ZeroGPU time to reserve for one ``text_to_image`` call (``spaces.GPU`` calls it with the same arguments).

    ``GPU_FIXED_SECONDS`` + ``GPU_MARGIN`` x the measured rate
    (``SECONDS_PER_MEGAPIXEL_STEP``) x megapixels x steps x images x runs,
    capped at ``GPU_MAX_SECONDS``; colour guidance and CLIP guidance decode and
    backpropagate through the VAE at every guided step, so each counts double.
    Monotone in steps and pixels.
    """
    try:
        megapixels = max(0.25, float(width) * float(height) / 1e6)
        runs = len(guidance_scales) if guidance_scales else 1
        extra = (2 if colour else 1) * (2 if clip_guidance_scale and float(clip_guidance_scale) > 0 else 1)
        work = float(num_inference_steps) * megapixels * float(num_images) * runs * extra
    except (TypeError, ValueError):
        return 60  # bad input: make_request will say why, quickly
    rate = SECONDS_PER_MEGAPIXEL_STEP.get(getattr(preset, "kind", "sdxl"), max(SECONDS_PER_MEGAPIXEL_STEP.values()))
    return int(min(GPU_MAX_SECONDS, GPU_FIXED_SECONDS + GPU_MARGIN * rate * work))


def _oom_message(request: Request) -> str:
    return (f"Out of GPU memory at {request.width}x{request.height} with {request.num_images} image(s). "
            "Cached memory was freed: lower the size or the number of images (or the sweep length) and try again.")


@gpu(duration=gpu_seconds)
def text_to_image(pipe, preset, refiner_pipe=None, decode_switch: bool = False, **inputs) -> Iterator[dict | Result]:
    """Text (or image) to image, as a generator: progress dicts, then one ``Result``.

    ``inputs`` are ``make_request``'s (diffusers' names: prompt, negative_prompt,
    guidance_scale, num_inference_steps, seed, width, height, ...). Progress
    dicts: {"step", "num_steps", "preview" (PIL, every ``preview_every`` steps,
    else None), "run", "runs"}. With ``guidance_scales`` (the guidance sweep)
    the loop runs once per scale, same seed, reusing the prompt embeddings. With ``refiner`` (a refiner
    preset's name) the base hands over at ``denoising_end``; ``refiner_pipe`` is that refiner's pipeline
    when the caller has it already (tests), else it comes from the loader; ``decode_switch`` also decodes
    the latents the base hands over (``Result.switch_images``, ``engine.txt2img.handoff``).
    """
    # 0. Default height and width, 1. Check inputs
    request = make_request(preset, **inputs)
    try:
        yield from run(pipe, preset, request, refiner_pipe, decode_switch)
    except torch.cuda.OutOfMemoryError:
        free_memory()
        raise UserError(_oom_message(request)) from None


def prepare_timesteps_and_latents(pipe, kind: str, request: Request, scheduler, generator, dtype, image_tensor):
    """Steps 4 (Prepare timesteps) and 5 (Prepare latent variables): the timesteps to run and x_T [B, 4, h, w];
    for img2img the tail of the schedule and the encoded image noised to its first timestep."""
    unet, vae = pipe.unet, pipe.vae
    scheduler.set_timesteps(request.num_inference_steps, device=unet.device)
    if image_tensor is None:
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        latents = prepare_latents(request.num_images, unet.config.in_channels, request.height, request.width,
                                  vae_scale_factor, dtype, unet.device, generator, scheduler.init_noise_sigma)
        return scheduler.timesteps, latents
    image_latents = encode_image(pipe, kind, image_tensor, generator)
    timesteps = get_img2img_timesteps(scheduler, request.num_inference_steps, request.strength)
    return timesteps, prepare_img2img_latents(scheduler, image_latents, timesteps, request.num_images, generator)


def preview_size(request: Request) -> tuple[int, int]:
    """(W, H) of the live preview: the image size, shrunk so the longer side is at most 512."""
    shrink = min(1.0, PREVIEW_MAX_SIDE / max(request.width, request.height))
    return round(request.width * shrink), round(request.height * shrink)


def show_preview(request: Request, index: int, num_steps: int, seconds_since_last: float) -> bool:
    """Whether step ``index`` (0-based) gets a live preview: every ``preview_every`` steps, but no sooner than
    ``preview_seconds`` after the last one, and always at the last step (unless previews are off). A preview
    costs a decode and a picture on the page, so a fast loop is paced by the clock rather than by its steps."""
    every = request.preview_every
    if not every:
        return False
    if index == num_steps - 1:
        return True
    return index % every == 0 and seconds_since_last >= request.preview_seconds


def run_stage(pipe, preset, request: Request, unet, scheduler, latents, timesteps, cond, guidance_scale: float,
              extra_step_kwargs: dict, guides, run_index: int, offset: int, total: int):
    """One model's stretch of the denoising loop (the whole loop, or the base's or the refiner's share): yields
    progress dicts numbered ``offset + 1`` .. of ``total``; returns (latents [B, 4, h, w], {"steps", "calls",
    "seconds", "losses"})."""
    start, calls, losses, last_preview = time.perf_counter(), 0, {}, -math.inf
    for state in denoise(unet, scheduler, latents, timesteps, cond, guidance_scale, extra_step_kwargs, guides):
        latents, calls, index = state.latents, state.unet_calls, offset + state.index
        for name, loss in (state.guidance_losses or {}).items():
            losses.setdefault(f"{name}_loss", []).append(round(loss, 5))
        show = show_preview(request, index, total, time.perf_counter() - last_preview)
        if show:
            last_preview = time.perf_counter()
        yield {"step": index + 1, "num_steps": total, "run": run_index + 1, "runs": len(request.guidance_scales),
               "preview": preview(pipe, preset, state.pred_original, preview_size(request)) if show else None}
    return latents, {"steps": len(timesteps), "calls": calls, "seconds": round(time.perf_counter() - start, 3),
                     "losses": losses}


def denoise_one_run(pipe, preset, request: Request, embeds, time_ids, image_tensor, run_index: int, guides=(),
                    refiner=None, decode_switch: bool = False):
    """Steps 4-8 and the decode, for one guidance scale: yields progress dicts, returns a ``RunInfo``.
    ``guides``: the step callbacks of model-based guidance (CLIP, colour) for ``denoise``. With a ``refiner``
    (``engine.txt2img.refiner``) the base stops at ``request.denoising_end`` and the refiner denoises the rest
    (Podell et al. 2023, §2.5); ``decode_switch`` also decodes the latents handed over, noise and all (the
    hand-off view)."""
    # 2. Define call parameters: this run's guidance scale, and whether it needs the unconditional half
    unet = pipe.unet
    g = request.guidance_scales[run_index]
    do_cfg = g > 1 and unet.config.time_cond_proj_dim is None
    scheduler = make_scheduler(pipe.scheduler, request.scheduler)
    generator = torch.Generator("cpu").manual_seed(request.seed)

    # 4. Prepare timesteps, 5. Prepare latent variables
    timesteps, latents = prepare_timesteps_and_latents(pipe, preset.kind, request, scheduler, generator,
                                                       embeds.prompt_embeds.dtype, image_tensor)
    # 6. Prepare extra step kwargs
    extra_step_kwargs = prepare_extra_step_kwargs(scheduler, generator)
    # 7. Prepare added time ids & embeddings: one [uncond, cond] batch (SDXL's time ids are made once, in ``run``)
    cond = prepare_conditioning(embeds, do_cfg, unet.device, *time_ids)

    # 8. Denoising loop (with a refiner: the base from T down to the switch point)
    refine = refiner_loop(refiner, request, g) if refiner is not None else None
    if refine is not None:  # 8.1 Apply denoising_end: the base's share of the schedule
        timesteps = base_timesteps(scheduler, timesteps, request.denoising_end)
    total = len(timesteps) + (len(refine["timesteps"]) if refine is not None else 0)
    latents, base = yield from run_stage(pipe, preset, request, unet, scheduler, latents, timesteps, cond, g,
                                         extra_step_kwargs, guides, run_index, 0, total)
    stages, switch_images = [base], None
    if refine is not None and decode_switch:  # what the refiner receives, as the VAE shows it
        switch_images = decode_latents(pipe, preset.kind, latents)[0]
    if refine is not None:  # then the refiner, from the switch point to t = 0, on the base's latents as they are
        latents, refined = yield from run_stage(pipe, preset, request, refine["unet"], refine["scheduler"], latents,
                                                refine["timesteps"], refine["cond"], g, refine["extra_step_kwargs"],
                                                guides, run_index, len(timesteps), total)
        stages.append(refined)

    # Decode (diffusers' unnumbered last part; the VAE is the base's, a refiner shares it)
    images, has_nsfw = decode_latents(pipe, preset.kind, latents)
    info = {"guidance_scale": g, "classifier_free_guidance": do_cfg, "timesteps": total,
            "unet_calls": sum(s["calls"] for s in stages), "unet_batch": (2 if do_cfg else 1) * request.num_images,
            "loop_seconds": round(sum(s["seconds"] for s in stages), 3)}
    if has_nsfw is not None:
        info["nsfw_filtered"] = has_nsfw
    for stage in stages:  # colour_loss, clip_loss: one value per guided step
        for name, values in stage["losses"].items():
            info.setdefault(name, []).extend(values)
    if refine is not None:
        info["refiner"] = refiner_info(refiner, request, refine, base, refined)
    return RunInfo(images=images, info=info, scheduler=scheduler, switch_images=switch_images)


def run(pipe, preset, request: Request, refiner_pipe=None, decode_switch: bool = False) -> Iterator[dict | Result]:
    """The whole request, in the pipeline's numbered steps; yields progress dicts, then a ``Result``.
    ``refiner_pipe``: the refiner's pipeline, when the caller has it (else the loader's, by the request's name);
    ``decode_switch``: the ``Result`` also holds the hand-off latents decoded (``switch_images``)."""
    start = time.perf_counter()

    # 0. Default height and width, 1. Check inputs: done by ``make_request`` (``text_to_image``), before anything loaded

    # 2. Define call parameters (does any run of a sweep need the unconditional half?)
    any_guidance = any(g > 1 for g in request.guidance_scales)

    # 3. Encode input prompt (once, even for a sweep)
    with torch.no_grad():
        embeds = encode_prompt(pipe, preset.kind, request.prompt, request.negative_prompt, any_guidance,
                               request.num_images)

    # 7. Prepare added time ids (SDXL's micro-conditioning), made here once, like the prompt embeddings; each
    #    run batches both in its own step 7
    time_ids = prepare_add_time_ids(pipe, request, embeds.prompt_embeds.dtype)

    # img2img: the input image as a tensor, once (the img2img pipelines' "Preprocess image")
    image_tensor = None
    if request.image is not None:
        image_tensor = image_to_tensor(request.image, request.width, request.height)

    # Model-based guidance as step callbacks (diffusers' callback_on_step_end), made once: CLIP guidance (its
    # image model loaded on first use, the prompt's CLIP embedding), then colour guidance
    clip = make_clip_guidance(pipe, preset, request.prompt, request.num_images, request.clip_guidance_scale)
    guides = [g for g in (clip, make_colour_guidance(pipe.vae, request.colour)) if g is not None]

    # SDXL's refiner (loaded on first use, sharing the base's text_encoder_2 and VAE): its prompt and time ids, once
    refiner = None
    if request.refiner is not None:
        refiner_pipe = refiner_pipe if refiner_pipe is not None else load_refiner(preset, request.refiner)
        refiner = prepare_refiner(refiner_pipe, request.refiner, request)

    # 4-8 and decode, once per guidance scale
    runs = []
    for run_index in range(len(request.guidance_scales)):
        runs.append((yield from denoise_one_run(pipe, preset, request, embeds, time_ids, image_tensor, run_index,
                                                guides, refiner, decode_switch)))

    images = np.concatenate([r.images for r in runs])
    info = run_info(preset, request, runs, pipe.unet, time.perf_counter() - start, embeds.warnings, *time_ids)
    switch = [r.switch_images for r in runs if r.switch_images is not None]
    yield Result(images=images, pil_images=numpy_to_pil(images), info=info,
                 parameters=png_parameters(preset, request, runs),
                 switch_images=np.concatenate(switch) if switch else None)


def run_to_end(events: Iterator) -> Result:
    """Consume a ``text_to_image`` generator and return its ``Result`` (scripts and tests)."""
    result = None
    for event in events:
        if isinstance(event, Result):
            result = event
    if result is None:
        raise RuntimeError("text_to_image ended without a result")
    return result
