"""The refiner's hand-off view (issue 23): base alone, the decoded switch-point latents, base + refiner.

Each picture is checked against diffusers on tiny seeded models: the base alone against
``StableDiffusionXLPipeline``, the switch point against its ``denoising_end`` latents decoded by the VAE, the
refined picture against base + ``StableDiffusionXLImg2ImgPipeline`` (``denoising_start``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.errors import UserError
from engine.txt2img.handoff import HandOff, compare_handoff
from tests.engine.test_refiner import (PROMPT, REFINER, SIZE, TOL, base_preset, max_diff, pipes,  # noqa: F401
                                       refiner_preset, theirs)

STEPS = 10


def hand_off(base, refiner, **kwargs) -> tuple[HandOff, list[dict]]:
    events = list(compare_handoff(base, base_preset(), REFINER, refiner_pipe=refiner, prompt=PROMPT, width=SIZE,
                                  height=SIZE, seed=0, num_inference_steps=STEPS, guidance_scale=5.0, **kwargs))
    return events[-1], events[:-1]


def decoded(vae, latents) -> np.ndarray:
    """diffusers' decode and post-processing: [B, H, W, 3] in [0, 1]."""
    with torch.no_grad():
        image = vae.decode(latents / vae.config.scaling_factor).sample
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("denoising_end", [0.8, 0.63])
def test_the_three_pictures_match_diffusers(pipes, refiner_preset, denoising_end):  # noqa: F811
    base, refiner = pipes
    result, progress = hand_off(base, refiner, denoising_end=denoising_end)
    alone = base(prompt=PROMPT, generator=torch.Generator("cpu").manual_seed(0), width=SIZE, height=SIZE,
                 num_inference_steps=STEPS, guidance_scale=5.0, output_type="np").images
    latents, refined = theirs(base, refiner, denoising_end, guidance_scale=5.0, num_inference_steps=STEPS)
    assert result.base_alone.shape == result.switch_point.shape == result.refined.shape == (1, SIZE, SIZE, 3)
    assert max_diff(result.base_alone, alone) < TOL
    assert max_diff(result.switch_point, decoded(base.vae, latents)) < TOL
    assert max_diff(result.refined, refined) < TOL
    # the switch point is still noisy: it is neither finished picture
    assert max_diff(result.switch_point, result.refined) > 1e-3
    info = result.info
    assert info["base_alone"]["steps"] == STEPS
    assert info["handoff"]["base_steps"] + info["handoff"]["refiner_steps"] == STEPS
    assert info["handoff"]["switch_timestep"] == round(1000 - 1000 * denoising_end)
    stages = info["handoff"]["base_seconds"] + info["handoff"]["refiner_seconds"]
    assert info["handoff_seconds"] == pytest.approx(stages, abs=2e-3)
    assert [e["stage"] for e in progress] == ["base alone"] * STEPS + ["base + refiner"] * STEPS


def test_the_view_needs_a_refiner_and_one_guidance_scale(pipes, refiner_preset):  # noqa: F811
    base, refiner = pipes
    with pytest.raises(UserError, match="Choose a refiner"):
        list(compare_handoff(base, base_preset(), "none", prompt=PROMPT, width=SIZE, height=SIZE))
    with pytest.raises(UserError, match="one guidance scale"):
        list(compare_handoff(base, base_preset(), REFINER, refiner_pipe=refiner, prompt=PROMPT, width=SIZE,
                             height=SIZE, guidance_scales=[1.0, 2.0]))
    with pytest.raises(UserError, match="denoising_end"):
        list(compare_handoff(base, base_preset(), REFINER, refiner_pipe=refiner, prompt=PROMPT, width=SIZE,
                             height=SIZE, denoising_end=1.5))


def test_the_shipped_mini_refiner_hands_off_from_the_shipped_mini_sdxl():
    """assets/mini-sdxl-refiner loads through the cached loader with mini-SDXL's own text_encoder_2 and VAE, and
    the hand-off gives three pictures from one seed (the refiner's share is 5 of 25 steps at 0.8)."""
    from engine import loader
    from engine.presets import get_preset

    loader.clear()
    try:
        preset = get_preset("mini-SDXL (offline)", "sdxl")
        base = loader.load(preset, device="cpu")
        refiner = loader.load("mini-SDXL refiner (offline)", "sdxl-refiner", device="cpu")
        assert refiner.text_encoder_2 is base.text_encoder_2 and refiner.vae is base.vae
        result = list(compare_handoff(base, preset, "mini-SDXL refiner (offline)", prompt="a red bag", width=64,
                                      height=64, seed=3, num_inference_steps=25, guidance_scale=2.0))[-1]
    finally:
        loader.clear()
    assert result.info["handoff"]["base_steps"] == 20 and result.info["handoff"]["refiner_steps"] == 5
    assert max_diff(result.switch_point, result.refined) > 0.01  # the hand-off latents are still noisy
    assert 0 < max_diff(result.base_alone, result.refined)  # the refiner's steps are its own
