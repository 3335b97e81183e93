"""CLIP guidance (issue 22): the gradient, a guided step, scale 0 as the plain loop, the checks, the loaders.

On tiny seeded models: the tiny SD pipeline of ``tests.tiny_models`` and a tiny
``MiniImageEncoder`` (or a tiny transformers ``CLIPModel`` built from a config,
the hub path), saved to a folder and loaded through ``engine.loader``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.clip_image import HubCLIP, MiniImageEncoder
from engine.errors import UserError
from engine.presets import Preset
from engine.txt2img import clip_guidance as cg
from engine.txt2img import make_request, run_to_end, text_to_image
from engine.noise_schedule import pred_original_sample
from tests.engine.test_txt2img import sd_pipe  # noqa: F401 - the tiny SD pipeline fixture

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a red sneaker"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tower_dir(tmp_path_factory, sd_pipe):
    """A tiny seeded mini tower (text side: the tiny pipeline's 32-wide encoder), saved as it ships."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tower") / "image_encoder"
    MiniImageEncoder(width=8, embed_dim=16, text_dim=sd_pipe.text_encoder.config.hidden_size).save(folder)
    return folder


def preset(clip_model=None) -> Preset:
    options = {"min_size": 32, "max_size": 256, "default_size": 64}
    if clip_model is not None:
        options["clip_model"] = str(clip_model)
    return Preset(name="tiny-sd", kind="sd", path="/nonexistent", options=options)


def step_inputs(pipe, t_index: int = 1):
    """Seeded latents [1, 4, 8, 8], the UNet's eps and the timestep, DDIM with 4 steps."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(4)
    t = scheduler.timesteps[t_index]
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = pipe.text_encoder(pipe.tokenizer([PROMPT], padding="max_length", return_tensors="pt").input_ids)[0]
        eps = pipe.unet(latents, t, encoder_hidden_states=hidden).sample
    return scheduler, latents, eps, t


def test_guided_step_has_a_gradient_and_raises_the_clip_score(sd_pipe, tower_dir):
    encoder = MiniImageEncoder.from_folder(tower_dir)
    scheduler, latents, eps, t = step_inputs(sd_pipe)
    text = cg.prompt_clip_embeds(sd_pipe, encoder, PROMPT, 1)
    with torch.no_grad():
        before = cg.clip_score(encoder, sd_pipe.vae, pred_original_sample(scheduler, latents, eps, t), text)
    guided, loss = cg.clip_guidance(sd_pipe.vae, scheduler, encoder, latents, eps, t, text, scale=20.0)
    assert loss > 0 and float((guided - eps).abs().max()) > 0  # a non-zero gradient moved eps
    with torch.no_grad():
        after = cg.clip_score(encoder, sd_pipe.vae, pred_original_sample(scheduler, latents, guided, t), text)
    assert float(after) > float(before), (float(before), float(after))
    assert not any(p.requires_grad for p in encoder.parameters())  # the tower stays frozen


def test_scale_zero_gives_the_plain_loop_byte_for_byte(sd_pipe):
    from engine import loader

    run = dict(prompt=PROMPT, num_inference_steps=3, width=64, height=64, seed=0, guidance_scale=1.0,
               preview_every=0)
    plain = run_to_end(text_to_image(sd_pipe, preset(), **run))
    loaded = dict(loader.load_count)
    off = run_to_end(text_to_image(sd_pipe, preset(), clip_guidance_scale=0, **run))
    assert np.array_equal(plain.images, off.images)
    assert loader.load_count == loaded  # no image model was loaded for scale 0
    assert "clip_loss" not in off.info and "clip_guidance_scale" not in off.info


def test_the_loop_with_clip_guidance_loads_the_tower_once_and_changes_the_image(sd_pipe, tower_dir):
    run = dict(prompt=PROMPT, num_inference_steps=3, width=64, height=64, seed=0, guidance_scale=2.0,
               preview_every=0)
    plain = run_to_end(text_to_image(sd_pipe, preset(tower_dir), **run))
    guided = run_to_end(text_to_image(sd_pipe, preset(tower_dir), clip_guidance_scale=200, **run))
    assert not np.array_equal(plain.images, guided.images)
    assert len(guided.info["clip_loss"]) == guided.info["timesteps"] and guided.info["clip_guidance_scale"] == 200
    assert guided.parameters[0]["settings"]["CLIP guidance"] == "200"


@pytest.mark.parametrize("value", [-1, 1000.5, "abc", float("nan"), float("inf")])
def test_bad_scales_are_user_errors_naming_the_parameter(value):
    with pytest.raises(UserError, match=r"clip_guidance_scale must be (between 0 and 1000|a number)"):
        make_request(preset(), prompt=PROMPT, width=64, height=64, clip_guidance_scale=value)
    assert make_request(preset(), prompt=PROMPT, width=64, height=64, clip_guidance_scale=None).clip_guidance_scale == 0


def test_a_local_model_without_an_image_model_says_so():
    with pytest.raises(UserError, match="clip_guidance_scale"):
        cg.image_encoder_preset(preset())
    hub = Preset(name="SD 1.5", kind="sd", repo="stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert cg.image_encoder_preset(hub).repo == "openai/clip-vit-base-patch32"
    named = Preset(name="SD", kind="sd", repo="x/y", options={"clip_model": "laion/some-clip"})
    assert cg.image_encoder_preset(named).repo == "laion/some-clip"


def test_a_hub_style_clip_model_guides_through_the_same_step(sd_pipe, tmp_path):
    """The Space's path (transformers' ``CLIPModel``), on a tiny CLIP built from a config and saved to a folder."""
    from transformers import CLIPConfig, CLIPModel

    from engine import loader

    text = dict(vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=77, eos_token_id=49407, bos_token_id=49406, pad_token_id=49407)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(tmp_path / "clip")
    encoder = loader.load(cg.image_encoder_preset(preset(tmp_path / "clip")), device="cpu")
    assert isinstance(encoder, HubCLIP)
    scheduler, latents, eps, t = step_inputs(sd_pipe)
    embeds = cg.prompt_clip_embeds(sd_pipe, encoder, PROMPT, 1)
    assert embeds.shape == (1, 8) and torch.allclose(embeds.norm(dim=-1), torch.ones(1))
    guided, loss = cg.clip_guidance(sd_pipe.vae, scheduler, encoder, latents, eps, t, embeds, scale=10.0)
    assert loss > 0 and float((guided - eps).abs().max()) > 0


@pytest.mark.slow
def test_training_script_smoke_run_ships_a_loadable_tower(tmp_path):
    from engine.fashion.data import DatasetMissing, load_split

    try:
        load_split("test")
    except DatasetMissing:
        pytest.skip("Fashion-MNIST is not installed")
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    import train_clip_tower

    info = train_clip_tower.main(["--smoke", "--out", str(tmp_path / "run"), "--threads", "1"])
    folder = tmp_path / "run" / "image_encoder"
    assert (folder / "README.md").exists() and set(info["retrieval_by_level"]) == {"0", "0.25", "0.5", "0.75", "1"}
    assert MiniImageEncoder.from_folder(folder).config["width"] == 8
