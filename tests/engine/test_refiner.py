"""SDXL's refiner (issue 23): our hand-off against diffusers' two pipelines, on tiny seeded models on CPU.

diffusers' "ensemble of expert denoisers" recipe: ``StableDiffusionXLPipeline(..., denoising_end=f,
output_type="latent")``, then ``StableDiffusionXLImg2ImgPipeline(image=latents, denoising_start=f)``, each given
a CPU generator seeded with the same seed. ``engine.txt2img`` with ``refiner`` and ``denoising_end`` must give
the same pixels within 1e-4.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine import loader
from engine.errors import UserError
from engine.presets import Preset
from engine.txt2img import make_request, run_to_end, text_to_image

TOL = 1e-4
SIZE = 64
PROMPT = "An oil painting of a collie in a top hat"
BASE = "tiny-sdxl"
REFINER = "tiny refiner (test)"


@pytest.fixture(scope="module")
def pipes():
    from diffusers import StableDiffusionXLPipeline

    from tests.tiny_models import tiny_sdxl_components, tiny_sdxl_refiner

    base = StableDiffusionXLPipeline(**tiny_sdxl_components())
    base.set_progress_bar_config(disable=True)
    return base, tiny_sdxl_refiner(base)


@pytest.fixture
def refiner_preset(tmp_path, monkeypatch):
    """A refiner preset paired with the test's base preset (the pipeline itself is passed in)."""
    presets = tmp_path / "presets.json"
    presets.write_text(json.dumps([{"name": REFINER, "kind": "sdxl-refiner", "path": str(tmp_path), "base": BASE}]))
    monkeypatch.setenv("EXPLORER_MODELS", str(presets))


def base_preset(name: str = BASE, kind: str = "sdxl") -> Preset:
    return Preset(name=name, kind=kind, path="/nonexistent", options={"min_size": 32, "max_size": 256})


def theirs(base, refiner, denoising_end, seed=0, **kwargs):
    kwargs.update(prompt=PROMPT, num_inference_steps=kwargs.get("num_inference_steps", 10))
    latents = base(generator=torch.Generator("cpu").manual_seed(seed), width=SIZE, height=SIZE,
                   denoising_end=denoising_end, output_type="latent", **kwargs).images
    images = refiner(image=latents, generator=torch.Generator("cpu").manual_seed(seed), denoising_start=denoising_end,
                     output_type="np", **kwargs).images
    return latents, images


def ours(base, refiner_pipe, **kwargs):
    kwargs.setdefault("num_inference_steps", 10)
    return run_to_end(text_to_image(base, base_preset(), refiner_pipe=refiner_pipe, prompt=PROMPT, width=SIZE,
                                    height=SIZE, seed=0, **kwargs))


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


@pytest.mark.parametrize("guidance_scale, denoising_end", [(1.0, 0.8), (5.0, 0.8), (5.0, 0.63)])
def test_hand_off_matches_diffusers_base_then_refiner(pipes, refiner_preset, guidance_scale, denoising_end):
    base, refiner = pipes
    _, ref = theirs(base, refiner, denoising_end, guidance_scale=guidance_scale)
    got = ours(base, refiner, guidance_scale=guidance_scale, refiner=REFINER, denoising_end=denoising_end)
    assert got.images.shape == ref.shape == (1, SIZE, SIZE, 3)
    assert max_diff(got.images, ref) < TOL
    # 10 leading-spaced steps: 901 .. 1; the switch timestep is round(1000 - 1000 f)
    details = got.info["refiner"]
    cutoff = round(1000 - 1000 * denoising_end)
    assert details["switch_timestep"] == cutoff
    assert details["base_steps"] == sum(t >= cutoff for t in range(901, 0, -100))
    assert details["base_steps"] + details["refiner_steps"] == got.info["timesteps"] == 10
    assert details["add_time_ids"] == [SIZE, SIZE, 0, 0, 6.0]
    assert details["negative_add_time_ids"] == [SIZE, SIZE, 0, 0, 2.5]
    assert details["base_seconds"] > 0 and details["refiner_seconds"] > 0
    assert got.parameters[0]["settings"]["Refiner"] == REFINER


def test_the_refiner_changes_the_picture_and_the_sampler_carries_over(pipes, refiner_preset):
    """With an ancestral sampler the refiner's fresh seeded generator matters: still diffusers' result."""
    from engine.schedulers import make_scheduler

    base, refiner = pipes
    plain = ours(base, None, guidance_scale=5.0)
    refined = ours(base, refiner, guidance_scale=5.0, refiner=REFINER, scheduler="Euler ancestral")
    originals = base.scheduler, refiner.scheduler
    base.scheduler = make_scheduler(originals[0], "Euler ancestral")
    refiner.scheduler = make_scheduler(originals[1], "Euler ancestral")
    try:
        _, ref = theirs(base, refiner, 0.8, guidance_scale=5.0, negative_prompt="blurry")
        got = ours(base, refiner, guidance_scale=5.0, refiner=REFINER, scheduler="Euler ancestral",
                   negative_prompt="blurry")
    finally:
        base.scheduler, refiner.scheduler = originals
    assert max_diff(got.images, ref) < TOL
    assert max_diff(plain.images, refined.images) > 1e-3
    assert "refiner" not in plain.info


def test_the_refiner_loads_through_the_cached_loader_sharing_the_base_parts(tmp_path, monkeypatch):
    """A refiner folder with only its UNet and scheduler loads as a StableDiffusionXLImg2ImgPipeline whose
    text_encoder_2, tokenizer_2 and VAE are the paired base's very objects."""
    from tests.tiny_models import save_tiny_sdxl, save_tiny_sdxl_refiner

    base_dir = save_tiny_sdxl(tmp_path / "tiny-sdxl")
    save_tiny_sdxl_refiner(tmp_path / "tiny-refiner", base_dir)
    presets = tmp_path / "presets.json"
    presets.write_text(json.dumps([
        {"name": "tiny-SDXL (test)", "kind": "sdxl", "path": str(base_dir), "min_size": 32, "max_size": 256},
        {"name": REFINER, "kind": "sdxl-refiner", "path": str(tmp_path / "tiny-refiner"), "base": "tiny-SDXL (test)"},
    ]))
    monkeypatch.setenv("EXPLORER_MODELS", str(presets))
    loader.clear()
    try:
        refiner = loader.load(REFINER, "sdxl-refiner", device="cpu")
        base = loader.load("tiny-SDXL (test)", "sdxl", device="cpu")
        assert type(refiner).__name__ == "StableDiffusionXLImg2ImgPipeline"
        assert refiner.text_encoder_2 is base.text_encoder_2 and refiner.vae is base.vae
        assert refiner.config.requires_aesthetics_score and refiner.text_encoder is None
        preset = base_preset("tiny-SDXL (test)")
        loaded = run_to_end(text_to_image(base, preset, prompt=PROMPT, width=SIZE, height=SIZE, num_inference_steps=4,
                                          refiner=REFINER, guidance_scale=2.0))
        given = run_to_end(text_to_image(base, preset, refiner_pipe=refiner, prompt=PROMPT, width=SIZE, height=SIZE,
                                         num_inference_steps=4, refiner=REFINER, guidance_scale=2.0))
        assert max_diff(loaded.images, given.images) == 0
        assert loaded.info["refiner"]["model"] == REFINER
    finally:
        loader.clear()


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.2, "soon", float("nan")])
def test_denoising_end_out_of_range_is_refused_naming_it(refiner_preset, value):
    with pytest.raises(UserError, match="denoising_end"):
        make_request(base_preset(), prompt="x", width=SIZE, height=SIZE, refiner=REFINER, denoising_end=value)


def test_a_bad_refiner_name_is_refused_with_the_choices(refiner_preset):
    with pytest.raises(UserError, match=r"Unknown refiner 'nope'.*'none', 'tiny refiner \(test\)'"):
        make_request(base_preset(), prompt="x", width=SIZE, height=SIZE, refiner="nope")
    # a refiner is paired with its base: another model cannot use it
    with pytest.raises(UserError, match="Unknown refiner"):
        make_request(base_preset("other SDXL"), prompt="x", width=SIZE, height=SIZE, refiner=REFINER)
    request = make_request(base_preset(), prompt="x", width=SIZE, height=SIZE, refiner="none")
    assert request.refiner is None and request.denoising_end == 0.8


def test_the_shipped_sdxl_refiner_is_paired_with_sdxl_base(monkeypatch):
    from engine.presets import get_preset
    from engine.txt2img.request import refiner_choices

    monkeypatch.delenv("EXPLORER_MODELS", raising=False)
    refiner = get_preset("SDXL refiner 1.0", "sdxl-refiner")
    assert refiner.repo == "stabilityai/stable-diffusion-xl-refiner-1.0" and refiner.options["base"] == "SDXL base 1.0"
    assert refiner_choices(get_preset("SDXL base 1.0", "sdxl")) == ["none", "SDXL refiner 1.0"]
