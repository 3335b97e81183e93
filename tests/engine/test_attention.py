"""The cross-attention recorder (engine.unet.attention) on tiny seeded SD and SDXL models, on CPU.

Recording must not change what the UNet computes (output within 1e-5 of
diffusers' default processor, the image through ``text_to_image`` too), must
give probabilities (each pixel's row sums to 1 over the 77 tokens), keep the
conditional half of the guidance batch, aggregate only the steps and layers
asked for, and put every original processor back, even after an error.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from engine import figures, metrics, tokenizer
from engine.presets import Preset
from engine.txt2img import run_to_end, text_to_image
from engine.unet import attention as A

SIZE = 64
PROMPT = "a red ankle boot"
TOL = 1e-5


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def kind_pipe(request):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from tests.tiny_models import tiny_sd_components, tiny_sdxl_components

    if request.param == "sd":
        pipe = StableDiffusionPipeline(**tiny_sd_components(), requires_safety_checker=False)
    else:
        pipe = StableDiffusionXLPipeline(**tiny_sdxl_components())
    return request.param, pipe


def preset(kind: str) -> Preset:
    return Preset(name=f"tiny-{kind}", kind=kind, path="/nonexistent",
                  options={"min_size": 32, "max_size": 256, "default_size": 64})


def run(pipe, kind, **kwargs):
    kwargs = {"prompt": PROMPT, "guidance_scale": 2.0, "num_inference_steps": 3, "seed": 0, "width": SIZE,
              "height": SIZE, **kwargs}
    return A.attention_maps(pipe, preset(kind), **kwargs)


def unet_inputs(pipe, kind, batch: int = 2, seed: int = 0) -> tuple[tuple, dict]:
    """Random UNet inputs: latents [batch, 4, 8, 8], a timestep, text states (and SDXL's added conditions)."""
    g = torch.Generator().manual_seed(seed)
    unet = pipe.unet
    sample = torch.randn(batch, 4, 8, 8, generator=g)
    hidden = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    kwargs = {"encoder_hidden_states": hidden, "return_dict": False}
    if kind == "sdxl":
        pooled = pipe.text_encoder_2.config.projection_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, pooled, generator=g),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]]).repeat(batch, 1)}
    return (sample, torch.tensor(500)), kwargs


def processor_types(unet) -> dict:
    return {key: type(p).__name__ for key, p in unet.attn_processors.items()}


# ----------------------------------------------------------------------------
# The processor computes what diffusers' does, and gives probabilities


def test_attention_with_probs_matches_default_processor_and_rows_sum_to_one(kind_pipe):
    _, pipe = kind_pipe
    name = A.cross_attention_layers(pipe.unet)[0]
    attn = pipe.unet.get_submodule(name)
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 16, attn.query_dim, generator=g)
    text = torch.randn(2, 77, attn.cross_attention_dim, generator=g)
    with torch.no_grad():
        expected = AttnProcessor2_0()(attn, hidden, text)
        out, probs = A.attention_with_probs(attn, hidden, text)
    assert (out - expected).abs().max() < TOL
    assert probs.shape == (2 * attn.heads, 16, 77)  # before head averaging
    assert torch.allclose(probs.sum(-1), torch.ones(2 * attn.heads, 16), atol=1e-6)
    assert probs.min() >= 0


def test_whole_unet_output_unchanged_while_recording(kind_pipe):
    kind, pipe = kind_pipe
    args, kwargs = unet_inputs(pipe, kind)
    with torch.no_grad():
        expected = pipe.unet(*args, **kwargs)[0]
        with A.record_cross_attention(pipe.unet) as recorder:
            got = pipe.unet(*args, **kwargs)[0]
    assert (got - expected).abs().max() < TOL
    assert recorder.layers_recorded == sorted(recorder.layers_recorded, key=list(recorder.layer_sizes).index)
    assert set(recorder.layers_recorded) == set(A.cross_attention_layers(pipe.unet))


def test_image_unchanged_through_text_to_image(kind_pipe):
    kind, pipe = kind_pipe
    plain = run_to_end(text_to_image(pipe, preset(kind), prompt=PROMPT, guidance_scale=2.0, num_inference_steps=3,
                                     seed=0, width=SIZE, height=SIZE, preview_every=0))
    recorded = run(pipe, kind)
    got = np.asarray(recorded["image"], dtype=np.float32) / 255
    # the PIL images are rounded to 1/255: compare the uint8 pixels, allowing one level for a rounding edge
    assert np.abs(got - plain.images[0]).max() <= 1 / 255 + 1e-6
    # the recording processor and SDPA agree to ~1e-6, which can tip a rare pixel over a rounding edge
    assert (np.asarray(recorded["image"]) != np.asarray(plain.pil_images[0])).mean() < 0.01


# ----------------------------------------------------------------------------
# What the recorder keeps


def test_one_map_per_token_each_a_distribution(kind_pipe):
    kind, pipe = kind_pipe
    out = run(pipe, kind)
    tokens = tokenizer.prompt_tokens(pipe.tokenizer, PROMPT)
    assert [t["text"] for t in tokens] == ["<|startoftext|>", "a", "red", "ankle", "boot", "<|endoftext|>"]
    data = out["json"]
    assert len(data["maps"]) == len(tokens) == len(out["heatmaps"]) == len(out["tokens"]) == len(data["mass"])
    assert out["special"] == [True, False, False, False, False, True]
    maps = torch.tensor(data["maps"])
    assert maps.shape == (len(tokens), SIZE // 8, SIZE // 8)
    assert torch.allclose(maps.sum((1, 2)), torch.ones(len(tokens)), atol=1e-3)
    assert abs(sum(data["mass"]) - 1) < 1e-3 and 0 < data["shown_share"] <= 1
    assert out["heatmaps"][0].size == (256, 256)
    assert data["steps"] == [0, 1, 2, 3] if kind == "sd" else data["steps"] == [0, 1, 2]  # PNDM: one more
    assert data["per_step"]["steps"] == data["steps"]


def test_mean_maps_sum_to_one_at_every_pixel(kind_pipe):
    kind, pipe = kind_pipe
    args, kwargs = unet_inputs(pipe, kind)
    with torch.no_grad(), A.record_cross_attention(pipe.unet) as recorder:
        pipe.unet(*args, **kwargs)
    mean = recorder.mean_maps()
    assert mean.shape == (77, 8, 8)
    assert torch.allclose(mean.sum(0), torch.ones(8, 8), atol=1e-5)


def test_keeps_the_conditional_half(kind_pipe):
    kind, pipe = kind_pipe
    (sample, t), kwargs = unet_inputs(pipe, kind, batch=2)
    sample = sample[:1].repeat(2, 1, 1, 1)  # the loop duplicates the latents: [uncond, cond]

    def record(batch_rows):
        kw = {**kwargs, "encoder_hidden_states": kwargs["encoder_hidden_states"][batch_rows]}
        if "added_cond_kwargs" in kw:
            kw["added_cond_kwargs"] = {k: v[batch_rows] for k, v in kwargs["added_cond_kwargs"].items()}
        with torch.no_grad(), A.record_cross_attention(pipe.unet) as recorder:
            pipe.unet(sample[batch_rows], t, **kw)
        return recorder.mean_maps()

    both, cond_only, uncond_only = record([0, 1]), record([1]), record([0])
    assert torch.allclose(both, cond_only, atol=1e-5)
    assert not torch.allclose(both, uncond_only, atol=1e-3)


def test_empty_prompt_gives_the_special_tokens_and_a_note(kind_pipe):
    kind, pipe = kind_pipe
    out = run(pipe, kind, prompt="", num_inference_steps=1)
    assert out["tokens"] == ["<|startoftext|>", "<|endoftext|>"] and out["special"] == [True, True]
    assert len(out["json"]["maps"]) == 2 and "empty" in out["json"]["notes"][0]


# ----------------------------------------------------------------------------
# Selecting steps and layers


@pytest.mark.slow  # about 7-19 s a model on 2 busy cores
def test_step_selection_changes_what_is_aggregated(kind_pipe):
    kind, pipe = kind_pipe
    first = run(pipe, kind, num_inference_steps=6, steps="first third")["json"]
    last = run(pipe, kind, num_inference_steps=6, steps="last third")["json"]
    one = run(pipe, kind, num_inference_steps=6, steps=(2, 4))["json"]
    calls = first["num_steps"]
    assert first["steps"] == list(A.select_steps("first third", calls)) and first["steps"][0] == 0
    assert last["steps"][-1] == calls - 1 and not set(first["steps"]) & set(last["steps"])
    assert one["steps"] == [2, 3] and one["terms"] == 2 * len(one["layers"])
    assert not np.allclose(first["maps"], last["maps"], atol=1e-4)


@pytest.mark.slow  # about 9-14 s a model on 2 busy cores
def test_layer_selection_changes_what_is_aggregated(kind_pipe):
    kind, pipe = kind_pipe
    up = run(pipe, kind, layers="up")["json"]
    mid = run(pipe, kind, layers=["mid"])["json"]
    assert up["layers"] and all(name.startswith("up_blocks.") for name in up["layers"])
    assert mid["layers"] == ["mid_block.attentions.0.transformer_blocks.0.attn2"]
    assert not np.allclose(up["maps"], mid["maps"], atol=1e-4)
    side = run(pipe, kind, layers=4)["json"]  # the tiny UNets' attention runs at 4x4 on an 8x8 latent
    assert side["layers"] and all(min(s) == 4 for s in side["layer_sizes"].values())
    with pytest.raises(ValueError, match="latent pixels a side"):
        run(pipe, kind, layers=16)


def test_bad_selections_are_refused_before_running(kind_pipe):
    kind, pipe = kind_pipe
    before = processor_types(pipe.unet)
    for bad in ("last quarter", (3, 2), (0, 99), 1.5):
        with pytest.raises(ValueError, match="steps"):
            run(pipe, kind, steps=bad)
    with pytest.raises(ValueError, match="Unknown layers"):
        run(pipe, kind, layers="sideways")
    assert processor_types(pipe.unet) == before


def test_select_steps_and_snapshots():
    assert A.select_steps("all", 26) == range(26)
    assert A.select_steps("first third", 26) == range(9)
    assert A.select_steps("last third", 26) == range(17, 26)
    assert A.select_steps(5, 26) == range(5, 6)
    assert A.snapshot_steps(range(26)) == [0, 5, 10, 15, 20, 25]
    assert A.snapshot_steps(range(17, 20)) == [17, 18, 19]
    with pytest.raises(ValueError, match="num_steps"):
        A.select_steps("last third", None)


# ----------------------------------------------------------------------------
# Restoring the processors


def test_processors_restored_after_an_error(kind_pipe):
    kind, pipe = kind_pipe
    originals = pipe.unet.attn_processors
    args, kwargs = unet_inputs(pipe, kind)
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad(), \
            A.record_cross_attention(pipe.unet) as recorder:
        inside = processor_types(pipe.unet)
        pipe.unet(*args, **kwargs)
        raise RuntimeError("boom")
    assert recorder.calls == 1
    assert all(inside[k] == "RecordingAttnProcessor" for k in inside if "attn2" in k)
    assert all(inside[k] == type(originals[k]).__name__ for k in inside if "attn1" in k)
    restored = pipe.unet.attn_processors
    assert all(restored[k] is originals[k] for k in originals)
    assert not pipe.unet._forward_pre_hooks  # the step counter is gone too


def test_batch_that_fits_no_guidance_layout_is_refused(kind_pipe):
    kind, pipe = kind_pipe
    args, kwargs = unet_inputs(pipe, kind, batch=3)
    with pytest.raises(ValueError, match="batch of 3"), torch.no_grad(), \
            A.record_cross_attention(pipe.unet, num_images=1):
        pipe.unet(*args, **kwargs)
    assert "Recording" not in str(processor_types(pipe.unet))


# ----------------------------------------------------------------------------
# Lift, token positions, drawing


def test_lift():
    mask = torch.zeros(8, 8)
    mask[2:6, 2:6] = 1  # a quarter of the image
    assert metrics.lift(torch.ones(8, 8), mask) == pytest.approx(1.0)
    assert metrics.lift(mask * 3, mask) == pytest.approx(4.0)  # all its mass on a quarter: 1 / 0.25
    assert metrics.lift(1 - mask, mask) == pytest.approx(0.0)
    big = mask.repeat_interleave(8, 0).repeat_interleave(8, 1)  # the same mask at image resolution
    assert metrics.lift(mask, big) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        metrics.lift(torch.ones(8, 8), torch.zeros(8, 8))


def test_find_token_positions(kind_pipe):
    _, pipe = kind_pipe
    assert tokenizer.find_token_positions(pipe.tokenizer, "a red ankle boot", "ankle boot") == [3, 4]
    assert tokenizer.find_token_positions(pipe.tokenizer, "a red t-shirt", "t-shirt") == [3, 4, 5]
    with pytest.raises(ValueError):
        tokenizer.find_token_positions(pipe.tokenizer, "a red bag", "boot")


def test_heatmap_overlay_is_brightest_where_the_map_peaks():
    from PIL import Image

    token_map = torch.zeros(8, 8)
    token_map[2, 5] = 1.0
    heat = np.asarray(figures.heatmap_overlay(Image.new("RGB", (64, 64), (128, 128, 128)), token_map), dtype=float)
    assert heat.shape == (256, 256, 3)
    peak, far = heat[2 * 32 + 16, 5 * 32 + 16], heat[6 * 32 + 16, 1 * 32 + 16]
    assert peak.sum() > far.sum() + 200  # pale yellow over the peak, near black far from it
