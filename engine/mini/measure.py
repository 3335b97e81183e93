"""Reading a "Fashion-MNIST in colour" picture back: the item's ink, colour, centre, box and place.

The evaluation of the mini models (``scripts/eval_mini_sd.py``) and the tests
measure generated pictures with these: the Fashion-MNIST judge reads the grey
``to_judge_grey`` crop, the colour is the hue of the item's strongest pixels,
and a placed item is where its ink's centroid is. Pictures are [N, 3, H, W] in [0, 1].
"""

from __future__ import annotations

import colorsys

import numpy as np
import torch
import torch.nn.functional as F

from engine.mini.data import BACKGROUND, COLOURS, IMAGE_SIZE, ITEM_SIZE, PLACES, rgb_tensor


def ink(pictures: torch.Tensor) -> torch.Tensor:
    """How far each pixel is from the background, scaled so the item's strongest pixels are 1.

    [N, 3, H, W] in [0, 1] -> [N, 1, H, W] in [0, 1]. For a tinted picture,
    ``|pixel - background| = v * |colour - background|``, so this is v / max(v)
    whatever the colour. The scale is each picture's 99th percentile.
    """
    distance = (pictures.float() - rgb_tensor(BACKGROUND)).norm(dim=1, keepdim=True)
    top = distance.flatten(1).quantile(0.99, dim=1).clamp_min(0.05).view(-1, 1, 1, 1)
    return (distance / top).clamp(0, 1)


def to_judge_grey(pictures: torch.Tensor, boxes=None) -> torch.Tensor:
    """Pictures [N, 3, 64, 64] -> grey Fashion-MNIST-like items [N, 1, 32, 32] in [0, 1] for the judge.

    The ink of each item's box (``boxes`` [N, 3] as (top, left, side); the
    classic centred 48x48 box when None), resized to 28x28 (bicubic,
    antialiased) and padded by 2 px of 0, which is what
    ``engine.fashion.judge.judge_images`` expects (black background, bright
    item, as in Fashion-MNIST). On real colour pictures the judge reads these
    about as well as the original greys (90.0% against 91.0% on 1,000 test items).
    """
    if boxes is None:
        margin = (IMAGE_SIZE - ITEM_SIZE) // 2
        boxes = np.tile([margin, margin, ITEM_SIZE], (len(pictures), 1))
    v = ink(pictures)
    crops = [F.interpolate(v[i: i + 1, :, top: top + side, left: left + side], size=(28, 28), mode="bicubic",
                           antialias=True, align_corners=False) for i, (top, left, side) in enumerate(np.asarray(boxes))]
    return F.pad(torch.cat(crops).clamp(0, 1), (2, 2, 2, 2))


def ink_centroids(pictures: torch.Tensor, strength: float = 0.3) -> torch.Tensor:
    """The ink-weighted centre of each item, [N, 2] as (row, column) in pixels; pixels under ``strength`` count 0."""
    w = ink(pictures)[:, 0]
    w = w * (w >= strength)
    total = w.sum((1, 2)).clamp_min(1e-6)
    rows = torch.arange(w.shape[1], dtype=torch.float32).view(1, -1, 1)
    cols = torch.arange(w.shape[2], dtype=torch.float32).view(1, 1, -1)
    return torch.stack([(w * rows).sum((1, 2)) / total, (w * cols).sum((1, 2)) / total], dim=1)


def find_item_boxes(pictures: torch.Tensor, strength: float = 0.3, pad: int = 2) -> np.ndarray:
    """A square box around each picture's ink, [N, 3] as (top, left, side): the bounding box of pixels with
    ink >= ``strength``, squared around its centre, padded by ``pad`` px and kept on the canvas."""
    mask = (ink(pictures)[:, 0] >= strength).numpy()
    size = pictures.shape[-1]
    boxes = np.tile([0, 0, size], (len(mask), 1))
    for i, m in enumerate(mask):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if len(rows) == 0:
            continue
        side = min(size, max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 + 2 * pad)
        centre_r, centre_c = (rows[0] + rows[-1]) / 2, (cols[0] + cols[-1]) / 2
        top = int(np.clip(round(centre_r - side / 2), 0, size - side))
        left = int(np.clip(round(centre_c - side / 2), 0, size - side))
        boxes[i] = (top, left, side)
    return boxes


def in_place(place: str, centroid, size: int = IMAGE_SIZE) -> bool:
    """Whether a centroid (row, column) in px lies in the region a place names: left/right/top/bottom = that
    half, a corner = that quadrant, centre = the middle half on both axes."""
    row, col = (float(v) for v in centroid)
    half = size / 2
    if place == "centre":
        return size / 4 <= row < 3 * size / 4 and size / 4 <= col < 3 * size / 4
    (vertical, horizontal), _ = PLACES[place]
    ok_row = vertical is None or (row < half) == (vertical == "top")
    ok_col = horizontal is None or (col < half) == (horizontal == "left")
    return ok_row and ok_col


def item_rgb(pictures: torch.Tensor, strength: float = 0.6) -> torch.Tensor:
    """The item's colour [N, 3]: the mean of the pixels whose ink is at least ``strength``."""
    mask = (ink(pictures) >= strength).float()
    return (pictures.float() * mask).sum((2, 3)) / mask.sum((2, 3)).clamp_min(1)


def nearest_colour(rgb) -> str:
    """The colour name nearest an RGB triple in [0, 1]: "black" when grey or dark, else the nearest hue."""
    h, s, v = colorsys.rgb_to_hsv(*[float(c) for c in rgb])
    if s < 0.25 or v < 0.25:
        return "black"
    best, best_d = None, 9.0
    for name, ref in COLOURS.items():
        if name == "black":
            continue
        d = abs(h - colorsys.rgb_to_hsv(*ref)[0])
        d = min(d, 1 - d)
        if d < best_d:
            best, best_d = name, d
    return best


def item_colours(pictures: torch.Tensor) -> list[str]:
    """The colour name of each picture's item, by hue (``nearest_colour`` of ``item_rgb``)."""
    return [nearest_colour(rgb) for rgb in item_rgb(pictures)]


ITEM_INK = 0.3  # a pixel belongs to the item when its ink is at least this


def item_mask(image) -> torch.Tensor:
    """The item's pixels of a generated picture (PIL RGB): ``ink`` >= ``ITEM_INK``, as a [H, W] float 0/1."""
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    return (ink(pixels)[0, 0] >= ITEM_INK).float()


def item_lifts(pipe, preset, label: int, colour: str, prompt: str, **run) -> dict | None:
    """Cross-attention lift (``engine.metrics.lift``) of a prompt's item word on the item it drew.

    Runs ``attention_maps`` once (``run``: its seed, guidance, steps, size). The
    item's map is its tokens' maps averaged ("ankle boot" is two tokens); also
    its head noun, the colour word and the start token. None when the picture
    shows no item. "area" is the item's share of the picture.
    """
    from engine.mini.data import CLASS_NOUNS
    from engine.metrics import lift
    from engine.tokenizer import find_token_positions
    from engine.unet.attention import attention_maps

    out = attention_maps(pipe, preset, prompt=prompt, **run)
    mask = item_mask(out["image"])
    if mask.sum() == 0:
        return None
    maps = np.asarray(out["json"]["maps"])
    singular, plural = CLASS_NOUNS[label][0]
    item = find_token_positions(pipe.tokenizer, prompt, singular or plural)
    colour_at = find_token_positions(pipe.tokenizer, prompt, colour)
    return {"item": lift(maps[item].mean(0), mask), "noun": lift(maps[item[-1]], mask),
            "colour": lift(maps[colour_at].mean(0), mask), "start": lift(maps[0], mask), "area": float(mask.mean())}


def placed_real_pictures(items: np.ndarray, side: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Real Fashion-MNIST items [N, 28, 28] (uint8) drawn ``side`` px a side at random named places (not
    "centre") in random colours: pictures [N, 3, 64, 64] in [0, 1] and their boxes [N, 3] (top, left, side)."""
    from engine.mini.data import COLOUR_NAMES, PLACE_NAMES, place_box, render

    rng = np.random.default_rng([seed, side])
    places = [p for p in PLACE_NAMES if p != "centre"]
    boxes = np.array([(*place_box(places[int(rng.integers(0, len(places)))], side, rng), side)
                      for _ in range(len(items))], dtype=np.int64)
    colours = rng.integers(0, len(COLOUR_NAMES), len(items))
    return render(items, colours, boxes), boxes


@torch.no_grad()
def vae_round_trip(vae, pictures: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Pictures [N, 3, 64, 64] in [0, 1] through the VAE (posterior mean, decode) and back to [0, 1]."""
    out = []
    for chunk in pictures.split(batch):
        z = vae.encode(chunk * 2 - 1).latent_dist.mode()
        out.append(((vae.decode(z).sample.float() + 1) / 2).clamp(0, 1))
    return torch.cat(out)


def judge_on_round_trips(vae, judge_classes, items: np.ndarray, labels: np.ndarray,
                         sides=(24, 30, 36, 44), seed: int = 0) -> dict:
    """The lesson of exercise 3 in numbers: the judge's accuracy on placed real items, before and after the
    VAE, by item side. ``judge_classes(pictures, boxes) -> classes [N]``. Returns {side: {"real", "vae"}}."""
    out = {}
    for side in sides:
        pictures, boxes = placed_real_pictures(items, side, seed)
        truth = torch.as_tensor(np.asarray(labels))
        real = float((judge_classes(pictures, boxes) == truth).float().mean())
        after = float((judge_classes(vae_round_trip(vae, pictures), boxes) == truth).float().mean())
        out[side] = {"real": round(real, 4), "vae": round(after, 4)}
    return out


#: Class pairs of the text-side binding measure: (first item, second item), all classes once.
BINDING_CLASS_PAIRS = ((7, 8), (0, 3), (1, 4), (2, 9), (5, 6))


@torch.no_grad()
def second_item_hearing(pipe, kind: str, class_pairs=BINDING_CLASS_PAIRS) -> dict:
    """Does the text the UNet reads keep two items' colours apart? For "a red sneaker on the left and a blue bag
    on the right", the cosine distance (1 - cos) of the second item's states (``engine.text_encoding.encode_text``,
    what the UNet reads) when its own colour changes ("own": blue -> another) and when the first item's does
    ("other": red -> another), at the second colour word and at the second item's last noun token.

    A causal text encoder lets the second item's words see the first colour: "other" larger than "own" means
    those words mostly carry the wrong colour, so grounding the UNet on them cannot bind colours (Yuksekgonul
    et al. 2023 show CLIP's embeddings behave like bags of words). Mean over ``class_pairs`` x every ordered
    pair of colours; values in [0, 2].
    """
    from engine.mini.data import COLOUR_NAMES, prompt_for, two_item_caption
    from engine.text_encoding import encode_text
    from engine.tokenizer import find_token_positions

    def caption(l1: int, c1: str, l2: int, c2: str) -> str:
        return two_item_caption(prompt_for(l1, c1), "left", prompt_for(l2, c2), "right", 0)

    dist = {(change, at): [] for change in ("own", "other") for at in ("colour word", "noun")}
    for (l1, l2) in class_pairs:
        for c1 in COLOUR_NAMES:
            for c2 in COLOUR_NAMES:
                if c1 == c2:
                    continue
                c3 = next(c for c in COLOUR_NAMES if c not in (c1, c2))
                base = caption(l1, c1, l2, c2)
                noun = find_token_positions(pipe.tokenizer, base, "on")[0] - 1
                colour_at = find_token_positions(pipe.tokenizer, base, c2)[0]
                states = {key: encode_text(pipe, kind, text)[0][0].float() for key, text in
                          (("base", base), ("own", caption(l1, c1, l2, c3)), ("other", caption(l1, c3, l2, c2)))}
                for change in ("own", "other"):
                    for at, pos in (("colour word", colour_at), ("noun", noun)):
                        dist[(change, at)].append(1 - float(torch.cosine_similarity(
                            states["base"][pos], states[change][pos], dim=0)))
    return {f"{change} colour, {at}": round(float(np.mean(v)), 4) for (change, at), v in dist.items()}
