"""What a finished text-to-image run reports: its JSON info, and the settings written into each PNG.

The PNG settings follow AUTOMATIC1111's ``parameters`` text chunk (see
``engine.pngmeta``), so a saved image can be read back by other tools.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from engine.schedulers import sampler_label


@dataclass
class Result:
    """What a finished run gives the tab: images [B, H, W, 3] in [0, 1], PIL copies, and the JSON info."""

    images: np.ndarray
    pil_images: list[Image.Image]
    info: dict
    parameters: list[dict]  # per image: {"prompt", "negative_prompt", "settings"} for the PNG chunk
    switch_images: np.ndarray | None = None  # with a refiner, when asked: the hand-off latents decoded [B, H, W, 3]


@dataclass
class RunInfo:
    """One run of the loop (one guidance scale): its decoded images [B, H, W, 3] and its JSON facts."""

    images: np.ndarray
    info: dict
    scheduler: object
    switch_images: np.ndarray | None = None


def png_settings(preset, request, scheduler, guidance_scale: float) -> dict:
    """The A1111-style settings of one run, as written into each PNG (see ``engine.pngmeta``)."""
    settings = {
        "Steps": request.num_inference_steps,
        "Sampler": sampler_label(scheduler),
        "CFG scale": f"{guidance_scale:g}",
        "Seed": request.seed,
        "Size": f"{request.width}x{request.height}",
        "Model": preset.name,
    }
    if request.num_images > 1:
        settings["Batch size"] = request.num_images
    micro = request.micro_conditioning
    if micro is not None:
        settings["Original size"] = "{1}x{0}".format(*micro["original_size"])
        settings["Crop"] = "{1},{0}".format(*micro["crops_coords_top_left"])
        settings["Target size"] = "{1}x{0}".format(*micro["target_size"])
    if request.strength is not None:
        settings["Denoising strength"] = f"{request.strength:g}"
    if request.colour is not None:
        rgb = (request.colour.target_rgb * 255).round().int().tolist()
        settings["Colour guidance"] = "#{:02x}{:02x}{:02x} x{:g} every {}".format(*rgb, request.colour.scale,
                                                                                  request.colour.every)
    if request.clip_guidance_scale:
        settings["CLIP guidance"] = f"{request.clip_guidance_scale:g}"
    if request.refiner is not None:  # A1111's names for SDXL's refiner
        settings["Refiner"] = request.refiner
        settings["Refiner switch at"] = f"{request.denoising_end:g}"
    return settings


def png_parameters(preset, request, runs: list[RunInfo]) -> list[dict]:
    """Per image, in order: {"prompt", "negative_prompt", "settings"} for its PNG chunk."""
    params = []
    for run in runs:
        settings = png_settings(preset, request, run.scheduler, run.info["guidance_scale"])
        for k in range(request.num_images):
            per_image = dict(settings)
            if request.num_images > 1:
                per_image["Batch pos"] = k
            params.append({"prompt": request.prompt, "negative_prompt": request.negative_prompt,
                           "settings": per_image})
    return params


def run_info(preset, request, runs: list[RunInfo], unet, seconds: float, warnings: list[str],
             add_time_ids: torch.Tensor | None, negative_add_time_ids: torch.Tensor | None) -> dict:
    """The JSON the tab shows: the request, the sampler, UNet calls and timings (a sweep lists each run)."""
    info = {
        "model": preset.name,
        "seed": request.seed,
        "num_inference_steps": request.num_inference_steps,
        "scheduler": sampler_label(runs[-1].scheduler),
        "width": request.width,
        "height": request.height,
        "num_images": request.num_images,
        "unet_calls": sum(run.info["unet_calls"] for run in runs),
        "seconds": round(seconds, 3),
        "device": str(unet.device),
        "dtype": str(unet.dtype).replace("torch.", ""),
    }
    if len(runs) == 1:
        info.update(runs[0].info)
    else:
        info["sweep"] = [run.info for run in runs]
    if add_time_ids is not None:
        info["add_time_ids"] = add_time_ids[0].tolist()
        info["negative_add_time_ids"] = (negative_add_time_ids if negative_add_time_ids is not None
                                         else add_time_ids)[0].tolist()
        info["add_time_ids_order"] = "original (h, w), crop (top, left), target (h, w)"
    if request.image is not None:
        info["strength"] = request.strength
    if request.clip_guidance_scale:
        info["clip_guidance_scale"] = request.clip_guidance_scale
    if warnings:
        info["warnings"] = warnings
    return info
