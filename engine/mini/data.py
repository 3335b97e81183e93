""""Fashion-MNIST in colour": captioned 64x64 RGB pictures for the mini Stable Diffusion.

Each Fashion-MNIST item (28x28 grey, Xiao et al. 2017) is upscaled to 48x48,
placed in the middle of a 64x64 light background and tinted with one of eight
named colours. The pixel intensity v in [0, 1] is the shading: a pixel is
``background + v * (colour - background)``, so the brightest parts of the item
take the full colour and its faint parts fade into the background. Because the
mix is linear in v, ``ink()`` gets v back from a picture (up to scale): that is
the grey version the Fashion-MNIST judge reads.

Captions come from templates and synonyms ("a red ankle boot", "a photo of blue
trousers", "sneakers in yellow", "a green bag"); about 10% are empty, so the
UNet also learns the unconditional prediction that classifier-free guidance
needs (Ho & Salimans 2022), and about 10% name the item but not its colour
("a photo of a sneaker"), so a prompt without a colour is not new to the model
(and a negative prompt "red" has something to steer). Everything is drawn from
one seed.

Half the pictures (``POSITIONED_SHARE``) are *positioned*: the item is smaller
(``PLACED_SIZES``, 24-36 px) and sits at a named place (``PLACES``: left, right,
top, bottom, the four corners, centre), its exact spot jittered, and the
caption says where ("a red sneaker on the left", "a small blue bag in the top
right corner"). A caption with no place word always means the classic picture:
centred and 48 px. So the text encoders and the UNets have to learn *where*,
and the item word's cross-attention has somewhere to point.

SDXL's micro-conditioning augmentations (blur to an ``original_size``, crop at
``crops_coords_top_left``) live in ``engine/mini/micro.py``.

Shapes: pictures are float tensors [N, 3, 64, 64] in [0, 1] unless a function
says otherwise; sizes and crops are (height, width) and (top, left), as
diffusers' ``original_size`` and ``crops_coords_top_left``. No gradio here.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.fashion.data import CLASS_NAMES, load_split

IMAGE_SIZE = 64
ITEM_SIZE = 48  # the 28 px item is upscaled to this and centred: an 8 px margin all round
BACKGROUND = (0.95, 0.94, 0.92)  # a light, slightly warm grey, RGB in [0, 1]
EMPTY_CAPTION_SHARE = 0.1
NO_COLOUR_SHARE = 0.1  # of all captions: the item without its colour

#: The named colours, RGB in [0, 1]. Hues (degrees): red 0, orange 27, yellow 56,
#: green 129, blue 224, purple 275, pink 327; black has no hue (saturation ~0).
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.10, 0.10),
    "orange": (0.95, 0.45, 0.05),
    "yellow": (0.90, 0.85, 0.05),
    "green": (0.10, 0.60, 0.20),
    "blue": (0.10, 0.30, 0.85),
    "purple": (0.50, 0.15, 0.75),
    "pink": (0.95, 0.40, 0.70),
    "black": (0.10, 0.10, 0.10),
}
COLOUR_NAMES = tuple(COLOURS)

#: Nouns per Fashion-MNIST class, as (singular, plural); None = no singular ("trousers").
#: The first one is the class's canonical noun, used in evaluation prompts.
CLASS_NOUNS: tuple[tuple[tuple[str | None, str], ...], ...] = (
    (("t-shirt", "t-shirts"), ("tee", "tees"), ("top", "tops")),
    ((None, "trousers"), (None, "pants"), (None, "slacks")),
    (("pullover", "pullovers"), ("sweater", "sweaters"), ("jumper", "jumpers")),
    (("dress", "dresses"), ("frock", "frocks")),
    (("coat", "coats"), ("jacket", "jackets")),
    (("sandal", "sandals"), ("summer sandal", "summer sandals")),
    (("shirt", "shirts"), ("blouse", "blouses"), ("button-up shirt", "button-up shirts")),
    (("sneaker", "sneakers"), ("trainer", "trainers"), ("running shoe", "running shoes")),
    (("bag", "bags"), ("handbag", "handbags"), ("purse", "purses")),
    (("ankle boot", "ankle boots"), ("boot", "boots")),
)
assert len(CLASS_NOUNS) == len(CLASS_NAMES)

#: Caption templates. {np}: "a red sneaker" / "red sneakers"; {noun}: "a sneaker" / "sneakers";
#: {word}: "sneaker" / "sneakers".
TEMPLATES = (
    "{np}",
    "a photo of {np}",
    "a picture of {np}",
    "{noun} in {colour}",
    "{colour} {word}",
)
#: Templates for captions that do not name the colour.
NO_COLOUR_TEMPLATES = ("{noun}", "a photo of {noun}", "a picture of {noun}")
PLURAL_SHARE = 0.25

#: Positioned pictures: share of all pictures, item sizes (px), and the named places. Each place has
#: its centre as (row, column) fractions of the canvas (None: pushed to that edge, see ``place_box``)
#: and the phrases captions use. Left/right = that half, top/bottom = that half, a corner = that quadrant.
POSITIONED_SHARE = 0.5
PLACED_SIZES = (24, 36)  # inclusive range of the item's side on the 64 px canvas
SMALL_SHARE = 0.25  # of positioned captions with a bare noun phrase: "a small red sneaker on the left"
PLACES: dict[str, tuple[tuple[str | None, str | None], tuple[str, ...]]] = {
    "left": ((None, "left"), ("on the left", "at the left", "on the left side")),
    "right": ((None, "right"), ("on the right", "at the right", "on the right side")),
    "top": (("top", None), ("at the top", "in the top half")),
    "bottom": (("bottom", None), ("at the bottom", "in the bottom half")),
    "top left": (("top", "left"), ("in the top left corner", "at the top left", "in the top left")),
    "top right": (("top", "right"), ("in the top right corner", "at the top right", "in the top right")),
    "bottom left": (("bottom", "left"), ("in the bottom left corner", "at the bottom left", "in the bottom left")),
    "bottom right": (("bottom", "right"), ("in the bottom right corner", "at the bottom right",
                                           "in the bottom right")),
    "centre": ((None, None), ("in the centre", "in the center", "in the middle")),
}
PLACE_NAMES = tuple(PLACES)
UNPLACED = -1  # ``places`` value of a classic picture: centred, 48 px, no place word

#: Two-item pictures: a share of the positioned pictures holds a second item at the opposite place, in
#: another colour and of another class: "a red sneaker on the left and a blue bag on the right". Their
#: sides are smaller (``TWO_ITEM_SIZES``) and pushed to the edges (``TWO_ITEM_GAP``), so the two never overlap.
TWO_ITEM_SIZES = (24, 28)
TWO_ITEM_GAP = (1, 3)
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "top left": "bottom right",
            "bottom right": "top left", "top right": "bottom left", "bottom left": "top right"}
TWO_ITEM_TEMPLATES = ("{first} {place} and {second} {place_2}", "{first} {place}, {second} {place_2}",
                      "{place_cap} {first} and {place_2} {second}")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(colour: str, singular: str | None, plural: str, use_plural: bool) -> str:
    """ "a red sneaker", "an orange bag", "blue trousers" (plural nouns take no article)."""
    if use_plural or singular is None:
        return f"{colour} {plural}"
    return f"{_article(colour)} {colour} {singular}"


def make_caption(label: int, colour: str | None, template: int, noun: int, use_plural: bool) -> str:
    """One caption from its choices: class ``label``, ``colour`` name, template and noun indices.

    ``colour=None`` uses ``NO_COLOUR_TEMPLATES`` (``template`` modulo their number): "a photo of a sneaker".
    """
    singular, plural = CLASS_NOUNS[label][noun]
    use_plural = use_plural or singular is None
    word = plural if use_plural else singular
    noun = word if use_plural else f"{_article(singular)} {singular}"
    if colour is None:
        return NO_COLOUR_TEMPLATES[template % len(NO_COLOUR_TEMPLATES)].format(noun=noun)
    return TEMPLATES[template].format(np=noun_phrase(colour, singular, plural, use_plural), noun=noun,
                                      word=word, colour=colour)


def place_caption(caption: str, place: str, phrase: int, small: bool) -> str:
    """Add the place to a caption: "a red sneaker" -> "a red sneaker on the left"; ``small`` makes a bare
    singular noun phrase "a small red sneaker ..." (other captions are left as they are)."""
    if small and caption.startswith(("a ", "an ")) and not caption.startswith(("a photo", "a picture")):
        caption = "a small " + caption.split(" ", 1)[1]
    phrases = PLACES[place][1]
    return f"{caption} {phrases[phrase % len(phrases)]}"


def prompt_for(label: int, colour: str) -> str:
    """The evaluation prompt "a {colour} {class}": "a red ankle boot", "blue trousers"."""
    singular, plural = CLASS_NOUNS[label][0]
    return noun_phrase(colour, singular, plural, use_plural=False)


def positioned_prompt_for(label: int, colour: str, place: str) -> str:
    """The evaluation prompt with a place: "a red ankle boot on the left", "blue trousers in the top right corner"."""
    return place_caption(prompt_for(label, colour), place, 0, small=False)


def caption_vocabulary() -> set[str]:
    """Every word a caption can contain (for tests and the model card)."""
    words = {w for t in TEMPLATES + NO_COLOUR_TEMPLATES for w in re.sub(r"{\w+}", " ", t).split()}
    words |= set(COLOUR_NAMES) | {"a", "an", "small"}
    words |= {w for _, phrases in PLACES.values() for phrase in phrases for w in phrase.split()}
    for nouns in CLASS_NOUNS:
        for singular, plural in nouns:
            words |= set(plural.split()) | set((singular or "").split())
    return words


# ----------------------------------------------------------------------------
# The data set


@dataclass
class ColourFashion:
    """A seeded captioned set: item ``i`` is Fashion-MNIST image ``items[i]`` in ``colours[i]``.

    items: uint8 [N, 28, 28]; labels: int64 [N] (0-9); colours: int64 [N]
    (indices into ``COLOUR_NAMES``); captions: N strings ("" for about 10%);
    names_colour: bool [N], whether the caption names the colour (False for
    empty and colourless captions); places: int64 [N], an index into
    ``PLACE_NAMES`` or ``UNPLACED`` (-1) for a classic centred picture; boxes:
    int64 [N, 3], the item's (top, left, side) in px on the 64 px canvas.
    Pictures are drawn on demand with ``pictures(indices)``.
    """

    items: np.ndarray
    labels: np.ndarray
    colours: np.ndarray
    captions: list[str]
    names_colour: np.ndarray
    seed: int
    places: np.ndarray
    boxes: np.ndarray
    second: SecondItems | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def pictures(self, indices=None) -> torch.Tensor:
        """[n, 3, 64, 64] in [0, 1] for ``indices`` (all when None)."""
        v = self.shading(indices)
        return tint(v[:, :1], self.colours[self._rows(indices)], extra=(v[:, 1:], self._second_colours(indices)))

    def shading(self, indices=None) -> torch.Tensor:
        """Each item's own shading v [n, 2, 64, 64] in [0, 1]: channel 0 the (first) item, channel 1 the
        second item of a two-item picture (all 0 for the others). ``v > 0`` is an item's exact mask."""
        rows = self._rows(indices)
        v = torch.zeros(len(rows), 2, IMAGE_SIZE, IMAGE_SIZE)
        v[:, :1] = placed_intensity_map(self.items[rows], self.boxes[rows])
        if self.second is not None:
            two = np.flatnonzero(self.second.labels[rows] >= 0)
            if len(two):
                v[two, 1:] = placed_intensity_map(self.second.items[rows[two]], self.second.boxes[rows[two]])
        return v

    def _rows(self, indices) -> np.ndarray:
        return np.arange(len(self)) if indices is None else np.asarray(indices).reshape(-1)

    def _second_colours(self, indices) -> np.ndarray:
        if self.second is None:
            return np.zeros(len(self._rows(indices)), dtype=np.int64)
        return np.maximum(self.second.colours[self._rows(indices)], 0)


@dataclass
class SecondItems:
    """The second items of two-item pictures, row for row with their ``ColourFashion``: items uint8
    [N, 28, 28], labels int64 [N] (-1: the picture has one item), colours and places int64 [N] (-1 where
    there is none), boxes int64 [N, 3] (top, left, side)."""

    items: np.ndarray
    labels: np.ndarray
    colours: np.ndarray
    places: np.ndarray
    boxes: np.ndarray


def make_captions(labels: np.ndarray, colours: np.ndarray, rng: np.random.Generator,
                  empty_share: float = EMPTY_CAPTION_SHARE,
                  no_colour_share: float = NO_COLOUR_SHARE) -> tuple[list[str], np.ndarray]:
    """A caption per item: random template, noun and number; ``empty_share`` of them are "" and
    ``no_colour_share`` leave the colour out. Returns (captions, names_colour bool [N])."""
    n = len(labels)
    templates = rng.integers(0, len(TEMPLATES), n)
    nouns = rng.random(n)
    plural = rng.random(n) < PLURAL_SHARE
    draw = rng.random(n)
    empty, no_colour = draw < empty_share, (draw >= empty_share) & (draw < empty_share + no_colour_share)
    captions = []
    for i in range(n):
        label = int(labels[i])
        noun = int(nouns[i] * len(CLASS_NOUNS[label]))
        colour = None if no_colour[i] else COLOUR_NAMES[colours[i]]
        captions.append("" if empty[i] else make_caption(label, colour, int(templates[i]), noun, bool(plural[i])))
    return captions, ~(empty | no_colour)


def place_box(place: str, side: int, rng: np.random.Generator, size: int = IMAGE_SIZE) -> tuple[int, int]:
    """(top, left) in px of a ``side`` px item at ``place``, jittered.

    Along an axis the place names ("left", "top"...), the item sits 1-6 px from
    that edge; along an axis it leaves free, its centre is jittered +-8 px around
    the middle ("centre": +-4 px on both).
    """
    (row, col), _ = PLACES[place]
    spread = 4 if place == "centre" else 8

    def along(edge: str | None, low_edge: str) -> int:
        if edge is None:
            return int(np.clip(round((size - side) / 2 + rng.integers(-spread, spread + 1)), 0, size - side))
        gap = int(rng.integers(1, 7))
        return gap if edge == low_edge else size - side - gap

    return along(row, "top"), along(col, "left")


def make_places(n: int, rng: np.random.Generator, share: float = POSITIONED_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """Places (int64 [N], ``UNPLACED`` for about 1 - ``share``) and boxes (int64 [N, 3]: top, left, side)."""
    positioned = rng.random(n) < share
    place_ids = rng.integers(0, len(PLACE_NAMES), n)
    sides = rng.integers(PLACED_SIZES[0], PLACED_SIZES[1] + 1, n)
    margin = (IMAGE_SIZE - ITEM_SIZE) // 2
    places = np.full(n, UNPLACED, dtype=np.int64)
    boxes = np.tile(np.array([margin, margin, ITEM_SIZE], dtype=np.int64), (n, 1))
    for i in np.flatnonzero(positioned):
        places[i] = place_ids[i]
        boxes[i] = (*place_box(PLACE_NAMES[place_ids[i]], int(sides[i]), rng), sides[i])
    return places, boxes


def add_places(captions: list[str], places: np.ndarray, rng: np.random.Generator) -> list[str]:
    """Each positioned item's caption gets its place phrase (empty captions stay empty)."""
    phrases = rng.integers(0, 3, len(captions))
    small = rng.random(len(captions)) < SMALL_SHARE
    return [place_caption(c, PLACE_NAMES[p], int(k), bool(s)) if c and p != UNPLACED else c
            for c, p, k, s in zip(captions, places, phrases, small)]


@functools.lru_cache(maxsize=2)
def _load_split(split: str, root: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's ``split``, read once per process (the arrays are never written to)."""
    return load_split(split, root)


def make_dataset(split: str = "train", seed: int = 0, num_items: int | None = None,
                 empty_share: float = EMPTY_CAPTION_SHARE, root=None,
                 positioned_share: float = POSITIONED_SHARE, two_item_share: float = 0.0) -> ColourFashion:
    """The colour set from Fashion-MNIST's ``split``, the same for the same ``seed``.

    ``num_items`` takes a seeded random subset (all 60,000 / 10,000 when None).
    Colours are uniform over the eight names, independent of the class; about
    ``positioned_share`` of the items are small and placed (``make_places``);
    ``two_item_share`` of the placed ones (not "centre") get a second item
    (``add_second_items``), drawn from their own seeded stream so the rest of the
    set is the same with or without them.
    """
    items, labels = _load_split(split, None if root is None else str(root))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))[: num_items or len(labels)]
    items, labels = items[order], labels[order].astype(np.int64)
    colours = rng.integers(0, len(COLOUR_NAMES), len(labels)).astype(np.int64)
    captions, names_colour = make_captions(labels, colours, rng, empty_share)
    places, boxes = make_places(len(labels), rng, positioned_share)
    captions = add_places(captions, places, rng)
    data = ColourFashion(items=items, labels=labels, colours=colours, captions=captions, names_colour=names_colour,
                         seed=seed, places=places, boxes=boxes)
    if two_item_share > 0:
        add_second_items(data, np.random.default_rng([seed, 2]), two_item_share)
    return data


def two_item_caption(first: str, place: str, second: str, place_2: str, template: int) -> str:
    """"a red sneaker on the left and a blue bag on the right" from two noun phrases and two places."""
    phrase, phrase_2 = PLACES[place][1][0], PLACES[place_2][1][0]
    return TWO_ITEM_TEMPLATES[template % len(TWO_ITEM_TEMPLATES)].format(
        first=first, place=phrase, second=second, place_2=phrase_2, place_cap=phrase)


def swap_colour_words(caption: str, colour: str, colour_2: str) -> str:
    """The caption with its two colours exchanged, every other word kept: "a red sneaker on the left and a
    blue bag on the right" -> "a blue sneaker on the left and a red bag on the right". The same bag of words
    with the other binding: a hard negative for the mini CLIP (NegCLIP, Yuksekgonul et al. 2023). An article
    before a colour follows it ("an orange bag" <-> "a black bag")."""
    swap = {colour: colour_2, colour_2: colour}

    def swapped(m: re.Match) -> str:
        new = swap[m.group(2)]
        return (f"{_article(new)} " if m.group(1) else "") + new

    return re.sub(rf"\b(?:(an?) )?({re.escape(colour)}|{re.escape(colour_2)})\b", swapped, caption)


def add_second_items(data: ColourFashion, rng: np.random.Generator, share: float) -> None:
    """Turn ``share`` of the placed pictures (not "centre") into two-item pictures, in place.

    The second item is another picture's item of another class, in another
    colour, at ``OPPOSITE`` the first one's place; both are resized to
    ``TWO_ITEM_SIZES`` and pushed ``TWO_ITEM_GAP`` px from their edges, and the
    caption names both in order ("... on the left and ... on the right").
    """
    n = len(data)
    centre = PLACE_NAMES.index("centre")
    chosen = np.flatnonzero((data.places != UNPLACED) & (data.places != centre) & (rng.random(n) < share))
    second = SecondItems(items=np.zeros_like(data.items), labels=np.full(n, -1), colours=np.full(n, -1),
                         places=np.full(n, -1), boxes=np.zeros((n, 3), dtype=np.int64))
    for i in chosen:
        j = int(rng.integers(0, n))
        while data.labels[j] == data.labels[i]:
            j = int(rng.integers(0, n))
        colour_2 = (int(data.colours[i]) + int(rng.integers(1, len(COLOUR_NAMES)))) % len(COLOUR_NAMES)
        place = PLACE_NAMES[data.places[i]]
        place_2 = OPPOSITE[place]
        sides = rng.integers(TWO_ITEM_SIZES[0], TWO_ITEM_SIZES[1] + 1, 2)
        data.boxes[i] = (*edge_box(place, int(sides[0]), rng), sides[0])
        second.items[i], second.labels[i], second.colours[i] = data.items[j], data.labels[j], colour_2
        second.places[i], second.boxes[i] = PLACE_NAMES.index(place_2), (*edge_box(place_2, int(sides[1]), rng),
                                                                        sides[1])
        nouns = [CLASS_NOUNS[int(label)][int(rng.integers(0, len(CLASS_NOUNS[int(label)])))]
                 for label in (data.labels[i], data.labels[j])]
        phrases = [noun_phrase(COLOUR_NAMES[c], *noun, use_plural=noun[0] is None)
                   for c, noun in zip((int(data.colours[i]), colour_2), nouns)]
        data.captions[i] = two_item_caption(phrases[0], place, phrases[1], place_2, int(rng.integers(0, 3)))
        data.names_colour[i] = True
    data.second = second


def edge_box(place: str, side: int, rng: np.random.Generator, size: int = IMAGE_SIZE) -> tuple[int, int]:
    """(top, left) of a two-item picture's item: ``place_box``, but ``TWO_ITEM_GAP`` px from the named edges."""
    top, left = place_box(place, side, rng, size)
    (row, col), _ = PLACES[place]
    gap = lambda: int(rng.integers(TWO_ITEM_GAP[0], TWO_ITEM_GAP[1] + 1))  # noqa: E731
    if row is not None:
        top = gap() if row == "top" else size - side - gap()
    if col is not None:
        left = gap() if col == "left" else size - side - gap()
    return top, left


# ----------------------------------------------------------------------------
# Drawing


def rgb_tensor(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(-1, 3, 1, 1)


def intensity_map(items: np.ndarray | torch.Tensor, size: int = IMAGE_SIZE, item_size: int = ITEM_SIZE) -> torch.Tensor:
    """uint8 items [N, 28, 28] -> shading v [N, 1, size, size] in [0, 1]: bilinear upscale, centred, 0 around."""
    v = torch.as_tensor(np.asarray(items), dtype=torch.float32).unsqueeze(1) / 255.0
    v = F.interpolate(v, size=(item_size, item_size), mode="bilinear", align_corners=False).clamp(0, 1)
    margin = (size - item_size) // 2
    return F.pad(v, (margin, size - item_size - margin) * 2)


def tint(v: torch.Tensor, colour_ids, extra: tuple | None = None) -> torch.Tensor:
    """Shading v [N, 1, H, W] -> pictures [N, 3, H, W]: ``background + v * (colour - background)``.

    ``extra`` = (v_2 [N, 1, H, W], colour_ids_2 [N]) adds a second item the same way (the items never
    overlap, so their terms just add)."""
    table = torch.tensor([COLOURS[c] for c in COLOUR_NAMES], dtype=torch.float32)
    background = rgb_tensor(BACKGROUND)
    colour = table[torch.as_tensor(np.asarray(colour_ids), dtype=torch.long)].view(-1, 3, 1, 1)
    pictures = background + v * (colour - background)
    if extra is not None:
        v_2, colour_ids_2 = extra
        colour_2 = table[torch.as_tensor(np.asarray(colour_ids_2), dtype=torch.long)].view(-1, 3, 1, 1)
        pictures = pictures + v_2 * (colour_2 - background)
    return pictures


def placed_intensity_map(items: np.ndarray, boxes: np.ndarray, size: int = IMAGE_SIZE) -> torch.Tensor:
    """uint8 items [N, 28, 28] and boxes [N, 3] (top, left, side) -> shading v [N, 1, size, size]: each item
    upscaled (bilinear) to its side and put at its box, 0 elsewhere."""
    items, boxes = np.asarray(items), np.asarray(boxes)
    v = torch.zeros(len(items), 1, size, size)
    for side in np.unique(boxes[:, 2]):
        rows = np.flatnonzero(boxes[:, 2] == side)
        scaled = intensity_map(items[rows], size=int(side), item_size=int(side))
        for k, i in enumerate(rows):
            top, left = int(boxes[i, 0]), int(boxes[i, 1])
            v[i, :, top: top + side, left: left + side] = scaled[k]
    return v


def render(items: np.ndarray, colour_ids, boxes: np.ndarray | None = None) -> torch.Tensor:
    """uint8 items [N, 28, 28] and colour indices [N] -> pictures [N, 3, 64, 64] in [0, 1].

    Without ``boxes`` every item is centred at 48 px (the classic picture).
    """
    v = intensity_map(items) if boxes is None else placed_intensity_map(items, boxes)
    return tint(v, colour_ids)


def to_vae_input(pictures: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1], the VAE's input range."""
    return pictures * 2 - 1
