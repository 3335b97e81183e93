"""Figure helpers shared by the tabs' engine parts: colour maps, a colour bar, histograms, heatmaps.

Each takes plain arrays or tensors and returns a PIL image or a uint8 array;
none knows which model made its input.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from engine.errors import UserError
from engine.metrics import to_uint8

# Diverging map for signed latent values (ColorBrewer RdBu, blue < 0 < red), and a
# sequential one (black -> purple -> orange -> pale yellow) for differences.
DIVERGING = [(0.0, (33, 102, 172)), (0.25, (103, 169, 207)), (0.5, (247, 247, 247)),
             (0.75, (239, 138, 98)), (1.0, (178, 24, 43))]
SEQUENTIAL = [(0.0, (0, 0, 4)), (0.25, (87, 16, 110)), (0.5, (188, 55, 84)),
              (0.75, (249, 142, 9)), (1.0, (252, 255, 164))]
CHANNEL_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]


def colormap(values: np.ndarray, anchors=DIVERGING) -> np.ndarray:
    """Map values in [0, 1] (any shape) to uint8 RGB (shape + (3,)) by linear interpolation between anchors."""
    v = np.clip(values, 0.0, 1.0)
    xs = [a[0] for a in anchors]
    rgb = [np.interp(v, xs, [a[1][i] for a in anchors]) for i in range(3)]
    return np.stack(rgb, axis=-1).round().astype(np.uint8)


def label_font(size: int = 12):
    return ImageFont.load_default(size=size)


def image_grid(pictures: torch.Tensor, columns: int, *, scale: int = 1, gap: int = 0,
               column_labels: list[str] | None = None, label_size: int = 12) -> Image.Image:
    """Pictures [N, C, H, W] in [0, 1] (C = 1: grey, C = 3: RGB) -> one PIL image, row-major, ``columns`` wide.

    Each picture is upscaled ``scale`` times with nearest neighbours (pixels stay sharp), with ``gap`` white
    pixels between pictures, and ``column_labels`` written under the columns when given (under: gradio lays
    its component label over the top left of a picture). One picture file instead of N: one PNG to encode,
    store and download (issue 11), like diffusers' ``make_image_grid``.
    """
    n, c, h, w = pictures.shape
    rows = math.ceil(n / columns)
    tiles = (pictures.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    tiles = tiles.repeat(scale, axis=2).repeat(scale, axis=3)
    th, tw = h * scale, w * scale
    body = rows * th + (rows - 1) * gap
    strip = label_size + 6 if column_labels else 0
    grid = Image.new("L" if c == 1 else "RGB", (columns * tw + (columns - 1) * gap, body + strip),
                     255 if c == 1 else (255, 255, 255))
    for k in range(n):
        tile = tiles[k, 0] if c == 1 else tiles[k].transpose(1, 2, 0)
        r, col = divmod(k, columns)
        grid.paste(Image.fromarray(np.ascontiguousarray(tile)), (col * (tw + gap), r * (th + gap)))
    if column_labels:
        draw, font = ImageDraw.Draw(grid), label_font(label_size)
        for col, text in enumerate(column_labels[:columns]):
            draw.text((col * (tw + gap) + tw // 2, body + 3), text, fill=0 if c == 1 else (0, 0, 0), font=font,
                      anchor="ma")
    return grid


def latent_range(latent: torch.Tensor) -> float:
    """The shared colour scale's half-width: the largest |value| in the latent (at least 1e-6)."""
    return max(float(latent.abs().max()), 1e-6)


def colorbar(m: float, width: int = 512, height: int = 48) -> Image.Image:
    """The shared colour scale of ``channel_images`` as a bar from -m to +m with labelled ticks."""
    bar_h = height - 18
    strip = colormap(np.linspace(0, 1, width))[None].repeat(bar_h, axis=0)
    img = Image.new("RGB", (width, height), "white")
    img.paste(Image.fromarray(strip), (0, 0))
    draw, font = ImageDraw.Draw(img), label_font()
    for frac, label in ((0.0, f"{-m:.3g}"), (0.5, "0"), (1.0, f"{m:.3g}")):
        x = int(frac * (width - 1))
        draw.line([(x, bar_h - 6), (x, bar_h + 2)], fill="black")
        anchor = "la" if frac == 0 else "ra" if frac == 1 else "ma"
        draw.text((x, bar_h + 3), label, fill="black", font=font, anchor=anchor)
    return img


def histogram(latent: torch.Tensor, bins: int = 60) -> dict:
    """Per-channel histograms of the scaled latent values over [-m, m], m = ``latent_range``.

    Returns {"edges": (bins + 1,) array, "counts": (C, bins) array}.
    """
    m = latent_range(latent)
    edges = np.linspace(-m, m, bins + 1)
    z = latent[0].float().numpy()
    counts = np.stack([np.histogram(channel, bins=edges)[0] for channel in z])
    return {"edges": edges, "counts": counts}


def histogram_image(latent: torch.Tensor, bins: int = 60, width: int = 560, height: int = 280) -> Image.Image:
    """A line histogram of each latent channel (colours as in the legend), with the
    standard normal N(0, 1) as a dashed grey reference: well-scaled latents follow it."""
    hist = histogram(latent, bins)
    edges, counts = hist["edges"], hist["counts"]
    centres = (edges[:-1] + edges[1:]) / 2
    per_channel = latent[0, 0].numel()
    normal = per_channel * (edges[1] - edges[0]) * np.exp(-centres**2 / 2) / math.sqrt(2 * math.pi)
    top = max(counts.max(), 1)

    left, right, top_pad, bottom = 40, 24, 12, 44
    img = Image.new("RGB", (width, height), "white")
    draw, font = ImageDraw.Draw(img), label_font()
    pw, ph = width - left - right, height - top_pad - bottom

    def xy(xs, ys):
        px = left + (xs - edges[0]) / (edges[-1] - edges[0]) * pw
        py = top_pad + ph - np.minimum(ys / top, 1.05) * ph
        return list(zip(px.tolist(), py.tolist()))

    draw.rectangle([left, top_pad, left + pw, top_pad + ph], outline=(160, 160, 160))
    points = xy(centres, normal)
    for i in range(0, len(points) - 1, 2):  # dashed
        draw.line(points[i:i + 2], fill=(140, 140, 140), width=1)
    for c, row in enumerate(counts):
        draw.line(xy(centres, row), fill=CHANNEL_COLORS[c % len(CHANNEL_COLORS)], width=2)
    for frac, value in ((0.0, edges[0]), (0.5, 0.0), (1.0, edges[-1])):
        x = left + frac * pw
        draw.line([(x, top_pad + ph), (x, top_pad + ph + 4)], fill="black")
        draw.text((x, top_pad + ph + 6), f"{value:.3g}", fill="black", font=font, anchor="ma")
    draw.text((left - 4, top_pad), f"{top}", fill="black", font=font, anchor="ra")
    draw.text((left - 4, top_pad + ph), "0", fill="black", font=font, anchor="rb")
    x, y = left, height - 16  # legend under the axis
    for c in range(len(counts)):
        draw.text((x, y), f"channel {c}", fill=CHANNEL_COLORS[c % len(CHANNEL_COLORS)], font=font)
        x += 78
    draw.text((x, y), "- - N(0, 1)", fill=(110, 110, 110), font=font)
    return img


def difference_heatmap(reference: Image.Image, test: Image.Image, gain: float = 4.0) -> Image.Image:
    """|reference - test| averaged over R, G, B, times ``gain``, as a heatmap (black = equal).

    Pixel value d (0..255) is drawn at colour ``min(d * gain, 255) / 255`` of the
    sequential map, so with gain 4 a difference of 64/255 or more is pale yellow.
    """
    if not gain > 0:
        raise UserError(f"The difference amplification (gain) must be positive, got {gain!r}.")
    a, b = to_uint8(reference).astype(np.float32), to_uint8(test).astype(np.float32)
    if a.shape != b.shape:
        raise ValueError(f"The two images differ in size: {a.shape} and {b.shape}.")
    diff = np.abs(a - b).mean(axis=-1) if a.ndim == 3 else np.abs(a - b)
    return Image.fromarray(colormap(np.minimum(diff * gain, 255) / 255, SEQUENTIAL))


MIN_HEATMAP_SIDE = 256


def heatmap_overlay(image: Image.Image, token_map, *, alpha: float = 0.6,
                    min_side: int = MIN_HEATMAP_SIDE) -> Image.Image:
    """One token's map [h, w] (any scale) over ``image``: scaled to its own maximum, upsampled bilinearly
    to the image (enlarged to at least ``min_side`` px a side), coloured with the sequential
    map (black, purple, orange, pale yellow: inferno-like), blended with weight ``alpha``."""
    scale = max(1.0, min_side / min(image.size))
    size = (round(image.width * scale), round(image.height * scale))
    m = torch.as_tensor(np.asarray(token_map, dtype=np.float32))
    m = m / m.max().clamp_min(1e-12)
    m = F.interpolate(m[None, None], size=(size[1], size[0]), mode="bilinear", align_corners=False)[0, 0]
    heat = Image.fromarray(colormap(m.numpy(), SEQUENTIAL))
    base = image.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    return Image.blend(base, heat, alpha)
