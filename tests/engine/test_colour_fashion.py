"""The colour Fashion-MNIST generator and SDXL's micro-conditioning augmentations."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from engine.mini import data as cf
from engine.mini import micro

from engine.mini import measure
from engine.fashion.data import data_dir

needs_data = pytest.mark.skipif(not (data_dir() / "train-images-idx3-ubyte.gz").exists(),
                                reason="Debian's dataset-fashion-mnist is not installed")


@pytest.fixture(scope="module")
def small_set():
    return cf.make_dataset(seed=3, num_items=2000)


@needs_data
def test_same_seed_same_data_other_seed_other_data(small_set):
    again = cf.make_dataset(seed=3, num_items=2000)
    other = cf.make_dataset(seed=4, num_items=2000)
    assert again.captions == small_set.captions
    assert np.array_equal(again.labels, small_set.labels) and np.array_equal(again.colours, small_set.colours)
    assert torch.equal(again.pictures(range(8)), small_set.pictures(range(8)))
    assert other.captions != small_set.captions


@needs_data
def test_pictures_shape_and_range(small_set):
    x = small_set.pictures(range(16))
    assert x.shape == (16, 3, 64, 64) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # a classic (unplaced) picture keeps its 8 px margin of background
    classic = small_set.places[:16] == cf.UNPLACED
    assert 0 < classic.sum() < 16
    background = torch.tensor(cf.BACKGROUND).view(1, 3, 1, 1).expand(int(classic.sum()), 3, 8, 64)
    assert torch.allclose(x[torch.from_numpy(classic)][:, :, :8, :], background)
    assert torch.equal(cf.to_vae_input(x), x * 2 - 1)


@needs_data
def test_captions_use_the_vocabulary_and_name_colour_and_class(small_set):
    vocabulary = cf.caption_vocabulary()
    for caption, label, colour, named in zip(small_set.captions, small_set.labels, small_set.colours,
                                             small_set.names_colour):
        if not caption:
            assert not named
            continue
        assert set(caption.split()) <= vocabulary, caption
        colour_words = set(caption.split()) & set(cf.COLOUR_NAMES)
        assert colour_words == ({cf.COLOUR_NAMES[colour]} if named else set()), caption
        nouns = {w for pair in cf.CLASS_NOUNS[label] for w in pair if w}
        assert any(re.search(rf"\b{re.escape(n)}\b", caption) for n in nouns), caption
    assert len(set(small_set.captions)) > 300  # templates x synonyms x colours give variety


@needs_data
def test_about_ten_percent_of_captions_are_empty_and_ten_percent_colourless(small_set):
    empty = sum(c == "" for c in small_set.captions) / len(small_set)
    colourless = sum(bool(c) and not named for c, named in zip(small_set.captions, small_set.names_colour))
    assert 0.08 <= empty <= 0.12
    assert 0.08 <= colourless / len(small_set) <= 0.12


def test_caption_grammar_examples():
    assert cf.prompt_for(9, "red") == "a red ankle boot"
    assert cf.prompt_for(1, "blue") == "blue trousers"
    assert cf.prompt_for(8, "orange") == "an orange bag"
    assert cf.make_caption(1, "blue", 1, 0, False) == "a photo of blue trousers"
    assert cf.make_caption(7, "yellow", 3, 0, True) == "sneakers in yellow"
    assert cf.make_caption(8, "green", 0, 0, False) == "a green bag"
    assert cf.make_caption(7, "red", 4, 0, False) == "red sneaker"
    assert cf.make_caption(7, None, 1, 0, False) == "a photo of a sneaker"
    assert cf.make_caption(1, None, 0, 1, False) == "pants"


def test_tint_hue_matches_the_colour_name():
    rng = np.random.default_rng(0)
    items = (rng.random((len(cf.COLOUR_NAMES), 28, 28)) * 255).astype(np.uint8)
    items[:, 6:22, 6:22] = 255  # a solid patch: the item's strongest pixels
    pictures = cf.render(items, np.arange(len(cf.COLOUR_NAMES)))
    assert measure.item_colours(pictures) == list(cf.COLOUR_NAMES)


@needs_data
def test_item_colours_read_back_the_data(small_set):
    found = measure.item_colours(small_set.pictures(range(500)))
    asked = [cf.COLOUR_NAMES[c] for c in small_set.colours[:500]]
    assert np.mean([a == b for a, b in zip(found, asked)]) > 0.97


@needs_data
def test_judge_grey_is_close_to_the_original_item(small_set):
    rows = np.flatnonzero(small_set.places == cf.UNPLACED)[:32]
    grey = measure.to_judge_grey(small_set.pictures(rows))
    assert grey.shape == (32, 1, 32, 32) and 0 <= float(grey.min()) and float(grey.max()) <= 1
    original = torch.nn.functional.pad(torch.as_tensor(small_set.items[rows]).float().unsqueeze(1) / 255, (2,) * 4)
    assert float((grey - original).abs().mean()) < 0.08


@needs_data
def test_placed_items_are_where_their_caption_says(small_set):
    """About half the pictures are small and placed; the caption names the place, the ink sits there."""
    placed = np.flatnonzero(small_set.places != cf.UNPLACED)
    assert 0.4 < len(placed) / len(small_set) < 0.6
    sides = small_set.boxes[placed, 2]
    assert sides.min() >= cf.PLACED_SIZES[0] and sides.max() <= cf.PLACED_SIZES[1]
    assert (small_set.boxes[placed, :2] >= 0).all() and (small_set.boxes[placed, :2] + sides[:, None] <= 64).all()
    centroids = measure.ink_centroids(small_set.pictures(placed[:300]))
    for i, centroid in zip(placed[:300], centroids):
        place = cf.PLACE_NAMES[small_set.places[i]]
        assert measure.in_place(place, centroid), (small_set.captions[i], centroid)
        caption = small_set.captions[i]
        assert not caption or any(caption.endswith(p) for p in cf.PLACES[place][1]), caption
    unplaced = [c for c, p in zip(small_set.captions, small_set.places) if p == cf.UNPLACED and c]
    phrases = [p for _, ps in cf.PLACES.values() for p in ps]
    assert not any(c.endswith(p) for c in unplaced for p in phrases)


@needs_data
def test_judge_reads_placed_items_through_their_boxes(small_set):
    """The judge's grey crop of a placed item, from its true box or from the box found in the ink, is the item."""
    placed = np.flatnonzero(small_set.places != cf.UNPLACED)[:32]
    pictures = small_set.pictures(placed)
    found = measure.find_item_boxes(pictures)
    assert np.abs(found[:, :2] + found[:, 2:] / 2 - (small_set.boxes[placed, :2] + small_set.boxes[placed, 2:] / 2)).mean() < 4
    grey = measure.to_judge_grey(pictures, small_set.boxes[placed])
    original = torch.nn.functional.pad(torch.as_tensor(small_set.items[placed]).float().unsqueeze(1) / 255, (2,) * 4)
    assert float((grey - original).abs().mean()) < 0.1


def test_place_regions():
    assert measure.in_place("left", (40, 10)) and not measure.in_place("left", (40, 40))
    assert measure.in_place("top right", (10, 50)) and not measure.in_place("top right", (50, 50))
    assert measure.in_place("bottom", (50, 5)) and measure.in_place("centre", (32, 30)) and not measure.in_place("centre", (5, 30))
    assert cf.positioned_prompt_for(7, "red", "left") == "a red sneaker on the left"


def test_degrade_resolution_blurs_and_keeps_the_size():
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(micro.degrade_resolution(x, 64), x)
    y = micro.degrade_resolution(x, 16)
    assert y.shape == x.shape
    high = lambda z: (z[..., 1:] - z[..., :-1]).abs().mean()  # noqa: E731
    assert high(y) < 0.5 * high(x)


def test_crop_canvas_shifts_the_item_up_and_left():
    x = torch.ones(1, 3, 64, 64) * torch.tensor(cf.BACKGROUND).view(1, 3, 1, 1)
    x[:, :, 30:34, 40:44] = 0.0  # a dark square at rows 30-33, columns 40-43
    assert torch.equal(micro.crop_canvas(x, 0, 0), x)
    y = micro.crop_canvas(x, 10, 20)
    assert y.shape == x.shape
    assert float(y[0, 0, 20:24, 20:24].max()) == 0.0  # moved by (10, 20)
    assert torch.allclose(y[0, :, -10:, :], torch.tensor(cf.BACKGROUND).view(3, 1, 1).expand(3, 10, 64))


def test_micro_condition_returns_true_sizes_and_crops():
    x = torch.rand(64, 3, 64, 64)
    out, original_size, crops = micro.micro_condition(x, np.random.default_rng(0))
    assert out.shape == x.shape
    assert original_size.shape == (64, 2) and crops.shape == (64, 2)
    assert set(original_size[:, 0].tolist()) <= set(micro.SIZE_CHOICES) | {64}
    assert torch.equal(original_size[:, 0], original_size[:, 1])
    assert int(crops.min()) >= 0 and int(crops.max()) <= micro.MAX_CROP
    untouched = (original_size[:, 0] == 64) & (crops.sum(1) == 0)
    assert 5 < int(untouched.sum()) < 30  # about a quarter
    assert torch.equal(out[untouched], x[untouched])
    again = micro.micro_condition(x, np.random.default_rng(0))
    assert torch.equal(again[0], out) and torch.equal(again[2], crops)
