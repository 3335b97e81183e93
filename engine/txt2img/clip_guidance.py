"""CLIP guidance: a CLIP model judges the decoded predicted x0, and its gradient steers the noise prediction.

The reference is diffusers' community pipeline ``clip_guided_stable_diffusion``
(after Crowson's and Jack000's CLIP-guided diffusion). At a step with latents
x_t and noise prediction eps (after classifier-free guidance):

1. predicted x0 = (x_t - sqrt(1 - a) eps) / sqrt(a) (Ho et al. 2020, eq. 15; a = alpha-bar_t),
2. decode it with the VAE, embed the picture with a CLIP image tower,
3. loss = scale * sum over images of the spherical distance
   2 arcsin(|u - v| / 2)^2 between the image's and the prompt's unit embeddings
   (Radford et al. 2021 for CLIP; the loss is diffusers' ``spherical_dist_loss``),
4. its gradient g with respect to x_t (in the DDPM form, the UNet's input),
5. eps <- eps + sqrt(1 - a) g: classifier guidance in the eps form (Dhariwal &
   Nichol 2021, §4.2, eq. 14), as diffusers' pipeline does for PNDM. The
   scheduler then steps with the guided eps, so every scheduler works unchanged.

Unlike diffusers' pipeline we do not run the UNet again with gradients: eps is
held fixed, so dx0/dx_t = 1/sqrt(a) (the cheap variant that colour guidance uses
too). No cutouts: the mini tower sees the whole 64 px picture, and a hub CLIP a
resized one.

Shapes: latents [B, 4, h, w] in the scheduler's space; text embeddings [B, E] unit vectors.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from engine.errors import UserError
from engine.latent_scale import unscale_latent
from engine.noise_schedule import alpha_bar_at, pred_original_sample


def spherical_dist_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared geodesic distance on the unit sphere, [B, E] x [B, E] -> [B]: 2 arcsin(|x - y| / 2)^2."""
    x = torch.nn.functional.normalize(x, dim=-1)
    y = torch.nn.functional.normalize(y, dim=-1)
    return (x - y).norm(dim=-1).div(2).arcsin().pow(2).mul(2)


def decoded_x0(vae, x0: torch.Tensor) -> torch.Tensor:
    """Scaled latents [B, 4, h, w] -> pictures [B, 3, H, W] in [0, 1] (differentiable)."""
    images = vae.decode(unscale_latent(x0, vae), return_dict=False)[0]
    return (images.float() / 2 + 0.5).clamp(0, 1)


def clip_score(encoder, vae, x0: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Cosine similarity [B] of each decoded x0 [B, 4, h, w] with its prompt's embedding [B, E]."""
    return (encoder.embed_images(decoded_x0(vae, x0)) * text_embeds.to(torch.float32)).sum(-1)


def model_input_scale(scheduler, latents: torch.Tensor, t) -> float:
    """c with x_t (DDPM form) = c * latents: 1 for DDPM-style schedulers, 1 / sqrt(sigma^2 + 1) for Euler-style."""
    one = torch.ones(1, device=latents.device, dtype=torch.float32)
    return float(scheduler.scale_model_input(one, t))


def guided_model_output(model_output: torch.Tensor, delta_eps: torch.Tensor, a: float, prediction_type: str):
    """The model output that makes the noise estimate eps + ``delta_eps`` at fixed x_t.

    epsilon: eps + d; v_prediction (v = sqrt(a) eps - sqrt(1 - a) x0, x0 moving by -sqrt(1-a)/sqrt(a) d):
    v + d / sqrt(a); sample (x0 itself): x0 - sqrt(1 - a) / sqrt(a) d.
    """
    if prediction_type == "epsilon":
        return model_output + delta_eps
    if prediction_type == "v_prediction":
        return model_output + delta_eps / math.sqrt(a)
    return model_output - math.sqrt((1 - a) / a) * delta_eps


def clip_guidance(vae, scheduler, encoder, latents: torch.Tensor, noise_pred: torch.Tensor, t,
                  text_embeds: torch.Tensor, scale: float) -> tuple[torch.Tensor, float]:
    """One CLIP-guidance step: returns (guided noise_pred, the loss before the step).

    The loss is ``scale`` x the sum over images of ``spherical_dist_loss``; its
    gradient is taken through the VAE decoder and the image tower with respect
    to the latents, then turned into the gradient with respect to the DDPM-form
    x_t (divided by ``model_input_scale``), and eps moves by sqrt(1 - a) times it.
    """
    with torch.enable_grad():
        latents = latents.detach().requires_grad_(True)
        x0 = pred_original_sample(scheduler, latents, noise_pred.detach(), t)
        embeds = encoder.embed_images(decoded_x0(vae, x0))
        loss = spherical_dist_loss(embeds, text_embeds.to(embeds)).sum() * scale
        grad = torch.autograd.grad(loss, latents)[0]
    a = alpha_bar_at(scheduler, t)
    grad_x_t = grad / model_input_scale(scheduler, latents, t)
    delta = (math.sqrt(1 - a) * grad_x_t).to(noise_pred.dtype)
    return guided_model_output(noise_pred, delta, a, scheduler.config.prediction_type), float(loss.detach())


class ClipGuidanceStep:
    """CLIP guidance as a step callback for ``engine.txt2img.loop.denoise`` (named "clip", every step).

    Called as ``step(scheduler, latents, noise_pred, t)`` -> (latents, noise_pred, loss): it leaves the
    latents alone and guides the noise prediction.
    """

    name = "clip"
    every = 1

    def __init__(self, vae, encoder, text_embeds: torch.Tensor, scale: float):
        self.vae, self.encoder, self.text_embeds, self.scale = vae, encoder, text_embeds, scale

    def __call__(self, scheduler, latents, noise_pred, t):
        noise_pred, loss = clip_guidance(self.vae, scheduler, self.encoder, latents, noise_pred, t,
                                         self.text_embeds, self.scale)
        return latents, noise_pred, loss


# ----------------------------------------------------------------------------
# Which CLIP image model a preset uses, loaded through engine.loader


def image_encoder_preset(preset):
    """The "clip-image" preset for a text-to-image preset: its folder's ``image_encoder/`` (the mini tower),
    else the CLIP its ``clip_model`` option names (a hub repo or a folder), else for a hub model
    ``openai/clip-vit-base-patch32``. ``UserError`` when there is none (a local folder without one)."""
    from engine.clip_image import CONFIG_NAME, DEFAULT_HUB_CLIP
    from engine.presets import Preset

    name = f"{preset.name} · CLIP image model"
    if not preset.is_hub and (Path(preset.source) / "image_encoder" / CONFIG_NAME).is_file():
        return Preset(name=name, kind="clip-image", path=preset.source, subfolder="image_encoder", parent=preset.name)
    source = preset.options.get("clip_model") or (DEFAULT_HUB_CLIP if preset.is_hub else None)
    if source is None:
        raise UserError(f"'{preset.name}' has no CLIP image model, so it cannot do CLIP guidance: "
                        "set clip_guidance_scale to 0.")
    if Path(source).is_dir():
        return Preset(name=name, kind="clip-image", path=str(Path(source).resolve()), parent=preset.name)
    return Preset(name=name, kind="clip-image", repo=source, dtype=preset.dtype, parent=preset.name)


@torch.no_grad()
def prompt_clip_embeds(pipe, encoder, prompt: str, num_images: int) -> torch.Tensor:
    """The prompt's CLIP text embedding, [num_images, E] unit vectors, of its plain text (A1111's ``(word:1.5)``
    brackets taken out: prompt weights steer the UNet's conditioning, not CLIP's target)."""
    from engine.prompt_weights import parse
    from engine.text_encoding import tokenize

    ids = tokenize(pipe.tokenizer, [parse(prompt).text])
    return encoder.embed_text(pipe, ids).float().expand(num_images, -1)


def make_clip_guidance(pipe, preset, prompt: str, num_images: int, scale: float) -> ClipGuidanceStep | None:
    """The step callback for ``scale`` > 0 (None when 0): the image model loaded lazily, once, through
    ``engine.loader``, on the pipeline's device."""
    if not scale:
        return None
    from engine import loader

    encoder = loader.load(image_encoder_preset(preset), device=str(pipe.unet.device))
    return ClipGuidanceStep(pipe.vae, encoder, prompt_clip_embeds(pipe, encoder, prompt, num_images), scale)


@torch.no_grad()
def clip_scores(pipe, preset, prompt: str, images) -> list[float]:
    """The CLIP score (cosine similarity) of each finished picture with the prompt, by the image model CLIP
    guidance follows: ``images`` [B, H, W, 3] in [0, 1] (numpy, as ``Result.images``) -> B floats. The Guidance
    tab scores every panel with it, guided or not; ``UserError`` when the preset has no CLIP image model."""
    import numpy as np

    from engine import loader

    device = pipe.unet.device
    encoder = loader.load(image_encoder_preset(preset), device=str(device))
    pictures = torch.from_numpy(np.asarray(images, dtype=np.float32)).permute(0, 3, 1, 2).to(device)
    text_embeds = prompt_clip_embeds(pipe, encoder, prompt, len(pictures))
    return (encoder.embed_images(pictures) * text_embeds.to(device)).sum(-1).tolist()
