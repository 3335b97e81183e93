"""Our own sampling loop for Stable Diffusion 1.x/2.x and SDXL, step by step.

This is the loop the book's chapter on Stable Diffusion annotates, written in
the style of diffusers' ``StableDiffusionPipeline.__call__`` and
``StableDiffusionXLPipeline.__call__`` so that each named step here maps onto
theirs. We take the components of a pipeline loaded by ``engine.loader`` (the
tokenizer(s), text encoder(s), UNet, VAE, scheduler, safety checker) and never
call ``pipe(...)``:

1. ``encode_prompt``: text -> CLIP hidden states (and SDXL's pooled embedding).
2. ``prepare_latents``: seeded Gaussian noise, exactly as diffusers draws it.
3. ``get_add_time_ids`` (SDXL): the micro-conditioning vector.
4. ``denoise``: the loop, yielding every step's latents and predicted x0.
   Classifier-free guidance is in plain sight: one batched UNet call on
   [uncond, cond], then ``uncond + g * (cond - uncond)``.
5. ``decode``: latents -> pixels with the VAE decoder, then the safety checker.

References:

* Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
  Models" (CVPR): denoising in the latent space of an autoencoder (§3), with a
  text encoder's hidden states fed to the UNet by cross-attention (§3.3).
* Ho & Salimans 2022, "Classifier-Free Diffusion Guidance": eq. 6,
  eps~ = (1 + w) eps(x, c) - w eps(x); diffusers (and we) write it with
  g = 1 + w as eps(x) + g (eps(x, c) - eps(x)), so g = 1 is no guidance.
* Podell et al. 2023, "SDXL: Improving Latent Diffusion Models for High-Resolution
  Image Synthesis": two text encoders (§2.1) and micro-conditioning on the
  original size and crop coordinates (§2.2).
* The book's chapter on Stable Diffusion, and its exercises 8 (micro-
  conditioning) and 9 (colour guidance).

Shapes: B is the number of images, h = height / 8, w = width / 8. Latents are
[B, 4, h, w] in the scaled space the UNet works in (VAE latents times
``vae.config.scaling_factor``). Images are [B, 3, H, W], in [-1, 1] out of the
VAE and in [0, 1] after post-processing.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: F401 - see below
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from engine.loader import free_memory
from engine.preview import preview_image
from engine.schedulers import DEFAULT, SCHEDULER_NAMES, make_scheduler, sampler_label

# The two pipeline classes are imported here, once, in the thread that imports the app: the loader
# imports them again inside a request, and transformers' lazy imports (CLIPImageProcessor's
# torchvision fallback) can fail when two request threads resolve them for the first time at once.

try:  # ZeroGPU on Hugging Face Spaces; off a ZeroGPU Space spaces.GPU returns the function unchanged
    import spaces
except ImportError:  # pragma: no cover - spaces is optional locally
    spaces = None

MAX_STEPS = 150
MAX_IMAGES = 4
MAX_GUIDANCE = 50.0
MAX_SEED = 2**32 - 1
DEFAULT_SIZE_LIMITS = {"sd": (64, 1024), "sdxl": (64, 2048)}
SWEEP_DEFAULT = (1.0, 2.0, 4.0, 12.0)
MAX_SWEEP = 8
PREVIEW_MAX_SIDE = 512


def gpu(duration):
    """``@spaces.GPU(duration=duration)`` when the ``spaces`` package is there (a no-op off ZeroGPU)."""
    if spaces is None:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


# ----------------------------------------------------------------------------
# What the steps hand each other


@dataclass
class PromptEmbeds:
    """Output of ``encode_prompt``.

    prompt_embeds: [B, 77, D] text encoder hidden states (D = 768 for SD 1.x,
        1024 for SD 2.x, 2048 for SDXL: 768 + 1280 concatenated).
    negative_prompt_embeds: same shape, or None when guidance is off.
    pooled_prompt_embeds / negative_pooled_prompt_embeds: SDXL only, [B, 1280],
        the second encoder's projected pooled output.
    warnings: user-facing notes (a prompt cut at 77 tokens).
    """

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None = None
    pooled_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class StepState:
    """What the loop yields after each scheduler step.

    i: step index (0-based) out of ``num_steps``; t: the timestep just used;
    latents: x_{t-1} after the step, [B, 4, h, w]; x0: the model's prediction
    of the clean latents made at this step, [B, 4, h, w]; unet_calls so far.
    """

    i: int
    t: float
    num_steps: int
    latents: torch.Tensor
    x0: torch.Tensor
    unet_calls: int
    colour_loss: float | None = None


# ----------------------------------------------------------------------------
# 0. Check inputs


def _as_int(value, name: str) -> int:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{name} must be a whole number, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}.") from None
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"{name} must be a whole number, got {value!r}.")
    return int(number)


def size_limits(preset) -> tuple[int, int]:
    """(min, max) side in pixels: the preset's ``min_size``/``max_size``, else 64 and 1024 (2048 for SDXL)."""
    low, high = DEFAULT_SIZE_LIMITS.get(preset.kind, (64, 1024))
    return int(preset.options.get("min_size", low)), int(preset.options.get("max_size", high))


def max_steps(preset) -> int:
    return int(preset.options.get("max_steps", MAX_STEPS))


def guidance_allowed(preset) -> bool:
    """False for presets distilled to sample without guidance (SDXL Turbo)."""
    return preset.options.get("guidance", True) is not False


def check_guidance(preset, guidance_scale) -> float:
    """A guidance scale as a float: finite, from 0 to 50, and at most 1 for presets without guidance."""
    try:
        guidance = float(guidance_scale)
    except (TypeError, ValueError):
        raise ValueError(f"guidance_scale must be a number, got {guidance_scale!r}.") from None
    if not math.isfinite(guidance) or guidance < 0:
        raise ValueError(f"guidance_scale must be a number from 0 to {MAX_GUIDANCE:g}, got {guidance_scale!r}.")
    if guidance > MAX_GUIDANCE:
        raise ValueError(f"guidance_scale {guidance:g} is above {MAX_GUIDANCE:g}; images burn out far below that "
                         "(7.5 is typical).")
    if guidance > 1 and not guidance_allowed(preset):
        note = preset.options.get("guidance_note", "this model samples without guidance")
        raise ValueError(f"'{preset.name}' takes no guidance: {note} Set guidance_scale to 0.")
    return guidance


def check_inputs(preset, *, prompt, negative_prompt="", guidance_scale=7.5, num_inference_steps=30,
                 width=512, height=512, num_images=1, seed=0, strength=None) -> dict:
    """Validate one request; return the values as clean Python numbers.

    Raises ValueError with a message that names the bad value and what to do.
    A prompt over 77 tokens is not an error: ``encode_prompt`` cuts it and warns.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be text, got {type(prompt).__name__}.")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        raise ValueError(f"negative_prompt must be text, got {type(negative_prompt).__name__}.")
    low, high = size_limits(preset)
    width, height = _as_int(width, "width"), _as_int(height, "height")
    for name, value in (("width", width), ("height", height)):
        if value % 8:
            raise ValueError(f"{name} must be a multiple of 8 (the VAE downsamples by 8), got {value}; "
                             f"try {max(8, value // 8 * 8)} or {value // 8 * 8 + 8}.")
        if not low <= value <= high:
            raise ValueError(f"{name} {value} is outside {low}-{high} pixels, the range of '{preset.name}'.")
    steps = _as_int(num_inference_steps, "num_inference_steps")
    top = max_steps(preset)
    if not 1 <= steps <= top:
        raise ValueError(f"num_inference_steps must be between 1 and {top} for '{preset.name}', got {steps}.")
    guidance = check_guidance(preset, guidance_scale)
    images = _as_int(num_images, "num_images")
    if not 1 <= images <= MAX_IMAGES:
        raise ValueError(f"num_images must be between 1 and {MAX_IMAGES}, got {images}.")
    seed = _as_int(seed, "seed")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be between 0 and {MAX_SEED}, got {seed}.")
    out = dict(prompt=prompt, negative_prompt=negative_prompt or "", guidance_scale=guidance,
               num_inference_steps=steps, width=width, height=height, num_images=images, seed=seed)
    if strength is not None:
        try:
            strength = float(strength)
        except (TypeError, ValueError):
            raise ValueError(f"strength must be a number from 0 to 1, got {strength!r}.") from None
        if not (math.isfinite(strength) and 0 <= strength <= 1):
            raise ValueError(f"strength must be between 0 (keep the image) and 1 (ignore it), got {strength!r}.")
        out["strength"] = strength
    return out


def parse_pair(value, name: str, default: tuple[int, int] | None, *, lowest: int = 1) -> tuple[int, int] | None:
    """A pair given as "W,H" / "x,y", "WxH", [a, b] or one number n (= n, n); empty -> ``default``.

    Returned in the order written (first, second). SDXL's diffusers arguments
    are (height, width) and (top, left): ``micro_conditioning`` swaps them.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        parts = [value, value]
    elif isinstance(value, str):
        parts = [p for p in value.replace("x", ",").replace("X", ",").replace(";", ",").split(",")]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise ValueError(f"{name} must be two numbers like \"1024,1024\", got {value!r}.")
    if len(parts) != 2:
        raise ValueError(f"{name} must be two numbers like \"1024,1024\", got {value!r}.")
    try:
        pair = tuple(_as_int(str(p).strip(), name) for p in parts)
    except ValueError:
        raise ValueError(f"{name} must be two whole numbers like \"1024,1024\", got {value!r}.") from None
    if min(pair) < lowest or max(pair) > 16384:
        raise ValueError(f"{name} values must be between {lowest} and 16384, got {value!r}.")
    return pair


def micro_conditioning(width: int, height: int, original_size=None, crops_coords_top_left=None, target_size=None,
                       negative_original_size=None, negative_crops_coords_top_left=None,
                       negative_target_size=None) -> dict:
    """SDXL's size and crop conditions from "W,H" / "x,y" inputs, in diffusers' order.

    diffusers takes ``original_size`` and ``target_size`` as (height, width) and
    ``crops_coords_top_left`` as (top, left), i.e. (y, x): we swap here so the
    UI can speak in the usual W,H and x,y. Defaults are diffusers': both sizes
    (height, width) of the image being made, crop (0, 0). Negative ones default
    to None: the same as the positive ones. (diffusers uses the negative ones
    only when both negative sizes are given, with a (0, 0) negative crop by
    default; we fill each empty one from its positive one instead.)
    """
    def swap(pair):
        return None if pair is None else (pair[1], pair[0])

    return {
        "original_size": swap(parse_pair(original_size, "original_size", (width, height))),
        "crops_coords_top_left": swap(parse_pair(crops_coords_top_left, "crops_coords_top_left", (0, 0), lowest=0)),
        "target_size": swap(parse_pair(target_size, "target_size", (width, height))),
        "negative_original_size": swap(parse_pair(negative_original_size, "negative_original_size", None)),
        "negative_crops_coords_top_left": swap(parse_pair(negative_crops_coords_top_left,
                                                          "negative_crops_coords_top_left", None, lowest=0)),
        "negative_target_size": swap(parse_pair(negative_target_size, "negative_target_size", None)),
    }


# ----------------------------------------------------------------------------
# 1. Encode input prompt


def truncation_warning(tokenizer, text: str, label: str = "prompt") -> str | None:
    """If ``text`` has more than 77 tokens (with start/end), say which words CLIP will not see.

    The cut part is what diffusers logs: the tokens between position 76 and the end token.
    """
    limit = tokenizer.model_max_length
    ids = tokenizer(text, truncation=False).input_ids
    if len(ids) <= limit:
        return None
    cut = tokenizer.decode(ids[limit - 1:-1])
    return (f"The {label} has {len(ids)} tokens; CLIP reads at most {limit}, so this part is ignored: "
            f"\"{cut}\"")


def _tokenize(tokenizer, text: str) -> torch.Tensor:
    """Token ids [1, 77]: start token, the text, end token, padding; cut at 77 like diffusers."""
    return tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def _encode_sd(pipe, text: str) -> torch.Tensor:
    """SD 1.x/2.x: the text encoder's last hidden state, [1, 77, D]."""
    ids = _tokenize(pipe.tokenizer, text).to(pipe.text_encoder.device)
    return pipe.text_encoder(ids)[0]


def _encode_sdxl(pipe, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL: both encoders' penultimate hidden states concatenated, [1, 77, 768 + 1280],
    and the second encoder's pooled (projected) output, [1, 1280] (Podell et al. 2023, §2.1)."""
    hidden, pooled = [], None
    for tokenizer, text_encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        ids = _tokenize(tokenizer, text).to(text_encoder.device)
        out = text_encoder(ids, output_hidden_states=True)
        if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds [1, 1280]
            pooled = out[0]
        hidden.append(out.hidden_states[-2])
    return torch.cat(hidden, dim=-1), pooled


def encode_prompt(pipe, kind: str, prompt: str, negative_prompt: str = "", do_classifier_free_guidance: bool = True,
                  num_images_per_prompt: int = 1) -> PromptEmbeds:
    """Step 1: the prompt and the negative prompt through the text encoder(s).

    An empty negative prompt is the unconditional input: the embedding of ""
    for SD; for SDXL presets with ``force_zeros_for_empty_prompt`` (SDXL base)
    a tensor of zeros, as diffusers does. Returns embeddings repeated
    ``num_images_per_prompt`` times along the batch.
    """
    # SDXL's two tokenizers split text the same way (only their padding differs): one check is enough.
    warnings = [note for note in (truncation_warning(pipe.tokenizer, prompt, "prompt"),
                                  truncation_warning(pipe.tokenizer, negative_prompt or "", "negative prompt"))
                if note]

    dtype = pipe.text_encoder_2.dtype if kind == "sdxl" else pipe.text_encoder.dtype
    n = num_images_per_prompt
    if kind == "sdxl":
        prompt_embeds, pooled = _encode_sdxl(pipe, prompt)
        negative_embeds = negative_pooled = None
        if do_classifier_free_guidance:
            if not negative_prompt and pipe.config.force_zeros_for_empty_prompt:
                negative_embeds, negative_pooled = torch.zeros_like(prompt_embeds), torch.zeros_like(pooled)
            else:
                negative_embeds, negative_pooled = _encode_sdxl(pipe, negative_prompt or "")
        return PromptEmbeds(
            prompt_embeds=prompt_embeds.to(dtype).repeat(n, 1, 1),
            negative_prompt_embeds=None if negative_embeds is None else negative_embeds.to(dtype).repeat(n, 1, 1),
            pooled_prompt_embeds=pooled.repeat(n, 1),
            negative_pooled_prompt_embeds=None if negative_pooled is None else negative_pooled.repeat(n, 1),
            warnings=warnings,
        )
    prompt_embeds = _encode_sd(pipe, prompt).to(dtype).repeat(n, 1, 1)
    negative_embeds = None
    if do_classifier_free_guidance:
        negative_embeds = _encode_sd(pipe, negative_prompt or "").to(dtype).repeat(n, 1, 1)
    return PromptEmbeds(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds, warnings=warnings)


# ----------------------------------------------------------------------------
# 2. Prepare latent variables


def prepare_latents(batch_size: int, num_channels_latents: int, height: int, width: int, vae_scale_factor: int,
                    dtype: torch.dtype, device, generator: torch.Generator, init_noise_sigma: float) -> torch.Tensor:
    """Step 2: x_T ~ N(0, I) of shape [B, 4, H/8, W/8], times the scheduler's ``init_noise_sigma``.

    The noise comes from ``randn_tensor`` with a CPU ``torch.Generator``: it is
    drawn on the CPU and then moved, so a seed gives the same image on any
    device, and the same one as the diffusers pipeline given that generator.
    ``init_noise_sigma`` is 1 for DDPM-style schedulers and about 14.6 for
    Euler-style ones, which work in the sigma (variance-exploding) space.
    """
    shape = (batch_size, num_channels_latents, height // vae_scale_factor, width // vae_scale_factor)
    latents = randn_tensor(shape, generator=generator, device=torch.device(device), dtype=dtype)
    return latents * init_noise_sigma


# ----------------------------------------------------------------------------
# 3. SDXL micro-conditioning


def get_add_time_ids(unet, original_size, crops_coords_top_left, target_size, dtype,
                     text_encoder_projection_dim: int) -> torch.Tensor:
    """Step 3 (SDXL): the six numbers [orig_h, orig_w, crop_top, crop_left, target_h, target_w], [1, 6].

    SDXL was trained on images of every size, upscaled and randomly cropped,
    with the original size and the crop given to the UNet as extra
    conditions (Podell et al. 2023, §2.2). Each number gets a sinusoidal
    embedding, and the six go into the timestep embedding together with the
    pooled text embedding. At sampling time an original size of (1024, 1024)
    and a (0, 0) crop ask for a sharp, centred picture; a small original size
    asks for the look of an upscaled one, a large crop for a cut-off subject.
    """
    add_time_ids = list(original_size) + list(crops_coords_top_left) + list(target_size)
    passed = unet.config.addition_time_embed_dim * len(add_time_ids) + text_encoder_projection_dim
    expected = unet.add_embedding.linear_1.in_features
    if passed != expected:
        raise ValueError(f"This SDXL UNet expects an added embedding of {expected} numbers, but the time ids and "
                         f"pooled text make {passed}: the model's configs do not match.")
    return torch.tensor([add_time_ids], dtype=dtype)


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


# ----------------------------------------------------------------------------
# 4. Denoising loop


def prepare_extra_step_kwargs(scheduler, generator: torch.Generator, eta: float = 0.0) -> dict:
    """``eta`` for DDIM, ``generator`` for ancestral samplers: only what ``scheduler.step`` accepts."""
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


def alpha_bar_at(scheduler, t) -> float:
    """alpha-bar_t, the fraction of signal variance left at timestep t (interpolated for fractional t)."""
    alphas_cumprod = scheduler.alphas_cumprod
    t = min(max(float(t), 0.0), len(alphas_cumprod) - 1.0)
    low = int(math.floor(t))
    high = min(low + 1, len(alphas_cumprod) - 1)
    w = t - low
    return float(alphas_cumprod[low]) * (1 - w) + float(alphas_cumprod[high]) * w


def predict_x0(scheduler, latents: torch.Tensor, model_output: torch.Tensor, t) -> torch.Tensor:
    """The clean latents the model predicts at this step, [B, 4, h, w].

    ``scale_model_input`` turns every scheduler's latents into the DDPM form
    x_t = sqrt(a) x0 + sqrt(1 - a) eps (a = alpha-bar_t), the UNet's input.
    Solving for x0 (Ho et al. 2020, eq. 15):
    x0 = (x_t - sqrt(1 - a) eps) / sqrt(a); for v-prediction (SD 2.x 768),
    x0 = sqrt(a) x_t - sqrt(1 - a) v. Differentiable in ``latents``.
    """
    x_t = scheduler.scale_model_input(latents, t)
    a = alpha_bar_at(scheduler, t)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return (x_t - math.sqrt(1 - a) * model_output) / math.sqrt(a)
    if prediction_type == "v_prediction":
        return math.sqrt(a) * x_t - math.sqrt(1 - a) * model_output
    return model_output  # "sample": the model predicts x0 itself


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
        x0 = predict_x0(scheduler, latents, noise_pred.detach(), t)
        images = vae.decode(x0 / vae.config.scaling_factor, return_dict=False)[0]
        loss = colour_loss(images / 2 + 0.5, target_rgb) * scale
        grad = torch.autograd.grad(loss, latents)[0]
    a = alpha_bar_at(scheduler, t)
    step = (1 - a) / a if scheduler.init_noise_sigma > 1 else 1 - a
    return (latents - step * grad).detach(), float(loss)


@torch.no_grad()
def denoise(unet, scheduler, latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning,
            guidance_scale: float, extra_step_kwargs: dict, colour: dict | None = None) -> Iterator[StepState]:
    """Step 4: the denoising loop, one ``StepState`` per timestep.

    At each timestep t:
      1. duplicate the latents when guidance is on (one batch: [uncond, cond]),
      2. ``scale_model_input`` (Euler divides by sqrt(sigma^2 + 1); DDIM does nothing),
      3. one UNet call predicts the noise eps for the whole batch,
      4. classifier-free guidance: eps = eps_uncond + g * (eps_cond - eps_uncond)
         (Ho & Salimans 2022); with g <= 1 there is no unconditional half at all,
      5. optional colour guidance every k steps,
      6. ``scheduler.step``: x_t -> x_{t-1}.

    ``colour``: None or {"target": tensor [3] in [0, 1], "scale": float,
    "every": int, "vae": the VAE}.
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
            noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)

        x0 = predict_x0(scheduler, latents, noise_pred, t)
        loss = None
        if colour is not None and i % colour["every"] == 0:
            latents, loss = colour_guidance(colour["vae"], scheduler, latents, noise_pred, t,
                                            colour["target"], colour["scale"])

        # compute the previous noisy sample x_t -> x_t-1
        latents = scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]
        yield StepState(i=i, t=float(t), num_steps=len(timesteps), latents=latents, x0=x0,
                        unet_calls=unet_calls, colour_loss=loss)


# ----------------------------------------------------------------------------
# 5. Decode


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
        image = vae.decode(x0[:1].to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor).sample
    return numpy_to_pil(postprocess(image))[0].resize(size, Image.Resampling.BILINEAR)


@torch.no_grad()
def decode(pipe, kind: str, latents: torch.Tensor) -> tuple[np.ndarray, list[bool] | None]:
    """Step 5: latents [B, 4, h, w] -> images [B, H, W, 3] in [0, 1], and NSFW flags (or None).

    Divide by the VAE's ``scaling_factor`` (0.18215 for SD, 0.13025 for SDXL:
    it gave the latents unit variance in training, Rombach et al. 2022 §4.3.2),
    decode, post-process. SDXL's original VAE overflows in fp16, so like
    diffusers we run it in fp32 when its config says ``force_upcast`` (the
    fp16-fix VAE of our SDXL presets does not need it).
    """
    vae = pipe.vae
    with vae_upcast_if_needed(vae, kind):
        latents = latents.to(device=vae.device, dtype=vae.dtype)
        images = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    images, has_nsfw = run_safety_checker(pipe, images)
    out = postprocess(images)
    if has_nsfw is not None:
        out[np.array(has_nsfw, dtype=bool)] = 0.0  # black, as diffusers shows a flagged image
    return out, has_nsfw


# ----------------------------------------------------------------------------
# Image to image


@torch.no_grad()
def encode_image(pipe, kind: str, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """An image [1, 3, H, W] in [-1, 1] -> latents [1, 4, H/8, W/8], sampled from the VAE's posterior."""
    vae = pipe.vae
    with vae_upcast_if_needed(vae, kind):
        image = image.to(device=vae.device, dtype=vae.dtype)
        latents = vae.encode(image).latent_dist.sample(generator)
    return (latents * vae.config.scaling_factor).to(pipe.unet.dtype)


def image_to_tensor(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """An RGB PIL image resized to width x height -> [1, 3, H, W] in [-1, 1], the VAE's input."""
    from engine.images import pil_to_tensor

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
# The whole run, as the tab uses it


def gpu_seconds(pipe=None, preset=None, *, num_inference_steps=30, width=512, height=512, num_images=1,
                guidance_scales=None, colour=None, **_) -> int:
    """ZeroGPU time to reserve for one ``text_to_image`` call (``spaces.GPU`` calls it with the same arguments).

    A generous 0.3 s per step and megapixel-image (SDXL at 1024x1024 with
    guidance runs about 8 steps/s on an H100), plus 20 s for loading and
    decoding, capped at 300 s; colour guidance decodes and backpropagates
    through the VAE, so it counts double.
    """
    try:
        megapixels = max(0.25, float(width) * float(height) / 1024**2)
        runs = len(guidance_scales) if guidance_scales else 1
        work = float(num_inference_steps) * megapixels * float(num_images) * runs * (2 if colour else 1)
    except (TypeError, ValueError):
        return 60  # bad input: check_inputs will say why, quickly
    return int(min(300, 20 + 0.3 * work))


def _parse_colour(value) -> torch.Tensor:
    """"#RRGGBB" (or an (r, g, b) tuple of 0-255 numbers) -> tensor [3] in [0, 1]."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("rgb"):
            parts = text[text.index("(") + 1:text.rindex(")")].split(",")[:3]
            return torch.tensor([float(p) / 255 for p in parts], dtype=torch.float32)
        text = text.lstrip("#")
        if len(text) == 3:
            text = "".join(c * 2 for c in text)
        if len(text) != 6:
            raise ValueError(f"Colour must look like #ff8800, got {value!r}.")
        try:
            return torch.tensor([int(text[k:k + 2], 16) / 255 for k in (0, 2, 4)], dtype=torch.float32)
        except ValueError:
            raise ValueError(f"Colour must look like #ff8800, got {value!r}.") from None
    if isinstance(value, (list, tuple)) and len(value) == 3:
        return torch.tensor([float(v) / 255 for v in value], dtype=torch.float32)
    raise ValueError(f"Colour must look like #ff8800, got {value!r}.")


def make_colour_spec(colour, colour_scale, colour_every, vae) -> dict | None:
    """Colour guidance settings for ``denoise``, or None when off (no colour, or scale 0)."""
    try:
        scale = float(colour_scale or 0.0)
    except (TypeError, ValueError):
        raise ValueError(f"colour_scale must be a number, got {colour_scale!r}.") from None
    if not colour or scale == 0:
        return None
    if not (math.isfinite(scale) and 0 < scale <= 10000):
        raise ValueError(f"colour_scale must be between 0 and 10000, got {colour_scale!r}.")
    every = _as_int(colour_every, "colour_every")
    if every < 1:
        raise ValueError(f"colour_every must be 1 or more, got {every}.")
    return {"target": _parse_colour(colour), "scale": scale, "every": every, "vae": vae}


def _request_parameters(preset, args: dict, scheduler, guidance_scale: float, sdxl: dict | None,
                        strength: float | None, colour: dict | None) -> dict:
    """The A1111-style settings written into each PNG (see ``engine.pngmeta``)."""
    settings = {
        "Steps": args["num_inference_steps"],
        "Sampler": sampler_label(scheduler),
        "CFG scale": f"{guidance_scale:g}",
        "Seed": args["seed"],
        "Size": f"{args['width']}x{args['height']}",
        "Model": preset.name,
    }
    if args["num_images"] > 1:
        settings["Batch size"] = args["num_images"]
    if sdxl is not None:
        settings["Original size"] = "{1}x{0}".format(*sdxl["original_size"])
        settings["Crop"] = "{1},{0}".format(*sdxl["crops_coords_top_left"])
        settings["Target size"] = "{1}x{0}".format(*sdxl["target_size"])
    if strength is not None:
        settings["Denoising strength"] = f"{strength:g}"
    if colour is not None:
        rgb = (colour["target"] * 255).round().int().tolist()
        settings["Colour guidance"] = "#{:02x}{:02x}{:02x} x{:g} every {}".format(*rgb, colour["scale"],
                                                                                  colour["every"])
    return settings


@dataclass
class Result:
    """What a finished run gives the tab: images [B, H, W, 3] in [0, 1], PIL copies, and the JSON info."""

    images: np.ndarray
    pil_images: list[Image.Image]
    info: dict
    parameters: list[dict]  # per image: {"prompt", "negative_prompt", "settings"} for the PNG chunk


def _oom_message(args: dict) -> str:
    return (f"Out of GPU memory at {args['width']}x{args['height']} with {args['num_images']} image(s). "
            "Cached memory was freed: lower the size or the number of images (or the sweep length) and try again.")


@gpu(duration=gpu_seconds)
def text_to_image(pipe, preset, *, prompt: str, negative_prompt: str = "", guidance_scale: float = 7.5,
                  num_inference_steps: int = 30, scheduler: str = DEFAULT, seed: int = 0, width: int = 512,
                  height: int = 512, num_images: int = 1, original_size=None, crops_coords_top_left=None,
                  target_size=None, negative_original_size=None, negative_crops_coords_top_left=None,
                  negative_target_size=None, image: Image.Image | None = None, strength: float | None = None,
                  colour: str | None = None, colour_scale: float = 0.0, colour_every: int = 5,
                  preview_every: int = 1, guidance_scales: list[float] | None = None) -> Iterator[dict | Result]:
    """Text (or image) to image, as a generator: progress dicts, then one ``Result``.

    Progress dicts: {"step", "num_steps", "preview" (PIL, every ``preview_every``
    steps, else None), "run", "runs"}. With ``guidance_scales`` (the guidance
    sweep) the loop runs once per scale, same seed, and the prompt embeddings
    are encoded once and reused. ``image`` + ``strength`` make it img2img.
    """
    kind = preset.kind
    args = check_inputs(preset, prompt=prompt, negative_prompt=negative_prompt, guidance_scale=guidance_scale,
                        num_inference_steps=num_inference_steps, width=width, height=height,
                        num_images=num_images, seed=seed, strength=strength if image is not None else None)
    scales = [args["guidance_scale"]] if guidance_scales is None else check_sweep(preset, guidance_scales)
    sdxl = None
    if kind == "sdxl":
        sdxl = micro_conditioning(args["width"], args["height"], original_size, crops_coords_top_left, target_size,
                                  negative_original_size, negative_crops_coords_top_left, negative_target_size)
    colour_spec = make_colour_spec(colour, colour_scale, colour_every, pipe.vae)
    try:
        yield from _run(pipe, preset, args, scheduler, scales, sdxl, image, colour_spec, preview_every)
    except torch.cuda.OutOfMemoryError:
        free_memory()
        raise ValueError(_oom_message(args)) from None


def check_sweep(preset, guidance_scales) -> list[float]:
    """The guidance sweep's list: 1 to 8 valid guidance scales."""
    if isinstance(guidance_scales, str):
        guidance_scales = [p for p in guidance_scales.replace(";", ",").split(",") if p.strip()]
    values = []
    for g in guidance_scales:
        try:
            values.append(float(g))
        except (TypeError, ValueError):
            raise ValueError(f"The guidance list must be numbers separated by commas, like 1, 2, 4, 12; "
                             f"got {g!r}.") from None
    if not 1 <= len(values) <= MAX_SWEEP:
        raise ValueError(f"Give between 1 and {MAX_SWEEP} guidance scales, got {len(values)}.")
    return [check_guidance(preset, g) for g in values]


def _run(pipe, preset, args, scheduler_name, scales, sdxl, image, colour_spec, preview_every):
    kind = preset.kind
    start = time.perf_counter()
    unet, vae = pipe.unet, pipe.vae
    device = unet.device
    vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    batch = args["num_images"]

    # 1. Encode input prompt (once, even for a sweep)
    any_guidance = any(g > 1 for g in scales)
    with torch.no_grad():
        embeds = encode_prompt(pipe, kind, args["prompt"], args["negative_prompt"], any_guidance, batch)

    # 3. SDXL micro-conditioning (once, like the embeddings)
    add_time_ids = negative_add_time_ids = None
    if kind == "sdxl":
        projection_dim = pipe.text_encoder_2.config.projection_dim
        add_time_ids = get_add_time_ids(unet, sdxl["original_size"], sdxl["crops_coords_top_left"],
                                        sdxl["target_size"], embeds.prompt_embeds.dtype, projection_dim)
        negatives = [sdxl[f"negative_{name}"] for name in ("original_size", "crops_coords_top_left", "target_size")]
        if any(value is not None for value in negatives):
            # each negative condition left empty is the same as its positive one
            negative_add_time_ids = get_add_time_ids(
                unet, negatives[0] or sdxl["original_size"], negatives[1] or sdxl["crops_coords_top_left"],
                negatives[2] or sdxl["target_size"], embeds.prompt_embeds.dtype, projection_dim)

    if image is not None:
        image_tensor = image_to_tensor(image, args["width"], args["height"])

    all_images, infos, params = [], [], []
    unet_calls = 0
    shrink = min(1.0, PREVIEW_MAX_SIDE / max(args["width"], args["height"]))
    preview_size = (round(args["width"] * shrink), round(args["height"] * shrink))
    for run_index, g in enumerate(scales):
        do_cfg = g > 1 and unet.config.time_cond_proj_dim is None
        cond = prepare_conditioning(embeds, do_cfg, device, add_time_ids, negative_add_time_ids)
        scheduler = make_scheduler(pipe.scheduler, scheduler_name)
        generator = torch.Generator("cpu").manual_seed(args["seed"])

        # 2. Prepare timesteps and latent variables (img2img: the encoded image, noised part-way)
        scheduler.set_timesteps(args["num_inference_steps"], device=device)
        if image is None:
            timesteps = scheduler.timesteps
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(0)
            latents = prepare_latents(batch, unet.config.in_channels, args["height"], args["width"],
                                      vae_scale_factor, embeds.prompt_embeds.dtype, device, generator,
                                      scheduler.init_noise_sigma)
        else:
            image_latents = encode_image(pipe, kind, image_tensor, generator)
            timesteps = get_img2img_timesteps(scheduler, args["num_inference_steps"], args["strength"])
            latents = prepare_img2img_latents(scheduler, image_latents, timesteps, batch, generator)
        extra_step_kwargs = prepare_extra_step_kwargs(scheduler, generator)

        # 4. Denoising loop
        run_start = time.perf_counter()
        calls, losses = 0, []
        for state in denoise(unet, scheduler, latents, timesteps, cond, g, extra_step_kwargs, colour_spec):
            latents, calls = state.latents, state.unet_calls
            if state.colour_loss is not None:
                losses.append(round(state.colour_loss, 5))
            show = preview_every and (state.i % preview_every == 0 or state.i == state.num_steps - 1)
            yield {"step": state.i + 1, "num_steps": state.num_steps, "run": run_index + 1, "runs": len(scales),
                   "preview": preview(pipe, preset, state.x0, preview_size) if show else None}
        loop_seconds = time.perf_counter() - run_start
        unet_calls += calls

        # 5. Decode
        images, has_nsfw = decode(pipe, kind, latents)
        all_images.append(images)
        run_info = {"guidance_scale": g, "classifier_free_guidance": do_cfg, "timesteps": len(timesteps),
                    "unet_calls": calls, "unet_batch": (2 if do_cfg else 1) * batch,
                    "loop_seconds": round(loop_seconds, 3)}
        if has_nsfw is not None:
            run_info["nsfw_filtered"] = has_nsfw
        if losses:
            run_info["colour_loss"] = losses
        infos.append(run_info)
        settings = _request_parameters(preset, args, scheduler, g, sdxl, args.get("strength"), colour_spec)
        for k in range(batch):
            per_image = dict(settings)
            if batch > 1:
                per_image["Batch pos"] = k
            params.append({"prompt": args["prompt"], "negative_prompt": args["negative_prompt"],
                           "settings": per_image})

    images = np.concatenate(all_images)
    info = {
        "model": preset.name,
        "seed": args["seed"],
        "num_inference_steps": args["num_inference_steps"],
        "scheduler": sampler_label(scheduler),
        "width": args["width"],
        "height": args["height"],
        "num_images": batch,
        "unet_calls": unet_calls,
        "seconds": round(time.perf_counter() - start, 3),
        "device": str(device),
        "dtype": str(unet.dtype).replace("torch.", ""),
    }
    if len(scales) == 1:
        info.update(infos[0])
    else:
        info["sweep"] = infos
    if kind == "sdxl":
        info["add_time_ids"] = add_time_ids[0].tolist()
        info["negative_add_time_ids"] = (negative_add_time_ids if negative_add_time_ids is not None
                                         else add_time_ids)[0].tolist()
        info["add_time_ids_order"] = "original (h, w), crop (top, left), target (h, w)"
    if image is not None:
        info["strength"] = args["strength"]
    if embeds.warnings:
        info["warnings"] = embeds.warnings
    yield Result(images=images, pil_images=numpy_to_pil(images), info=info, parameters=params)


def run_to_end(events: Iterator) -> Result:
    """Consume a ``text_to_image`` generator and return its ``Result`` (scripts and tests)."""
    result = None
    for event in events:
        if isinstance(event, Result):
            result = event
    if result is None:
        raise RuntimeError("text_to_image ended without a result")
    return result


# ----------------------------------------------------------------------------
# Presets and checks the tab runs before it loads a model


def pipeline_presets() -> list:
    """The SD and SDXL presets, local folders first (they work offline), then hub ones, in file order."""
    from engine.presets import presets_for

    presets = presets_for("sd") + presets_for("sdxl")
    return [p for p in presets if not p.is_hub] + [p for p in presets if p.is_hub]


def get_pipeline_preset(name: str):
    """The SD or SDXL preset called ``name``; ValueError listing the choices otherwise."""
    presets = pipeline_presets()
    for p in presets:
        if p.name == name:
            return p
    choices = ", ".join(repr(p.name) for p in presets) or "none"
    raise ValueError(f"Unknown model {name!r}. Choose one of: {choices}.")


def default_size(preset) -> int:
    return int(preset.options.get("default_size", 1024 if preset.kind == "sdxl" else 512))


def default_steps(preset) -> int:
    return int(preset.options.get("default_steps", 30))


def default_guidance(preset) -> float:
    """The preset's ``default_guidance`` (the scale its quality figures were measured at), else 7.5; 0 without guidance."""
    if not guidance_allowed(preset):
        return 0.0
    return float(preset.options.get("default_guidance", 7.5))


def validate(preset, **kwargs) -> None:
    """Every check ``text_to_image`` makes before it touches a model, so the tab can fail fast
    (and outside the ZeroGPU worker). Raises ValueError."""
    image = kwargs.get("image")
    check_inputs(preset, prompt=kwargs.get("prompt"), negative_prompt=kwargs.get("negative_prompt", ""),
                 guidance_scale=kwargs.get("guidance_scale", 7.5),
                 num_inference_steps=kwargs.get("num_inference_steps", 30), width=kwargs.get("width", 512),
                 height=kwargs.get("height", 512), num_images=kwargs.get("num_images", 1),
                 seed=kwargs.get("seed", 0), strength=kwargs.get("strength") if image is not None else None)
    scheduler_name = kwargs.get("scheduler", DEFAULT)
    if scheduler_name not in SCHEDULER_NAMES:
        raise ValueError(f"Unknown scheduler {scheduler_name!r}. Choose one of: {', '.join(SCHEDULER_NAMES)}.")
    if kwargs.get("guidance_scales") is not None:
        check_sweep(preset, kwargs["guidance_scales"])
    if preset.kind == "sdxl":
        micro_conditioning(int(kwargs.get("width", 512)), int(kwargs.get("height", 512)),
                           *(kwargs.get(k) for k in ("original_size", "crops_coords_top_left", "target_size",
                                                     "negative_original_size", "negative_crops_coords_top_left",
                                                     "negative_target_size")))
    make_colour_spec(kwargs.get("colour"), kwargs.get("colour_scale", 0.0), kwargs.get("colour_every", 5), None)
