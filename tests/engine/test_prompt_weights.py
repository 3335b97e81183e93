"""Prompt weights, A1111's ``(word:1.5)`` through compel, on the tiny SD and SDXL pipelines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import prompt_weights, text_encoding
from engine.errors import UserError
from engine.txt2img.request import make_request
from tests.engine.test_txt2img import TOL, max_diff, ours, preset, sd_pipe, sdxl_pipe, theirs  # noqa: F401

PROMPT = "a red sneaker on a white background"


def test_parse_reads_a1111_weights():
    parsed = prompt_weights.parse("a (red:1.5) sneaker, (blurry: .5)")
    assert parsed.fragments == (("a ", 1.0), ("red", 1.5), (" sneaker, ", 1.0), ("blurry", 0.5))
    assert parsed.text == "a red sneaker, blurry" and parsed.weighted
    assert not prompt_weights.parse("a (red:1.0) sneaker").weighted
    # anything else in brackets is text, as it was
    for literal in ("a sneaker (red)", "(photo: a sneaker)", "", "[red] sneaker"):
        parsed = prompt_weights.parse(literal)
        assert parsed.text == literal and not parsed.weighted


@pytest.mark.parametrize("text,name,message", [
    ("a (red:5) sneaker", "prompt", "The weight of 'red' in the prompt must be between 0 and 3, got '5'"),
    ("(blurry:-1)", "negative_prompt", "The weight of 'blurry' in the negative_prompt must be between 0 and 3"),
])
def test_weights_out_of_range_are_refused(text, name, message):
    with pytest.raises(UserError, match=message):
        prompt_weights.parse(text, name)
    with pytest.raises(UserError, match=message):
        make_request(preset("sd"), prompt=text if name == "prompt" else "x",
                     negative_prompt=text if name != "prompt" else "", width=64, height=64)


def test_with_weight_writes_the_syntax():
    assert prompt_weights.with_weight("a red sneaker", "red", 0.5) == "a (red:0.5) sneaker"
    assert prompt_weights.with_weight("a Red sneaker", "red", 2) == "a (Red:2) sneaker"
    with pytest.raises(UserError, match="'blue', is not in the prompt"):
        prompt_weights.with_weight("a red sneaker", "blue", 2)


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_weight_one_gives_the_plain_embeddings_exactly(request, kind):
    pipe = request.getfixturevalue(f"{kind}_pipe")
    plain = text_encoding.encode_prompt(pipe, kind, PROMPT, "blurry")
    weighted = text_encoding.encode_prompt(pipe, kind, "a (red:1.0) sneaker on a white background", "(blurry:1)")
    for a, b in ((plain.prompt_embeds, weighted.prompt_embeds),
                 (plain.negative_prompt_embeds, weighted.negative_prompt_embeds),
                 (plain.pooled_prompt_embeds, weighted.pooled_prompt_embeds)):
        assert (a is None and b is None) or torch.equal(a, b)
    # compel itself agrees: its embeddings at weight 1 are ours, to the bit
    ones = prompt_weights.parse("a (red:1.0) sneaker on a white background")
    assert torch.equal(prompt_weights.encode_weighted(pipe, kind, ones), plain.prompt_embeds)


def test_weight_one_gives_the_plain_image(sd_pipe):  # noqa: F811
    plain = ours(sd_pipe, "sd", prompt=PROMPT, guidance_scale=3.0)
    weighted = ours(sd_pipe, "sd", prompt="a (red:1.0) sneaker on a white background", guidance_scale=3.0)
    assert (plain.images == weighted.images).all()


def test_weight_one_gives_the_plain_sweep_and_attention_maps(sd_pipe):  # noqa: F811
    """The guidance sweep and Inside the UNet's maps read weights through the same encoder path: weight 1.0 is
    the plain prompt's output exactly, in every picture of the sweep and in every map."""
    from engine.unet.attention import attention_maps

    weighted = "a (red:1.0) sneaker on a white background"
    plain = ours(sd_pipe, "sd", prompt=PROMPT, guidance_scales=(1, 3), negative_prompt="(dark:1)")
    one = ours(sd_pipe, "sd", prompt=weighted, guidance_scales=(1, 3), negative_prompt="dark")
    assert (plain.images == one.images).all()
    kwargs = dict(guidance_scale=3.0, num_inference_steps=3, seed=0, width=64, height=64)
    maps = attention_maps(sd_pipe, preset("sd"), prompt=PROMPT, **kwargs)
    maps_one = attention_maps(sd_pipe, preset("sd"), prompt=weighted, **kwargs)
    assert maps["json"]["maps"] == maps_one["json"]["maps"] and maps["tokens"] == maps_one["tokens"]
    assert (np.asarray(maps["image"]) == np.asarray(maps_one["image"])).all()


def test_down_weighting_reaches_the_later_tokens(sd_pipe):  # noqa: F811
    """CLIP is causal: every token after "red" has read it. MASK mode changes them too (only scaling the word's
    own vectors would leave them as they are), and weight 0 is the prompt with the word masked out."""
    full = text_encoding.encode_text(sd_pipe, "sd", PROMPT)[0]
    down = text_encoding.encode_text(sd_pipe, "sd", "a (red:0.2) sneaker on a white background")[0]
    after_red = slice(3, 9)  # "sneaker on a white background" and the end token (start token, a, red = 0-2)
    assert (full[0, after_red] - down[0, after_red]).abs().mean() > 1e-3
    assert torch.allclose(full[0, :2], down[0, :2], atol=1e-5)  # tokens before "red" never saw it


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_compel_embeddings_give_the_same_image_in_our_loop_and_diffusers(request, kind):
    pipe = request.getfixturevalue(f"{kind}_pipe")
    prompt, negative = "a (red:1.6) sneaker on a (white:0.4) background", "(blurry:0.5), dark"
    got = ours(pipe, kind, prompt=prompt, negative_prompt=negative, guidance_scale=4.0)
    embeds = text_encoding.encode_prompt(pipe, kind, prompt, negative)
    extra = {}
    if kind == "sdxl":
        extra = dict(pooled_prompt_embeds=embeds.pooled_prompt_embeds,
                     negative_pooled_prompt_embeds=embeds.negative_pooled_prompt_embeds)
    ref = theirs(pipe, prompt=None, prompt_embeds=embeds.prompt_embeds,
                 negative_prompt_embeds=embeds.negative_prompt_embeds, guidance_scale=4.0, **extra)
    assert max_diff(got.images, ref) < TOL
    plain = ours(pipe, kind, prompt="a red sneaker on a white background", negative_prompt="blurry, dark",
                 guidance_scale=4.0)
    assert max_diff(got.images, plain.images) > 1e-3  # the weights changed the picture


def test_token_positions_are_the_plain_prompts(sd_pipe):  # noqa: F811
    """Inside the UNet's maps label the tokens the encoder reads: the syntax is not among them."""
    from engine.tokenizer import prompt_tokens

    assert prompt_tokens(sd_pipe.tokenizer, "a (red:1.5) sneaker") == prompt_tokens(sd_pipe.tokenizer, "a red sneaker")
