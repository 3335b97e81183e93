"""Our own sampling loop for Stable Diffusion 1.x/2.x and SDXL, step by step.

This is the loop the book's chapter on Stable Diffusion annotates, written in
the style of diffusers' ``StableDiffusionPipeline.__call__`` and
``StableDiffusionXLPipeline.__call__``, one idea per module:

* ``request``: the inputs, checked once into a frozen ``Request`` (``make_request``).
* ``engine.text_encoding`` (shared with the mini models' training): ``encode_prompt``.
* ``time_ids``: SDXL's micro-conditioning, ``add_time_ids`` (diffusers' ``_get_add_time_ids``; the training's too).
* ``loop``: ``prepare_latents``, the conditioning batch, and ``denoise``, with classifier-free guidance.
* ``clip_guidance``, ``colour_guidance``: CLIP and colour guidance, step callbacks for ``denoise``.
* ``refiner``: SDXL's refiner, the expert for the end of the schedule (``denoising_end``, Podell et al. 2023, §2.5).
* ``latents``: img2img's starting latents, the live preview, ``decode_latents``.
* ``info``: the run's JSON and the PNG settings.
* ``pipeline``: ``text_to_image``, the numbered steps in order.

Shapes: B is the number of images, h = height / 8, w = width / 8. Latents are
[B, 4, h, w] in the scaled space the UNet works in (VAE latents times
``vae.config.scaling_factor``). Images are [B, 3, H, W], in [-1, 1] out of the
VAE and in [0, 1] after post-processing.
"""

# The pipeline classes are not imported here: engine.loader.import_model_code does it once, one thread at a
# time (transformers' lazy imports can fail when two threads resolve them at once), after the page is served.
# ``request`` imports no torch, so the tabs lay out their controls from it before torch loads; the loop's
# names (torch, diffusers) resolve on first use, after engine.imports.import_engine (PEP 562 ``__getattr__``).
import importlib

from engine.txt2img.request import (DEFAULT_DENOISING_END, DENOISING_END_UI, MAX_CLIP_GUIDANCE, MAX_COLOUR_SCALE,
                                    MAX_IMAGES, MAX_STEPS, NO_REFINER, SWEEP_DEFAULT, Request, default_guidance,
                                    default_steps, get_pipeline_preset, guidance_allowed, make_request, max_steps,
                                    pipeline_presets, refiner_choices, refiner_names, size_limits,
                                    start_size)

_LOOP_NAMES = {"Result": "engine.txt2img.info", "gpu_seconds": "engine.txt2img.pipeline",
               "run_to_end": "engine.txt2img.pipeline", "text_to_image": "engine.txt2img.pipeline"}

__all__ = ["DEFAULT_DENOISING_END", "DENOISING_END_UI", "MAX_CLIP_GUIDANCE", "MAX_COLOUR_SCALE", "MAX_IMAGES",
           "MAX_STEPS", "NO_REFINER", "SWEEP_DEFAULT", "Request", "Result", "default_guidance", "default_steps",
           "get_pipeline_preset", "gpu_seconds", "guidance_allowed", "make_request", "max_steps", "pipeline_presets",
           "refiner_choices", "refiner_names", "run_to_end", "size_limits", "start_size", "text_to_image"]


def __getattr__(name: str):
    if name not in _LOOP_NAMES:
        raise AttributeError(f"module 'engine.txt2img' has no attribute {name!r}")
    from engine.imports import import_engine

    import_engine()
    return getattr(importlib.import_module(_LOOP_NAMES[name]), name)
