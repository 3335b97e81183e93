#!/usr/bin/env python
"""Render the VAE tab's three example images into assets/examples/ (deterministic: no randomness
without a fixed seed, no downloads).

* scene.png: a geometric scene with smooth gradients, hard edges and text (what VAEs keep well,
  except small text);
* fashion_collage.png: 48 Fashion-MNIST test images (the first of each class, in order), tinted
  per class and scaled up, from Debian's dataset-fashion-mnist (``engine.fashion.data``);
* test_pattern.png: a zone plate, fine stripes, a checkerboard ramp and small text: high
  frequencies that an 8x-downsampling VAE cannot keep.

Usage:
    python scripts/make_examples.py [--out assets/examples] [--fashion-dir DIR]

``--fashion-dir`` defaults to the data root (``$EXPLORER_FASHION_ROOT``, else
/usr/share/datasets/fashion-mnist); without the data set it says how to install it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from engine.fashion.data import load_split, require_dataset  # noqa: E402

CLASS_COLORS = [(230, 57, 70), (244, 162, 97), (233, 196, 106), (42, 157, 143), (38, 70, 83),
                (69, 123, 157), (131, 56, 236), (255, 0, 110), (58, 134, 255), (120, 120, 120)]


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def scene(width: int = 768, height: int = 512) -> Image.Image:
    """Sky gradient, sun, two hill ranges, a striped field, a house, and a caption."""
    y = np.linspace(0, 1, height)[:, None, None]
    sky = (1 - y) * np.array([70, 130, 220]) + y * np.array([250, 200, 160])
    img = Image.fromarray(np.broadcast_to(sky, (height, width, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.ellipse([560, 60, 680, 180], fill=(255, 214, 80), outline=(255, 170, 40), width=6)
    xs = np.arange(width + 1)
    for base, amp, freq, color in ((300, 50, 2.2, (90, 120, 160)), (350, 35, 3.7, (60, 140, 80))):
        ridge = base - amp * np.sin(xs / width * freq * np.pi) ** 2
        draw.polygon([(0, height)] + list(zip(xs.tolist(), ridge.tolist())) + [(width, height)], fill=color)
    for i in range(12):  # field stripes narrowing towards the horizon
        top, bottom = 400 + i * 9, 400 + (i + 1) * 9
        draw.rectangle([0, top, width, bottom], fill=(200, 170, 60) if i % 2 else (170, 140, 40))
    draw.rectangle([110, 250, 260, 380], fill=(230, 230, 220), outline=(40, 40, 40), width=3)
    draw.polygon([(95, 255), (185, 185), (275, 255)], fill=(170, 40, 40), outline=(40, 40, 40))
    draw.rectangle([165, 310, 205, 380], fill=(110, 70, 40))
    draw.rectangle([125, 270, 155, 300], fill=(120, 180, 230), outline=(40, 40, 40), width=2)
    draw.rectangle([215, 270, 245, 300], fill=(120, 180, 230), outline=(40, 40, 40), width=2)
    draw.text((24, 24), "Stable Diffusion Explorer", fill="white", font=font(40))
    draw.text((24, 72), "512 x 768 x 3 = 1,179,648 values -> 4 x 64 x 96 = 24,576", fill="white", font=font(20))
    draw.text((330, 470), "small text survives less well than big text", fill=(30, 30, 30), font=font(12))
    return img


def fashion_collage(fashion_dir: Path, cols: int = 8, rows: int = 6, scale: int = 4) -> Image.Image:
    """The first ``cols * rows / 10`` test images of each class, round-robin by class, tinted per class."""
    images, labels = load_split("test", fashion_dir)
    per_class = [np.flatnonzero(labels == c) for c in range(10)]
    picks = [per_class[i % 10][i // 10] for i in range(cols * rows)]
    cell = 28 * scale
    canvas = Image.new("RGB", (cols * cell, rows * cell), "white")
    for i, idx in enumerate(picks):
        ink = images[idx].astype(np.float32)[..., None] / 255  # 1 = garment, 0 = background
        color = np.array(CLASS_COLORS[labels[idx]], dtype=np.float32)
        rgb = (1 - ink) * 255 + ink * color
        tile = Image.fromarray(rgb.round().astype(np.uint8)).resize((cell, cell), Image.Resampling.BICUBIC)
        canvas.paste(tile, ((i % cols) * cell, (i // cols) * cell))
    return canvas


def test_pattern(size: int = 512) -> Image.Image:
    """Zone plate (top left), stripes of 1-4 px (top right), checkerboards (bottom left), text (bottom right)."""
    half = size // 2
    img = Image.new("RGB", (size, size), "white")
    y, x = np.mgrid[-half // 2: half // 2, -half // 2: half // 2].astype(np.float64)
    zone = 127.5 + 127.5 * np.cos(np.pi * (x**2 + y**2) / half)  # frequency grows with radius
    img.paste(Image.fromarray(zone.astype(np.uint8)).convert("RGB"), (0, 0))
    stripes = np.zeros((half, half, 3), np.uint8)
    for band, width in enumerate((1, 2, 3, 4)):
        cols = (np.arange(half) // width) % 2 == 0
        stripes[band * half // 4:(band + 1) * half // 4] = np.where(cols[None, :, None], [220, 30, 30], [30, 30, 220])
    img.paste(Image.fromarray(stripes), (half, 0))
    yy, xx = np.mgrid[0:half, 0:half]
    cell = 1 + xx // (half // 6)  # checker cell grows from 1 px to 6 px left to right
    checks = (((xx // cell) + (yy // cell)) % 2 * 255).astype(np.uint8)
    img.paste(Image.fromarray(checks).convert("RGB"), (0, half))
    draw = ImageDraw.Draw(img)
    for i, fs in enumerate((8, 10, 12, 16, 20, 28)):
        draw.text((half + 8, half + 8 + sum((8, 10, 12, 16, 20, 28)[:i]) * 1.4), f"{fs}px Latent", fill="black", font=font(fs))
    return img


def colour_fashion_picture(fashion_dir: Path, index: int = 1) -> Image.Image:
    """One 64 x 64 picture of the mini models' data ("Fashion-MNIST in colour"), from the test split:
    what the mini VAE was trained on, so its round trip is near-perfect (compare with the photos)."""
    from engine.mini import data as cf

    data = cf.make_dataset("test", seed=0, root=fashion_dir)
    picture = cf.render(data.items[index:index + 1], data.colours[index:index + 1])[0]
    arr = (picture.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr)


def small_placed_picture(fashion_dir: Path, index: int = 2, side: int = 26) -> Image.Image:
    """A 64 x 64 picture with one small item (``side`` px) on the left, from the test split: an 8 px latent
    cell holds a third of the item's width, so the mini VAE blurs its details (exercise 3)."""
    from engine.mini import data as cf

    data = cf.make_dataset("test", seed=0, root=fashion_dir)
    box = np.array([[(64 - side) // 2, 3, side]])
    picture = cf.render(data.items[index:index + 1], data.colours[index:index + 1], box)[0]
    arr = (picture.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO_ROOT / "assets" / "examples")
    p.add_argument("--fashion-dir", type=Path, default=None)
    args = p.parse_args()
    fashion_dir = require_dataset(args.fashion_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    pictures = (("scene.png", scene()), ("fashion_collage.png", fashion_collage(fashion_dir)),
                ("test_pattern.png", test_pattern()), ("colour_fashion_64.png", colour_fashion_picture(fashion_dir)),
                ("small_item_64.png", small_placed_picture(fashion_dir)))
    for name, img in pictures:
        path = args.out / name
        img.save(path, optimize=True)
        print(f"{path}: {img.width}x{img.height}, {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
