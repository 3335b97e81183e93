"""A cheap live preview: a fixed linear map from the 4 latent channels to RGB.

Decoding with the VAE at every step would cost more than the step itself, so
the tab shows each step's predicted x0 through a 4x3 matrix instead. The
factors are least-squares fits of VAE-decoded colours on latents, as published
in ComfyUI's ``comfy/latent_formats.py`` (classes ``SD15`` and ``SDXL``). They
apply to latents in the scaled space the UNet works in (the VAE's latents times
``scaling_factor``), which is what our loop holds.
"""

from __future__ import annotations

import torch
from PIL import Image

# rows: latent channels 0..3; columns: R, G, B
SD_LATENT_RGB = [
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
]
SD_LATENT_BIAS = [0.0, 0.0, 0.0]
SDXL_LATENT_RGB = [
    [0.3651, 0.4232, 0.4341],
    [-0.2533, -0.0042, 0.1068],
    [0.1076, 0.1111, -0.0362],
    [-0.3165, -0.2492, -0.2188],
]
SDXL_LATENT_BIAS = [0.1084, -0.0175, -0.0011]


def latents_to_rgb(latents: torch.Tensor, kind: str) -> torch.Tensor:
    """Latents [B, 4, h, w] (scaled space) -> approximate images [B, 3, h, w] in [0, 1].

    One matrix product per pixel: no VAE, so it costs microseconds. The result
    has the latent resolution (1/8 of the image's side).
    """
    factors = SDXL_LATENT_RGB if kind == "sdxl" else SD_LATENT_RGB
    bias = SDXL_LATENT_BIAS if kind == "sdxl" else SD_LATENT_BIAS
    weight = torch.tensor(factors, dtype=torch.float32)  # [4, 3]
    x = latents.detach().float().cpu()
    rgb = torch.einsum("bchw,cr->brhw", x, weight) + torch.tensor(bias).view(1, 3, 1, 1)
    return ((rgb + 1.0) / 2.0).clamp(0, 1)


def preview_image(latents: torch.Tensor, kind: str, size: tuple[int, int] | None = None) -> Image.Image:
    """The first latent of the batch as a PIL preview, resized to ``size`` (W, H) if given."""
    rgb = latents_to_rgb(latents[:1], kind)[0]
    arr = (rgb.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    img = Image.fromarray(arr)
    if size is not None:
        img = img.resize(size, Image.Resampling.BILINEAR)
    return img
