"""Opening user uploads safely, and converting between PIL images and tensors.

Uploads are checked before any pixel is decoded: the file's byte size, then
the width x height that the header declares (a decompression-bomb guard:
a 20000x20000 PNG can be a few KB on disk and 1.2 GB in memory).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import UserError

MAX_UPLOAD_BYTES = 25 * 2**20  # 25 MB
MAX_PIXELS = 40_000_000  # about 6300 x 6300; larger ones are refused before decoding
MIN_SIDE = 8


def open_image(source: str | os.PathLike | bytes | Image.Image, *, max_pixels: int = MAX_PIXELS,
               max_bytes: int = MAX_UPLOAD_BYTES) -> tuple[Image.Image, list[str]]:
    """Open an uploaded image and return it as RGB, with notes on what was changed.

    * Refuses (``UserError``) missing input, files over ``max_bytes``, non-images,
      truncated files, images under 8 px a side, and images whose header
      declares more than ``max_pixels`` pixels, before decoding them.
    * Animated images (GIF, APNG, WebP): the first frame, with a note.
    * Applies the EXIF orientation (phones store portrait photos rotated).
    * RGBA, LA, P, L, I, CMYK...: converted to RGB, transparency over white.

    Returns (image, notes); ``notes`` are short sentences for the user.
    """
    if source is None:
        raise UserError("No image given: upload an image or pick an example.")
    notes: list[str] = []
    if isinstance(source, Image.Image):
        img = source
    else:
        if isinstance(source, (bytes, bytearray)):
            size, fp = len(source), io.BytesIO(source)
        else:
            path = Path(source)
            if not path.is_file():
                raise UserError("The uploaded file could not be found; upload it again.")
            size, fp = path.stat().st_size, path
        if size > max_bytes:
            raise UserError(f"The file is {size / 2**20:.1f} MB; upload an image under {max_bytes / 2**20:.0f} MB.")
        try:
            img = Image.open(fp)  # reads the header only
        except Image.DecompressionBombError:
            raise UserError(f"The image has far more than {max_pixels / 1e6:.0f} megapixels (the limit). "
                             "Downscale it and upload again.") from None
        except (UnidentifiedImageError, OSError, ValueError):
            raise UserError("That file is not an image this app can read; upload a PNG, JPEG, WebP or GIF.") from None
    w, h = img.size
    if w * h > max_pixels:
        raise UserError(f"The image is {w}x{h} ({w * h / 1e6:.0f} megapixels); the limit is "
                         f"{max_pixels / 1e6:.0f} megapixels. Downscale it and upload again.")
    if min(w, h) < MIN_SIDE:
        raise UserError(f"The image is {w}x{h}; it needs at least {MIN_SIDE} pixels on each side.")
    if getattr(img, "is_animated", False) and getattr(img, "n_frames", 1) > 1:
        img.seek(0)
        notes.append(f"Animated image: used the first of its {img.n_frames} frames.")
    try:
        img.load()
    except (OSError, ValueError, Image.DecompressionBombError):
        raise UserError("The image file is damaged or truncated; upload it again or use another one.") from None
    if _exif_orientation(img) not in (None, 1):
        notes.append("Rotated according to the photo's EXIF orientation.")
    return to_rgb(ImageOps.exif_transpose(img)), notes


def _exif_orientation(img: Image.Image) -> int | None:
    try:
        return img.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - broken EXIF is not the user's problem
        return None


def to_rgb(img: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """Any PIL mode -> RGB; transparent pixels are composited over ``background``."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, background)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        img = Image.fromarray(_deep_to_8bit(np.asarray(img, dtype=np.float64), img.mode), mode="L")
    return img.convert("RGB")


def _deep_to_8bit(arr: np.ndarray, mode: str) -> np.ndarray:
    """16-bit, 32-bit and float greyscale -> uint8, keeping tones (no auto-contrast).

    16-bit images scale 0..65535 to 0..255; float images in [0, 1] scale by 255;
    anything else that already fits 0..255 is kept. Only values outside every
    known range are stretched from min to max.
    """
    hi = float(arr.max()) if arr.size else 0.0
    lo = float(arr.min()) if arr.size else 0.0
    if mode.startswith("I;16") or (mode == "I" and 255 < hi <= 65535 and lo >= 0):
        arr = arr / 257.0
    elif mode == "F" and lo >= 0 and hi <= 1.0:
        arr = arr * 255.0
    elif lo < 0 or hi > 255:
        arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
    return np.clip(np.round(arr), 0, 255).astype(np.uint8)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor [1, 3, H, W] in [-1, 1] (the VAE's input range)."""
    arr = np.asarray(to_rgb(img), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_pil(x: torch.Tensor) -> list[Image.Image]:
    """Tensor [B, C, H, W] in [-1, 1] -> list of 8-bit PIL images (RGB for C=3, L for C=1)."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arr = x.permute(0, 2, 3, 1).numpy()
    if arr.shape[-1] == 1:
        return [Image.fromarray(a[..., 0], mode="L") for a in arr]
    return [Image.fromarray(a) for a in arr]
