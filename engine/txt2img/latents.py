"""Between pixels and latents: img2img's starting latents, the live preview, and the final decode.

* img2img (Meng et al. 2022, "SDEdit"): encode the image with the VAE, noise it
  to the timestep where ``strength`` of the schedule is left, denoise from there;
  as diffusers' ``StableDiffusionImg2ImgPipeline`` (``get_timesteps``, ``prepare_latents``).
* ``decode_latents``: divide by the VAE's ``scaling_factor`` (0.18215 for SD,
  0.13025 for SDXL: it gave the latents unit variance in training, Rombach et
  al. 2022 §4.3.2), decode, run the safety checker, post-process.

Images are [B, 3, H, W] in [-1, 1] out of the VAE and [B, H, W, 3] in [0, 1]
after ``postprocess``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from engine.images import pil_to_tensor
from engine.latent_scale import scale_latent, unscale_latent
from engine.preview import preview_image


@contextlib.contextmanager
def vae_upcast_if_needed(vae, kind: str):
    """Run the VAE in fp32 for the duration, when SDXL's fp16 VAE would overflow (``force_upcast``).

    The VAE is the shared cached one, so it goes back to fp16 afterwards; the compute
    queue runs one job at a time, so no other request sees it in fp32.
    """
    upcast = kind == "sdxl" and vae.dtype == torch.float16 and vae.config.force_upcast
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        yield
    finally:
        if upcast:
            vae.to(dtype=torch.float16)


# ----------------------------------------------------------------------------
# Image to image


@torch.no_grad()
def encode_image(pipe, kind: str, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """An image [1, 3, H, W] in [-1, 1] -> latents [1, 4, H/8, W/8], sampled from the VAE's posterior."""
    vae = pipe.vae
    with vae_upcast_if_needed(vae, kind):
        image = image.to(device=vae.device, dtype=vae.dtype)
        latents = vae.encode(image).latent_dist.sample(generator)
    return scale_latent(latents, vae).to(pipe.unet.dtype)


def image_to_tensor(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """An RGB PIL image resized to width x height -> [1, 3, H, W] in [-1, 1], the VAE's input."""
    return pil_to_tensor(image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS))


def get_img2img_timesteps(scheduler, num_inference_steps: int, strength: float) -> torch.Tensor:
    """The tail of the schedule that img2img runs: the last ``strength`` fraction of the steps.

    strength 1 runs them all (the image is fully noised); strength 0 runs none.
    """
    init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
    if init_timestep == 0:  # PNDM's schedule has one step more than asked: skip it too
        return scheduler.timesteps[:0]
    t_start = max(num_inference_steps - init_timestep, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    return timesteps


def prepare_img2img_latents(scheduler, image_latents: torch.Tensor, timesteps: torch.Tensor, batch_size: int,
                            generator: torch.Generator) -> torch.Tensor:
    """Noise the image latents to the first timestep that will run: x_t = sqrt(a) x0 + sqrt(1 - a) eps."""
    latents = image_latents.repeat(batch_size, 1, 1, 1)
    if len(timesteps) == 0:
        return latents  # strength 0: nothing to denoise
    noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    return scheduler.add_noise(latents, noise, timesteps[:1].repeat(batch_size))


# ----------------------------------------------------------------------------
# Decode


def postprocess(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> float32 array [B, H, W, 3] in [0, 1] (diffusers' output_type="np")."""
    return (images / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()


def numpy_to_pil(images: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(a) for a in (images * 255).round().astype("uint8")]


def run_safety_checker(pipe, images: torch.Tensor) -> tuple[torch.Tensor, list[bool] | None]:
    """SD 1.x's CLIP-based NSFW filter, when the preset ships one: flagged images come back black."""
    safety_checker = getattr(pipe, "safety_checker", None)
    if safety_checker is None:
        return images, None
    device = images.device
    clip_input = pipe.feature_extractor(numpy_to_pil(postprocess(images)), return_tensors="pt").to(device)
    images, has_nsfw = safety_checker(images=images, clip_input=clip_input.pixel_values.to(images.dtype))
    return images, [bool(x) for x in has_nsfw]


@torch.no_grad()
def preview(pipe, preset, x0: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """The live preview of one step: the first image's predicted x0 [B, 4, h, w] as a PIL image of ``size`` (W, H).

    Usually a fixed linear latent->RGB map (``engine.preview``), because a VAE
    decode per step would cost more than the step. Presets with
    ``"preview": "decode"`` (the mini models, whose 8x8 latent decodes in
    about 5 ms and whose VAE the published SD factors do not fit) decode x0
    with their own VAE instead: the preview is then exactly the image the loop
    would give if it stopped here.
    """
    if preset.options.get("preview") != "decode":
        return preview_image(x0, preset.kind, size)
    vae = pipe.vae
    with vae_upcast_if_needed(vae, preset.kind):
        image = vae.decode(unscale_latent(x0[:1].to(device=vae.device, dtype=vae.dtype), vae)).sample
    return numpy_to_pil(postprocess(image))[0].resize(size, Image.Resampling.BILINEAR)


@torch.no_grad()
def decode_latents(pipe, kind: str, latents: torch.Tensor) -> tuple[np.ndarray, list[bool] | None]:
    """Latents [B, 4, h, w] -> images [B, H, W, 3] in [0, 1], and NSFW flags (or None).

    SDXL's original VAE overflows in fp16, so like diffusers we run it in fp32
    when its config says ``force_upcast`` (the fp16-fix VAE of our SDXL presets
    does not need it).
    """
    vae = pipe.vae
    with vae_upcast_if_needed(vae, kind):
        latents = latents.to(device=vae.device, dtype=vae.dtype)
        images = vae.decode(unscale_latent(latents, vae), return_dict=False)[0]
    images, has_nsfw = run_safety_checker(pipe, images)
    out = postprocess(images)
    if has_nsfw is not None:
        out[np.array(has_nsfw, dtype=bool)] = 0.0  # black, as diffusers shows a flagged image
    return out, has_nsfw
