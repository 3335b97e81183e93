"""The one text-encoding path (app and training) equals diffusers' encode_prompt, and SDXL's add_time_ids
(``engine.txt2img.time_ids``) equal diffusers' _get_add_time_ids."""

from __future__ import annotations

import pytest
import torch

from engine import text_encoding
from engine.txt2img import time_ids


@pytest.fixture(scope="module")
def sd_pipe():
    from diffusers import StableDiffusionPipeline

    from tests.tiny_models import tiny_sd_components

    return StableDiffusionPipeline(**tiny_sd_components(), requires_safety_checker=False)


@pytest.fixture(scope="module")
def sdxl_pipe():
    from diffusers import StableDiffusionXLPipeline

    from tests.tiny_models import tiny_sdxl_components

    return StableDiffusionXLPipeline(**tiny_sdxl_components())


@pytest.mark.parametrize("negative", ["", "blurry, red"])
def test_sd_encode_prompt_equals_diffusers(sd_pipe, negative):
    ours = text_encoding.encode_prompt(sd_pipe, "sd", "a red sneaker on the left", negative, True, 2)
    theirs, theirs_negative = sd_pipe.encode_prompt("a red sneaker on the left", "cpu", 2, True,
                                                    negative_prompt=negative or None)
    assert torch.equal(ours.prompt_embeds, theirs) and torch.equal(ours.negative_prompt_embeds, theirs_negative)
    assert ours.prompt_embeds.shape[:2] == (2, 77)


@pytest.mark.parametrize("negative", ["", "blurry, red"])
def test_sdxl_encode_prompt_equals_diffusers(sdxl_pipe, negative):
    ours = text_encoding.encode_prompt(sdxl_pipe, "sdxl", "a blue bag in the top right corner", negative, True, 1)
    theirs = sdxl_pipe.encode_prompt("a blue bag in the top right corner", device="cpu", num_images_per_prompt=1,
                                     do_classifier_free_guidance=True, negative_prompt=negative or None)
    mine = (ours.prompt_embeds, ours.negative_prompt_embeds, ours.pooled_prompt_embeds,
            ours.negative_pooled_prompt_embeds)
    for a, b in zip(mine, theirs):
        assert torch.equal(a, b)
    if not negative:  # force_zeros_for_empty_prompt: SDXL base's unconditional input is zeros
        assert not ours.negative_prompt_embeds.any()


def test_add_time_ids_equal_diffusers(sdxl_pipe):
    projection = sdxl_pipe.text_encoder_2.config.projection_dim
    ours = time_ids.get_add_time_ids(sdxl_pipe.unet, (64, 48), (8, 16), (64, 64), torch.float32, projection)
    theirs = sdxl_pipe._get_add_time_ids((64, 48), (8, 16), (64, 64), dtype=torch.float32,
                                         text_encoder_projection_dim=projection)
    assert torch.equal(ours, theirs)
    batch = time_ids.add_time_ids(torch.tensor([[16, 16], [64, 64]]), torch.tensor([[0, 0], [16, 8]]), (64, 64))
    assert batch.tolist() == [[16, 16, 0, 0, 64, 64], [64, 64, 16, 8, 64, 64]]


def test_a_mismatched_unet_is_named(sdxl_pipe):
    with pytest.raises(ValueError, match="configs do not match"):
        time_ids.get_add_time_ids(sdxl_pipe.unet, (64, 64), (0, 0), (64, 64), torch.float32, 7)
