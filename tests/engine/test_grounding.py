"""Token-level grounding (engine.mini.grounding, TokenCompose's two losses) on tiny seeded UNets, on CPU.

The losses must fall when a UNet is trained on them, their gradients must reach
the cross-attention projections, the words they ground must be the item and
colour words of a caption, and the maps they read while training must be the
maps the "Inside the UNet" tab shows for the same UNet inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.mini import data as cf
from engine.mini import grounding as G
from engine.mini import models as ms
from engine.presets import Preset
from engine.unet import attention as A


@pytest.fixture(scope="module")
def tokenizer():
    return ms.load_tokenizers()["tokenizer"]


def grounded(tokenizer, caption, labels, colours) -> list[tuple[str, str]]:
    ids = tokenizer(caption).input_ids
    words = G.word_positions(tokenizer, caption, labels, colours)
    return [(tokenizer.decode([ids[i]]), G.WORDS[words[i]]) for i in range(len(ids)) if words[i] >= 0]


def test_word_positions_ground_each_items_noun_and_colour(tokenizer):
    assert grounded(tokenizer, "a red sneaker on the left and a blue bag on the right", (7, 8), (0, 4)) == [
        ("red", "colour"), ("sneaker", "item"), ("blue", "colour_2"), ("bag", "item_2")]
    # the place word "top" is not the item "top" (a t-shirt): the noun follows its colour
    assert grounded(tokenizer, "in the top left corner a red top and in the bottom right corner a blue bag",
                    (0, 8), (0, 4)) == [("red", "colour"), ("top", "item"), ("blue", "colour_2"), ("bag", "item_2")]
    assert grounded(tokenizer, "sneakers in red at the top", (7,), (0,)) == [("sneakers", "item"), ("red", "colour"),
                                                                             ("top", "place")]
    assert grounded(tokenizer, "a pink top in the top left corner", (0,), (6,)) == [
        ("pink", "colour"), ("top", "item"), ("top", "place"), ("left", "place"), ("corner", "place")]
    assert grounded(tokenizer, "a black ankle boot", (9,), (7,)) == [("black", "colour"), ("ankle", "item"),
                                                                     ("boot", "item")]
    assert grounded(tokenizer, "a photo of a coat", (4,), (-1,)) == [("coat", "item")]
    assert grounded(tokenizer, "", (4,), (0,)) == []


def test_two_item_pictures_are_drawn_where_their_caption_says():
    data = cf.make_dataset("test", seed=0, num_items=600, two_item_share=0.5)
    two = np.flatnonzero(data.second.labels >= 0)
    assert len(two) > 50
    shading = data.shading(two)
    for k, i in enumerate(two[:40]):
        caption = data.captions[i]
        place, place_2 = cf.PLACE_NAMES[data.places[i]], cf.PLACE_NAMES[data.second.places[i]]
        assert cf.OPPOSITE[place] == place_2
        assert cf.COLOUR_NAMES[data.colours[i]] in caption and cf.COLOUR_NAMES[data.second.colours[i]] in caption
        assert data.labels[i] != data.second.labels[i]
        first, second = (shading[k, c] > G.MASK_INK for c in (0, 1))
        assert first.any() and second.any() and not (first & second).any()
        for mask, where in ((first, place), (second, place_2)):
            rows, cols = torch.nonzero(mask, as_tuple=True)
            from engine.mini.measure import in_place
            assert in_place(where, (rows.float().mean(), cols.float().mean()))
    # the rest of the set is the same as without second items
    plain = cf.make_dataset("test", seed=0, num_items=600)
    one = np.flatnonzero(data.second.labels < 0)
    assert [data.captions[i] for i in one] == [plain.captions[i] for i in one]
    assert torch.equal(data.pictures(one[:20]), plain.pictures(one[:20]))


def tiny_batch(tokenizer, batch: int = 4, seed: int = 0) -> dict:
    """Grounding targets for a few placed pictures, with random latents and text states."""
    data = cf.make_dataset("test", seed=seed, num_items=200, positioned_share=1.0, two_item_share=0.5)
    idx = np.arange(batch)
    words = torch.stack([torch.from_numpy(G.word_positions(
        tokenizer, data.captions[i], (int(data.labels[i]), int(data.second.labels[i])) if data.second.labels[i] >= 0
        else (int(data.labels[i]),), (int(data.colours[i]), int(data.second.colours[i])) if data.second.labels[i] >= 0
        else (int(data.colours[i]) if data.names_colour[i] else -1,))) for i in idx])
    g = torch.Generator().manual_seed(seed)
    return {"sample": torch.randn(batch, 4, 8, 8, generator=g), "t": torch.full((batch,), 500),
            "hidden": torch.randn(batch, 77, ms.MODEL_SIZES["smoke"]["text"]["hidden_size"], generator=g),
            "words": words, "shading": data.shading(idx)}


def grounding_step(unet, b: dict) -> dict:
    with A.record_cross_attention(unet, layers=list(G.GROUNDED_SIDES), num_images=len(b["sample"]),
                                  keep_maps=True) as recorder:
        unet(b["sample"], b["t"], encoder_hidden_states=b["hidden"])
    assert {tuple(m.shape[-2:]) for _, _, m in recorder.layer_maps} == {(8, 8), (4, 4)}
    return G.grounding_losses(recorder.layer_maps, b["words"], b["shading"])


def test_grounding_losses_fall_and_their_gradients_reach_the_attn2_projections(tokenizer):
    torch.manual_seed(0)
    unet = ms.make_unet("smoke")
    b = tiny_batch(tokenizer)
    assert (b["words"] >= 0).sum() >= 8
    first = grounding_step(unet, b)
    (first["token_loss"] + first["pixel_loss"]).backward()
    for name in A.cross_attention_layers(unet):
        attn = unet.get_submodule(name)
        if name.startswith("mid_block"):
            continue  # 2x2: not grounded
        assert attn.to_k.weight.grad is not None and attn.to_k.weight.grad.abs().sum() > 0, name
        assert attn.to_q.weight.grad.abs().sum() > 0, name
    opt = torch.optim.Adam(unet.parameters(), lr=1e-3)
    for _ in range(25):
        losses = grounding_step(unet, b)
        opt.zero_grad()
        (losses["token_loss"] + losses["pixel_loss"]).backward()
        opt.step()
    last = grounding_step(unet, b)
    assert last["token_loss"] < 0.7 * first["token_loss"]
    assert last["pixel_loss"] < first["pixel_loss"]


def test_token_loss_is_zero_when_all_attention_is_inside_the_mask():
    masks = torch.zeros(1, len(G.WORDS), 4, 4)
    masks[:, :2, :2, :2] = 1
    maps = torch.full((1, 77, 4, 4), 1 / 77)
    words = torch.full((1, 77), -1)
    words[0, 3] = 0
    assert G.token_loss(maps, words, masks) == pytest.approx(0.75**2)
    maps[0, 3] = 0
    maps[0, 3, :2, :2] = 0.5
    assert G.token_loss(maps, words, masks) == pytest.approx(0.0)
    assert G.pixel_loss(maps, words, masks) < G.pixel_loss(torch.full((1, 77, 4, 4), 1 / 77), words, masks)


def test_coverage_masks_ask_for_attention_on_the_cells_the_item_fills():
    """At 8x8 a centred item touches cells it barely covers: a map spread evenly over every touched cell has
    no token loss with TokenCompose's "any" masks, but has one with "coverage" masks, which are lowest when
    the word's attention sits on the cells the item fills most."""
    data = cf.make_dataset("test", seed=0, num_items=50, positioned_share=0.0)
    shading = data.shading(np.arange(1))
    any_mask, coverage = (G.layer_masks(shading, (8, 8), m) for m in G.MASKS)
    assert torch.equal(any_mask, (coverage > 0).float())
    assert coverage.min() >= 0 and coverage.max() <= 1 and ((coverage[0, 0] > 0) & (coverage[0, 0] < 1)).any()
    words = torch.full((1, 77), -1)
    words[0, 2] = 0
    maps = torch.full((1, 77, 8, 8), 1 / 77)
    maps[0, 2] = any_mask[0, 0] / any_mask[0, 0].sum()
    assert G.token_loss(maps, words, any_mask) == pytest.approx(0.0)
    spread = G.token_loss(maps, words, coverage)
    assert spread > 0.01
    best = coverage[0, 0].max()
    fullest = (coverage[0, 0] == best).float()
    maps[0, 2] = fullest / fullest.sum()
    assert G.token_loss(maps, words, coverage) == pytest.approx(float((1 - best) ** 2), abs=1e-6)
    assert G.token_loss(maps, words, coverage) < spread / 4
    with pytest.raises(ValueError, match="mask must be one of"):
        G.layer_masks(shading, (8, 8), "bbox")


def test_training_maps_equal_the_tabs_maps_for_the_same_unet_inputs():
    from diffusers import StableDiffusionPipeline

    from tests.tiny_models import tiny_sd_components

    pipe = StableDiffusionPipeline(**tiny_sd_components(), requires_safety_checker=False)
    seen = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, args, kwargs: seen.append((args, kwargs)), with_kwargs=True)
    preset = Preset(name="tiny-sd", kind="sd", path="/nonexistent",
                    options={"min_size": 32, "max_size": 256, "default_size": 64})
    try:
        tab = A.attention_maps(pipe, preset, prompt="a red ankle boot", guidance_scale=1.0, num_inference_steps=1,
                               seed=0, width=64, height=64)
    finally:
        hook.remove()
    (args, kwargs), = seen
    with torch.enable_grad(), A.record_cross_attention(pipe.unet, num_images=1, keep_maps=True) as recorder:
        pipe.unet(*args, **kwargs)
    maps = recorder.layer_maps
    assert maps and all(m.requires_grad for _, _, m in maps)
    latent = args[0].shape[-2:]
    mean = torch.stack([F.interpolate(m[-1:], size=latent, mode="bilinear", align_corners=False)[0]
                        for _, _, m in maps]).mean(0).detach()
    shown = len(tab["tokens"])
    expected, _, _ = A.token_maps(mean, shown)
    assert torch.allclose(torch.tensor(tab["json"]["maps"]), expected, atol=1e-3, rtol=1e-3)
