"""SDXL's micro-conditioning as training augmentations of "Fashion-MNIST in colour" (Podell et al. 2023, §2.2).

* size conditioning: a picture is downscaled to a smaller ``original_size`` and
  upscaled back, so it is blurry, and the UNet is told that true size;
* crop conditioning: the 64x64 window is cut from a larger canvas at
  ``crops_coords_top_left`` = (top, left), and the UNet is told where.

Pictures are float tensors [N, 3, 64, 64] in [0, 1]; sizes and crops are
(height, width) and (top, left), as diffusers' ``original_size`` and
``crops_coords_top_left``. No gradio here.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from engine.mini.data import BACKGROUND, rgb_tensor

def degrade_resolution(pictures: torch.Tensor, original_size: int) -> torch.Tensor:
    """Pretend a picture was only ``original_size`` px a side: downscale (antialiased), upscale back.

    [N, 3, H, W] -> [N, 3, H, W], blurry for small sizes; ``original_size >= H`` returns it unchanged.
    """
    size = pictures.shape[-1]
    if original_size >= size:
        return pictures
    small = F.interpolate(pictures, size=(original_size, original_size), mode="bilinear", antialias=True,
                          align_corners=False)
    return F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def crop_canvas(pictures: torch.Tensor, top: int, left: int, fill: float | None = None) -> torch.Tensor:
    """The window of the picture's size at (``top``, ``left``) on a larger canvas.

    The canvas is the picture extended with background to the right and below,
    so the crop (0, 0) is the picture itself and a crop at (top, left) shows the
    item moved up by ``top`` and left by ``left`` px, cut at the edge once the
    offset passes the 8 px margin. [N, 3, H, W] -> [N, 3, H, W]; ``fill`` extends other
    maps (an item's shading [N, C, H, W]) with that value instead of the background.
    """
    n, c, h, w = pictures.shape
    background = rgb_tensor(BACKGROUND) if fill is None else torch.tensor(fill).view(1, 1, 1, 1)
    canvas = background.expand(n, c, h + top, w + left).clone()
    canvas[:, :, :h, :w] = pictures
    return canvas[:, :, top: top + h, left: left + w]


SIZE_CHOICES = (16, 24, 32, 40, 48)
MAX_CROP = 32


def micro_condition(pictures: torch.Tensor, rng: np.random.Generator, size_share: float = 0.5,
                    crop_share: float = 0.5, sizes=SIZE_CHOICES, max_crop: int = MAX_CROP, croppable=None):
    """Augment a batch as SDXL's training data: some pictures blurred, some cropped.

    Each picture independently: with probability ``size_share`` it is degraded
    to an ``original_size`` drawn from ``sizes`` (else 64); with probability
    ``crop_share`` it is cut at a (top, left) drawn uniformly from 0..``max_crop``
    each (else (0, 0)). ``croppable`` (bool [N], default all) limits cropping to
    some pictures: a positioned item is never moved, so its place word stays true.
    Returns (pictures [N, 3, 64, 64], original_size int64
    [N, 2] as (h, w), crops_coords_top_left int64 [N, 2] as (top, left)).
    """
    n, size = pictures.shape[0], pictures.shape[-1]
    originals = np.full((n, 2), size, dtype=np.int64)
    crops = np.zeros((n, 2), dtype=np.int64)
    out = []
    for i in range(n):
        picture = pictures[i: i + 1]
        if rng.random() < size_share:
            s = int(rng.choice(sizes))
            picture, originals[i] = degrade_resolution(picture, s), (s, s)
        if rng.random() < crop_share and (croppable is None or croppable[i]):
            top, left = (int(v) for v in rng.integers(0, max_crop + 1, 2))
            picture, crops[i] = crop_canvas(picture, top, left), (top, left)
        out.append(picture)
    return torch.cat(out), torch.from_numpy(originals), torch.from_numpy(crops)
