"""The VAE round trip: image -> latent -> image, and what the compression keeps.

Stable Diffusion is a *latent* diffusion model (Rombach et al. 2022, "High-Resolution
Image Synthesis with Latent Diffusion Models", CVPR, sections 3 and 4.3.2): a
variational autoencoder (``AutoencoderKL``) maps an RGB image of H x W pixels to a
latent of 4 x H/8 x W/8 values, and the UNet denoises that latent instead of the
pixels. A 512 x 512 image has 3 * 512 * 512 = 786,432 values; its latent has
4 * 64 * 64 = 16,384, 48 times fewer (the book, "Hands-On Generative AI with
Transformers and Diffusion Models", O'Reilly 2024, chapter 5, "Stable Diffusion").

Conventions, as in diffusers' pipelines:

* images are tensors [1, 3, H, W] in [-1, 1] (``engine.images.pil_to_tensor``);
* latents are [1, 4, H/8, W/8], *scaled* (``engine.latent_scale``): ``(z - shift_factor) * scaling_factor``
  where z is the encoder's output. The scaling gives the latents roughly unit
  variance (LDM, section 4.3.2 and appendix D.1): 0.18215 for SD 1.x, 0.13025 for SDXL.
  This is what the UNet sees;
* PSNR and SSIM compare the 8-bit images a user sees: the preprocessed input and
  the reconstruction clamped to [-1, 1] and rounded to uint8.

Every function takes plain values and returns tensors, PIL images or dicts; bad
arguments raise ValueError with a message meant for the user.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from PIL import Image

from engine.errors import UserError, check_seed, number_in_range, one_of, whole_number
from engine.figures import colormap, latent_range
from engine.images import pil_to_tensor, tensor_to_pil, to_rgb
from engine.latent_scale import scale_latent, shift_factor, unscale_latent
from engine.metrics import PSNR_METHOD, SSIM_METHOD, psnr, ssim
from engine.noise_schedule import SD_NOISE_SCHEDULE, alphas_cumprod, noise_scheduler, q_sample
from engine.vae_inputs import FITS, GAIN_RANGE, MAX_ASPECT, SIZES

TILED_DECODE_ABOVE = 64  # latent pixels a side (512 image pixels); larger latents decode in tiles
PAD_COLOR = (255, 255, 255)

NUM_TRAIN_TIMESTEPS = SD_NOISE_SCHEDULE["num_train_timesteps"]



# ----------------------------------------------------------------------------
# 1. Preprocessing


def _ceil8(n: float) -> int:
    return int(math.ceil(n / 8)) * 8


def preprocess(image: Image.Image, size: int = 512, fit: str = "crop") -> tuple[Image.Image, list[str]]:
    """Resize and crop (or pad) an RGB image so both sides are multiples of 8.

    * ``size`` (one of ``SIZES``) is the short side after resizing.
    * ``fit="crop"``: the long side is centre-cropped down to a multiple of 8
      (and to at most ``MAX_ASPECT`` times the short side).
    * ``fit="pad"``: nothing is cut off; the image keeps its aspect ratio and is
      padded with white up to multiples of 8 (a very long image is first
      shrunk so its long side is ``MAX_ASPECT * size``).

    Returns (RGB image of W x H, both multiples of 8, notes for the user).
    """
    size, fit = check_size(size), check_fit(fit)
    image = to_rgb(image)
    return _resize_and_crop(image, size) if fit == "crop" else _resize_and_pad(image, size)


def _resize_and_crop(image: Image.Image, size: int) -> tuple[Image.Image, list[str]]:
    w, h = image.size
    scale = size / min(w, h)
    rw, rh = round(w * scale), round(h * scale)  # the whole image at this scale
    max_long = int(MAX_ASPECT * size)
    cw, ch = min(rw, max_long) // 8 * 8, min(rh, max_long) // 8 * 8
    # Crop in the source, then resize: a thin 20000 x 8 upload never becomes 640000 x 256 pixels.
    left, top = (w - cw / scale) / 2, (h - ch / scale) / 2
    out = image.resize((cw, ch), Image.Resampling.LANCZOS, box=(left, top, left + cw / scale, top + ch / scale))
    notes = []
    if rw - cw > 8 or rh - ch > 8:
        notes.append(f"Centre-cropped from {rw}x{rh} to {cw}x{ch} (at most {MAX_ASPECT:g}:1).")
    return out, notes


def _resize_and_pad(image: Image.Image, size: int) -> tuple[Image.Image, list[str]]:
    w, h = image.size
    scale = min(size / min(w, h), MAX_ASPECT * size / max(w, h))
    rw, rh = max(1, round(w * scale)), max(1, round(h * scale))
    cw, ch = _ceil8(rw), _ceil8(rh)
    if max(cw, ch) > MAX_ASPECT * min(cw, ch):  # a very long image: pad the short side too
        if cw > ch:
            ch = _ceil8(cw / MAX_ASPECT)
        else:
            cw = _ceil8(ch / MAX_ASPECT)
    out = Image.new("RGB", (cw, ch), PAD_COLOR)
    out.paste(image.resize((rw, rh), Image.Resampling.LANCZOS), ((cw - rw) // 2, (ch - rh) // 2))
    notes = [f"Padded with white from {rw}x{rh} to {cw}x{ch}."] if (cw, ch) != (rw, rh) else []
    return out, notes


def check_size(size) -> int:
    try:
        value = whole_number(size, "size")
    except UserError:
        value = None
    if value not in SIZES:
        raise UserError(f"size must be one of {', '.join(map(str, SIZES))} pixels, got {size!r}.")
    return value


def check_fit(fit) -> str:
    return one_of(fit, "fit", FITS)


def check_gain(gain) -> float:
    return number_in_range(gain, "The difference amplification (gain)", *GAIN_RANGE)


def check_inputs(size, fit, seed, gain) -> tuple[int, str, int, float]:
    """The round trip's settings (size, fit, seed, gain), checked before a model loads."""
    return check_size(size), check_fit(fit), check_seed(seed), check_gain(gain)


# ----------------------------------------------------------------------------
# 2. Encode and decode


def vae_scale_factor(vae) -> int:
    """How much the VAE shrinks each side: 2 ** (number of down blocks - 1), 8 for SD's VAE."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def cpu_generator(seed) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (checked by ``engine.errors.check_seed``), as diffusers' pipelines use."""
    return torch.Generator("cpu").manual_seed(check_seed(seed))


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def encode(image: torch.Tensor, vae, sample: bool = False, seed: int = 0) -> torch.Tensor:
    """Encode an image [1, 3, H, W] in [-1, 1] into the scaled latent [1, C, H/8, W/8].

    The encoder gives a diagonal Gaussian posterior q(z|x) (LDM's KL-regularised
    autoencoder). By default this returns its mean, which is deterministic; with
    ``sample=True`` a sample drawn with a CPU generator seeded by ``seed``
    (so the same seed gives the same latent on any device).
    Returns float32 on the CPU, scaled by ``vae.config.scaling_factor``.
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise UserError(f"Expected an image tensor [1, 3, H, W], got shape {tuple(image.shape)}.")
    f = vae_scale_factor(vae)
    if image.shape[-2] % f or image.shape[-1] % f:
        raise UserError(f"Image sides must be multiples of {f}, got {image.shape[-1]}x{image.shape[-2]}.")
    posterior = vae.encode(image.to(device=vae.device, dtype=vae.dtype)).latent_dist
    if sample:
        z = posterior.sample(generator=cpu_generator(seed))
    else:
        z = posterior.mean
    return scale_latent(z.float(), vae).cpu()


@torch.no_grad()
def decode(latent: torch.Tensor, vae, tiled: bool | None = None) -> torch.Tensor:
    """Decode a scaled latent [1, C, h, w] into an image [1, 3, 8h, 8w], about [-1, 1] (not clamped).

    Latents larger than ``TILED_DECODE_ABOVE`` a side decode in overlapping tiles
    (``AutoencoderKL.tiled_decode``, tiles of the VAE's ``sample_size``, blended
    at the seams), so memory stays bounded for 768 and 1024 px images.
    ``tiled`` forces the choice. Returns float32 on the CPU.
    """
    if latent.ndim != 4 or latent.shape[1] != vae.config.latent_channels:
        raise UserError(f"Expected a latent [1, {vae.config.latent_channels}, h, w], got shape {tuple(latent.shape)}.")
    z = unscale_latent(latent.float(), vae).to(device=vae.device, dtype=vae.dtype)
    if tiled is None:
        tiled = max(z.shape[-2:]) > TILED_DECODE_ABOVE
    image = vae.tiled_decode(z).sample if tiled else vae.decode(z).sample
    if not torch.isfinite(image).all():  # e.g. the original SDXL VAE in float16
        raise UserError(f"The VAE's decoder overflowed in {str(vae.dtype).replace('torch.', '')} (NaN or inf). "
                         "Use a VAE made for float16, such as the SDXL fp16-fix one, or run in float32.")
    return image.float().cpu()


# ----------------------------------------------------------------------------
# 3. Quality: PSNR and SSIM on 8-bit images


# ----------------------------------------------------------------------------
# 4. The round trip and its numbers


@dataclass
class RoundTrip:
    """One image through the VAE and back.

    image: the preprocessed input (RGB, W x H multiples of 8);
    reconstruction: the decoded image, clamped and rounded to 8 bits, same size;
    latent: the scaled latent [1, 4, H/8, W/8], float32 on the CPU;
    numbers: sizes, compression, latent statistics, PSNR/SSIM, timings (JSON-ready).
    """

    image: Image.Image
    reconstruction: Image.Image
    latent: torch.Tensor
    numbers: dict = field(default_factory=dict)


def roundtrip(image: Image.Image, vae, size: int = 512, fit: str = "crop", sample: bool = False,
              seed: int = 0) -> RoundTrip:
    """Preprocess ``image``, encode it, decode it, and measure what was lost.

    ``image`` is an opened RGB PIL image (``engine.images.open_image`` does the
    upload checks). See ``preprocess`` for ``size``/``fit`` and ``encode`` for
    ``sample``/``seed``.
    """
    prepared, notes = preprocess(image, size, fit)
    seed = check_seed(seed)
    x = pil_to_tensor(prepared)

    _sync(vae.device)
    start = time.perf_counter()
    latent = encode(x, vae, sample=sample, seed=seed)
    _sync(vae.device)
    encode_seconds = time.perf_counter() - start

    tiled = max(latent.shape[-2:]) > TILED_DECODE_ABOVE
    start = time.perf_counter()
    decoded = decode(latent, vae, tiled=tiled)
    _sync(vae.device)
    decode_seconds = time.perf_counter() - start

    reconstruction = tensor_to_pil(decoded)[0]
    numbers = compression_numbers(x, latent, vae)
    value = psnr(prepared, reconstruction)
    numbers.update({
        "psnr": round(value, 3) if math.isfinite(value) else None,
        "ssim": round(ssim(prepared, reconstruction), 4),
        "psnr_on": PSNR_METHOD,
        "ssim_on": SSIM_METHOD,
        "latent": f"posterior sample (seed {int(seed)})" if sample else "posterior mean",
        "encode_seconds": round(encode_seconds, 4),
        "decode_seconds": round(decode_seconds, 4),
        "tiled_decode": tiled,
        "device": str(vae.device),
        "dtype": str(vae.dtype).replace("torch.", ""),
        "notes": notes,
    })
    return RoundTrip(prepared, reconstruction, latent, numbers)


def compression_numbers(image: torch.Tensor, latent: torch.Tensor, vae) -> dict:
    """Sizes and latent statistics for an image [1, 3, H, W] and its scaled latent [1, C, h, w].

    The compression ratio is (3 * H * W) / (C * h * w): 48 for SD's VAE
    (C = 4, h = H/8, w = W/8). Mean and std are over all latent values, before
    scaling (the encoder's z) and after (what the UNet sees).
    """
    _, c, h, w = latent.shape
    _, c_in, height, width = image.shape
    raw = unscale_latent(latent, vae)
    return {
        "image_size": [width, height],
        "input_shape": [c_in, height, width],
        "latent_shape": [c, h, w],
        "input_values": c_in * height * width,
        "latent_values": c * h * w,
        "compression_ratio": round(c_in * height * width / (c * h * w), 3),
        "downsampling_factor": height // h,
        "scaling_factor": vae.config.scaling_factor,
        "shift_factor": shift_factor(vae),
        "latent_mean_before_scaling": round(raw.mean().item(), 5),
        "latent_std_before_scaling": round(raw.std().item(), 5),
        "latent_mean_after_scaling": round(latent.mean().item(), 5),
        "latent_std_after_scaling": round(latent.std().item(), 5),
        "latent_min": round(latent.min().item(), 5),
        "latent_max": round(latent.max().item(), 5),
    }


# ----------------------------------------------------------------------------
# 5. "What the UNet sees": the latent after forward diffusion to timestep t


def check_timestep(timestep) -> int:
    t = whole_number(timestep, "The timestep")
    if not 0 <= t < NUM_TRAIN_TIMESTEPS:
        raise UserError(f"The timestep must be between 0 and {NUM_TRAIN_TIMESTEPS - 1}, got {timestep}.")
    return t


def add_noise(x: torch.Tensor, timestep: int, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Forward diffusion q(x_t | x_0) on SD's schedule: sqrt(alpha_bar_t) * x + sqrt(1 - alpha_bar_t) * noise
    (``engine.noise_schedule.q_sample``).

    Works on a latent [1, 4, h, w] or on an image [1, 3, H, W] alike; the noise
    comes from a CPU generator seeded by ``seed``. Returns (x_t, schedule numbers).
    """
    t = check_timestep(timestep)
    scheduler = noise_scheduler()
    noise = torch.randn(x.shape, generator=cpu_generator(seed), dtype=torch.float32)
    noisy = q_sample(scheduler, x.float().cpu(), noise, torch.tensor([t]))
    alpha_bar = alphas_cumprod(scheduler)[t].item()
    info = {
        "timestep": t,
        "alpha_bar": round(alpha_bar, 6),
        "signal_weight": round(math.sqrt(alpha_bar), 5),
        "noise_weight": round(math.sqrt(1 - alpha_bar), 5),
        "snr": round(alpha_bar / (1 - alpha_bar), 5),
    }
    return noisy, info


def unet_view(latent: torch.Tensor, image: Image.Image, vae, timestep: int, seed: int = 0
              ) -> tuple[Image.Image, Image.Image, dict]:
    """Noise the latent to ``timestep`` and decode it; the same noise level in pixel space beside it.

    ``latent`` is the scaled latent of ``image`` (the preprocessed input). Returns
    (decoded noisy latent, noisy image in pixel space, numbers). In latent space
    each noisy value stands for an 8 x 8 patch, so the decoded picture stays
    coherent where pixel noise of the same strength is grain everywhere.
    """
    noisy_latent, info = add_noise(latent, timestep, seed)
    decoded = tensor_to_pil(decode(noisy_latent, vae))[0]
    noisy_pixels = tensor_to_pil(add_noise(pil_to_tensor(image), timestep, seed)[0])[0]
    info["psnr_latent_noise"] = _finite(psnr(image, decoded))
    info["psnr_pixel_noise"] = _finite(psnr(image, noisy_pixels))
    return decoded, noisy_pixels, info


def _finite(value: float, digits: int = 3) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


# ----------------------------------------------------------------------------
# 6. Channel pictures on a shared colour scale (the other figure helpers are in engine.figures)

PANEL_SIZE = 256  # channel images are scaled up (nearest) to about this many pixels a side


def channel_images(latent: torch.Tensor) -> list[tuple[Image.Image, str]]:
    """One RGB image per latent channel, all on the same colour scale [-m, m], m = ``latent_range``.

    Like the book's "Channel 0 ... Channel 3" figure. Blue is negative, white 0,
    red positive. Each image is scaled up with nearest-neighbour so one latent
    value is a visible square. Returns [(image, caption)] for channels 0..C-1.
    """
    m = latent_range(latent)
    z = latent[0].float().numpy()
    factor = max(1, PANEL_SIZE // max(z.shape[1:]))
    out = []
    for c, channel in enumerate(z):
        rgb = colormap((channel + m) / (2 * m))
        img = Image.fromarray(rgb).resize((rgb.shape[1] * factor, rgb.shape[0] * factor), Image.Resampling.NEAREST)
        out.append((img, f"Channel {c}: mean {channel.mean():+.3f}, std {channel.std():.3f}"))
    return out
