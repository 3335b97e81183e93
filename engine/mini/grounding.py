"""Token-level grounding: teach the mini UNets to read each item's words where they draw that item.

TokenCompose (Wang et al., CVPR 2024, "TokenCompose: Text-to-Image Diffusion
with Token-level Supervision", §3.2; ``mlpc-ucsd/TokenCompose``,
``train/src/loss_utils.py``) adds two losses on the cross-attention maps of a
caption's grounded words to the denoising loss. Our data generator knows every
item's exact mask (``ColourFashion.shading``), so each item's noun and its
colour word are grounded on that item's pixels:

* ``token_loss``: the mean over grounded tokens of (1 - mass inside the mask /
  total mass)^2, per layer: a token's attention should sit on its item;
* ``pixel_loss``: the binary cross-entropy between a word's attention
  probability at each pixel (its tokens summed, the layers of one resolution
  averaged) and the mask: the item's pixels should read that word, and the
  rest should not.

Masks at a layer's grid: TokenCompose resizes each mask and binarises it (a
cell is the item's when any of its pixels is, ``mask="any"``). At SD's 64x64
latents that is tight; at our 8x8 and 4x4 grids a centred 48 px item touches
nearly every cell, and a map spread evenly over those cells already has no loss
(measured: the centred item-word lift sat at 1.7-1.9, close to that ceiling
averaged over the recorded layers). ``mask="coverage"`` uses each cell's share
of item pixels instead (area-downsampled, in [0, 1]): the token loss is zero
only when a word's attention sits on cells the item covers fully, and the pixel
loss's BCE target is that share.

The maps come from the app's own recorder (``engine.unet.attention``,
``record_cross_attention(..., keep_maps=True)``), so training and the "Inside
the UNet" tab read the same thing. Words are numbered ``WORDS``: the first
item's noun and colour, then the second item's (two-item pictures). No gradio.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from engine.mini.data import CLASS_NOUNS, COLOUR_NAMES

#: The grounded words of a caption, in this order; each is grounded on the mask of ``WORD_ITEM[k]``.
#: "place": a one-item caption's place words ("left", "top", "corner"...), grounded on its item's mask too:
#: the causal encoder writes the place only into the tokens after the noun, and a UNet grounded on the noun
#: alone stops reading them (measured: position accuracy fell from 100% to 60% in 2,380 steps).
WORDS = ("item", "colour", "item_2", "colour_2", "place")
WORD_ITEM = (0, 0, 1, 1, 0)
PLACE_WORDS = ("left", "right", "top", "bottom", "corner", "side", "half", "centre", "center", "middle")
MASK_INK = 0.05  # an item pixel: its shading v is above this
GROUNDED_SIDES = (8, 4)  # the mini UNets' attn2 layers at 8x8 and 4x4 latent pixels (not the 2x2 middle)
MASKS = ("any", "coverage")  # how an item's mask meets a layer's grid: see the module docstring


def _find_run(ids: list[int], want: list[int], start: int, stop: int) -> list[int]:
    """Positions of the first run of ``want`` in ``ids[start:stop]``, or []."""
    for i in range(start, stop - len(want) + 1):
        if want and ids[i: i + len(want)] == want:
            return list(range(i, i + len(want)))
    return []


def _noun_run(tokenizer, ids: list[int], label: int, start: int) -> list[int]:
    """The tokens of the class's noun in ``ids`` from ``start``; the longest noun that is there ("ankle boot"
    before "boot", "t-shirt" before "shirt"), first match."""
    nouns = {n for pair in CLASS_NOUNS[label] for n in pair if n}
    for noun in sorted(nouns, key=len, reverse=True):
        run = _find_run(ids, tokenizer(noun, add_special_tokens=False).input_ids, start, len(ids))
        if run:
            return run
    return []


def word_positions(tokenizer, caption: str, labels: tuple[int, ...], colours: tuple[int, ...],
                   length: int = 77) -> np.ndarray:
    """int64 [length]: for each token position of ``caption``, the index in ``WORDS`` of the grounded word it
    belongs to, or -1. ``labels``/``colours``: the items' classes and colour indices in caption order (one or
    two items; a colour of -1 or a caption that does not name it is not grounded).

    "a red sneaker on the left and a blue bag on the right" -> red: 1, sneaker: 0, blue: 3, bag: 2;
    "a pink top in the top left" -> pink: 1, top: 0, top: 4, left: 4 (one item: its place words too).
    """
    ids = tokenizer(caption, truncation=True, max_length=length).input_ids
    out = np.full(length, -1, dtype=np.int64)
    start = 0
    for k, (label, colour) in enumerate(zip(labels, colours)):
        want = tokenizer(COLOUR_NAMES[int(colour)], add_special_tokens=False).input_ids if colour >= 0 else []
        # Two items: each noun directly follows its colour ("... a red top and in the top right a blue bag"),
        # so look for the colour first and the noun after it. One item: the noun comes first among the
        # nouns and place words, and the colour before it ("a red sneaker") or after it ("sneakers in red").
        colour_run = _find_run(ids, want, start, len(ids)) if len(labels) > 1 else []
        noun = _noun_run(tokenizer, ids, int(label), colour_run[-1] + 1 if colour_run else start)
        if not noun:
            continue
        if len(labels) == 1 and want:
            colour_run = _find_run(ids, want, 0, noun[0]) or _find_run(ids, want, noun[-1] + 1, len(ids))
        out[noun] = 2 * k
        out[colour_run] = 2 * k + 1
        start = noun[-1] + 1
    if len(labels) == 1 and (out >= 0).any():
        place_ids = {tokenizer(w, add_special_tokens=False).input_ids[0] for w in PLACE_WORDS}
        for i, token in enumerate(ids[:length]):
            if token in place_ids and out[i] < 0:
                out[i] = WORDS.index("place")
    return out


def layer_masks(shading: torch.Tensor, side: tuple[int, int], mask: str = "any") -> torch.Tensor:
    """Item shading [B, 2, 64, 64] -> masks [B, len(WORDS), h_l, w_l] at a layer's grid. ``mask="any"``: 0/1,
    a cell is in an item when any of its pixels is (area-downsampled, then > 0, as TokenCompose resizes and
    binarises); ``"coverage"``: the share of the cell's pixels that are the item's, in [0, 1]."""
    if mask not in MASKS:
        raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
    ink = (shading > MASK_INK).float()
    small = F.adaptive_avg_pool2d(ink, side)
    if mask == "any":
        small = (small > 0).float()
    return small[:, list(WORD_ITEM)]


def word_maps(maps: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """Per-token maps [B, T, h, w] and word ids [B, T] (-1: none) -> per-word maps [B, len(WORDS), h, w]:
    the attention probability of each word's tokens, summed."""
    onehot = F.one_hot((words + 1).clamp_min(0), len(WORDS) + 1)[..., 1:].to(maps.dtype)  # [B, T, G]
    return torch.einsum("bthw,btg->bghw", maps, onehot)


def token_loss(maps: torch.Tensor, words: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """TokenCompose's token loss of one layer: maps [B, T, h, w] (each pixel's attention over T tokens),
    words [B, T] (``WORDS`` index or -1), masks [B, G, h, w] in [0, 1] (``layer_masks``) -> the mean over
    grounded tokens of (1 - inside / total)^2, "inside" the mask-weighted mass; a scalar in [0, 1] (0 when no
    token is grounded)."""
    grounded = words >= 0
    if not bool(grounded.any()):
        return maps.sum() * 0
    token_masks = torch.gather(masks, 1, words.clamp_min(0)[..., None, None].expand(-1, -1, *masks.shape[2:]))
    inside = (maps * token_masks).sum((2, 3)) / maps.sum((2, 3)).clamp_min(1e-8)
    return ((1 - inside) ** 2)[grounded].mean()


def pixel_loss(maps: torch.Tensor, words: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """TokenCompose's pixel loss at one resolution: BCE between each grounded word's map (``word_maps`` of
    maps [B, T, h, w], values in [0, 1]) and its mask [B, G, h, w] in [0, 1] (a soft target for "coverage"),
    averaged over the grounded words."""
    present = torch.stack([(words == g).any(1) for g in range(len(WORDS))], dim=1)  # [B, G]
    if not bool(present.any()):
        return maps.sum() * 0
    per_word = word_maps(maps, words).clamp(1e-6, 1 - 1e-6)
    bce = F.binary_cross_entropy(per_word, masks, reduction="none").mean((2, 3))
    return bce[present].mean()


def grounding_losses(layer_maps: list, words: torch.Tensor, shading: torch.Tensor,
                     mask: str = "any") -> dict[str, torch.Tensor]:
    """Both losses over the recorded layers: ``layer_maps`` [(name, step, maps [B, T, h_l, w_l])] from the
    recorder, words [B, T], shading [B, 2, 64, 64], ``mask`` one of ``MASKS``. The token loss is the mean
    over layers; the pixel loss the mean over resolutions of the BCE of that resolution's layer-averaged map."""
    words = words.to(shading.device)
    by_side: dict[tuple[int, int], list[torch.Tensor]] = {}
    for _, _, maps in layer_maps:
        by_side.setdefault(tuple(maps.shape[-2:]), []).append(maps)
    masks = {side: layer_masks(shading, side, mask).to(layer_maps[0][2].dtype) for side in by_side}
    token = torch.stack([token_loss(m, words, masks[side]) for side, ms in by_side.items() for m in ms]).mean()
    pixel = torch.stack([pixel_loss(torch.stack(ms).mean(0), words, masks[side])
                         for side, ms in by_side.items()]).mean()
    return {"token_loss": token, "pixel_loss": pixel}

