"""Our sampling loop against the diffusers pipelines, on tiny seeded components on CPU.

Equivalence is the proof: with the same components and seed, ``engine.txt2img``
must give the same images as ``StableDiffusionPipeline`` /
``StableDiffusionXLPipeline`` (output_type="np") within 1e-4.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine import text_encoding, txt2img
from engine.txt2img import latents as t2i_latents
from engine.txt2img import pipeline
from engine.presets import Preset
from engine.txt2img import run_to_end, text_to_image

TOL = 1e-4
SIZE = 64
PROMPT = "An oil painting of a collie in a top hat"


@pytest.fixture(scope="module")
def sd_pipe():
    from diffusers import StableDiffusionPipeline

    from tests.tiny_models import tiny_sd_components

    pipe = StableDiffusionPipeline(**tiny_sd_components(), requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sdxl_pipe():
    from diffusers import StableDiffusionXLPipeline

    from tests.tiny_models import tiny_sdxl_components

    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def preset(kind: str, **options) -> Preset:
    opts = {"min_size": 32, "max_size": 256, "default_size": 64}
    opts.update(options)
    return Preset(name=f"tiny-{kind}", kind=kind, path="/nonexistent", options=opts)


def ours(pipe, kind, **kwargs):
    kwargs.setdefault("prompt", PROMPT)
    kwargs.setdefault("num_inference_steps", 3)
    kwargs.setdefault("width", SIZE)
    kwargs.setdefault("height", SIZE)
    kwargs.setdefault("seed", 0)
    return run_to_end(text_to_image(pipe, preset(kind, **kwargs.pop("options", {})), **kwargs))


def theirs(pipe, seed=0, **kwargs):
    kwargs.setdefault("prompt", PROMPT)
    kwargs.setdefault("num_inference_steps", 3)
    kwargs.setdefault("width", SIZE)
    kwargs.setdefault("height", SIZE)
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(generator=generator, output_type="np", **kwargs).images


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


# ----------------------------------------------------------------------------
# Equivalence with diffusers


@pytest.mark.parametrize("guidance_scale", [1.0, 7.5])
@pytest.mark.parametrize("negative_prompt", ["", "blurry, low quality"])
def test_sd_matches_diffusers(sd_pipe, guidance_scale, negative_prompt):
    ref = theirs(sd_pipe, guidance_scale=guidance_scale, negative_prompt=negative_prompt or None)
    got = ours(sd_pipe, "sd", guidance_scale=guidance_scale, negative_prompt=negative_prompt)
    assert got.images.shape == ref.shape == (1, SIZE, SIZE, 3)
    assert max_diff(got.images, ref) < TOL


@pytest.mark.parametrize("guidance_scale", [1.0, 7.5])
@pytest.mark.parametrize("negative_prompt", ["", "blurry, low quality"])
def test_sdxl_matches_diffusers(sdxl_pipe, guidance_scale, negative_prompt):
    ref = theirs(sdxl_pipe, guidance_scale=guidance_scale, negative_prompt=negative_prompt or None)
    got = ours(sdxl_pipe, "sdxl", guidance_scale=guidance_scale, negative_prompt=negative_prompt)
    assert max_diff(got.images, ref) < TOL


def test_sdxl_micro_conditioning_matches_diffusers(sdxl_pipe):
    # our text takes W,H and x,y; diffusers (and our tuples) take (h, w) and (top, left)
    ref = theirs(sdxl_pipe, guidance_scale=5.0, original_size=(40, 200), crops_coords_top_left=(16, 8),
                 target_size=(64, 48), negative_original_size=(32, 32), negative_crops_coords_top_left=(0, 0),
                 negative_target_size=(64, 64))
    got = ours(sdxl_pipe, "sdxl", guidance_scale=5.0, original_size="200,40", crops_coords_top_left="8,16",
               target_size="48,64", negative_original_size="32,32", negative_crops_coords_top_left="0,0",
               negative_target_size="64,64")
    assert got.info["add_time_ids"] == [40, 200, 16, 8, 64, 48]
    assert got.info["negative_add_time_ids"] == [32, 32, 0, 0, 64, 64]
    assert max_diff(got.images, ref) < TOL


def test_original_size_reaches_the_unet_as_diffusers_height_width(sdxl_pipe):
    """Issue 24: on non-square sizes, the text "W,H" / "x,y" (the UI's, width first) and diffusers' own
    (height, width) / (top, left) tuples both give diffusers' ``_get_add_time_ids``, never a transposed size;
    left empty, both sizes are the image's (height, width)."""
    from engine.txt2img.time_ids import prepare_add_time_ids

    projection = sdxl_pipe.text_encoder_2.config.projection_dim

    def diffusers_ids(original_size, crop, target_size):
        return sdxl_pipe._get_add_time_ids(original_size, crop, target_size, dtype=torch.float32,
                                           text_encoder_projection_dim=projection)

    def engine_ids(width, height, **sizes):
        request = txt2img.make_request(preset("sdxl"), prompt=PROMPT, width=width, height=height, **sizes)
        return prepare_add_time_ids(sdxl_pipe, request, torch.float32)[0]

    expected = diffusers_ids((40, 200), (16, 8), (64, 48))
    assert torch.equal(engine_ids(SIZE, SIZE, original_size="200,40", crops_coords_top_left="8,16",
                                  target_size="48x64"), expected)
    assert torch.equal(engine_ids(SIZE, SIZE, original_size=(40, 200), crops_coords_top_left=(16, 8),
                                  target_size=(64, 48)), expected)
    assert torch.equal(engine_ids(64, 32), diffusers_ids((32, 64), (0, 0), (32, 64)))


@pytest.mark.parametrize("scheduler", ["Euler ancestral", "DPM-Solver++ 2M (Karras)"])
def test_other_schedulers_match_diffusers(sd_pipe, scheduler):
    from engine.schedulers import make_scheduler

    original = sd_pipe.scheduler
    sd_pipe.scheduler = make_scheduler(original, scheduler)
    try:
        ref = theirs(sd_pipe, guidance_scale=7.5, num_images_per_prompt=2)
    finally:
        sd_pipe.scheduler = original
    got = ours(sd_pipe, "sd", guidance_scale=7.5, scheduler=scheduler, num_images=2)
    assert got.images.shape == (2, SIZE, SIZE, 3)
    assert max_diff(got.images, ref) < TOL


def test_img2img_matches_diffusers(sd_pipe):
    from diffusers import StableDiffusionImg2ImgPipeline

    image = _test_image()
    pipe = StableDiffusionImg2ImgPipeline(**sd_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(3)
    ref = pipe(prompt=PROMPT, image=image, strength=0.6, num_inference_steps=5, guidance_scale=7.5,
               generator=generator, output_type="np").images
    got = ours(sd_pipe, "sd", image=image, strength=0.6, num_inference_steps=5, guidance_scale=7.5, seed=3)
    assert got.info["timesteps"] == len(pipe.scheduler.timesteps) - 2  # 3 of 5 steps, PNDM's extra one
    assert max_diff(got.images, ref) < TOL


# ----------------------------------------------------------------------------
# Behaviour


def count_unet_calls(pipe, monkeypatch) -> list:
    calls = []
    forward = pipe.unet.forward

    def counting(sample, *args, **kwargs):
        calls.append(sample.shape[0])
        return forward(sample, *args, **kwargs)

    monkeypatch.setattr(pipe.unet, "forward", counting)
    return calls


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_guidance_one_makes_one_unet_pass_per_step(sd_pipe, sdxl_pipe, kind, monkeypatch):
    pipe = sd_pipe if kind == "sd" else sdxl_pipe
    calls = count_unet_calls(pipe, monkeypatch)
    result = ours(pipe, kind, guidance_scale=1.0, scheduler="Euler", num_inference_steps=4)
    assert calls == [1, 1, 1, 1]  # four steps, one image each, no unconditional half
    assert result.info["unet_calls"] == 4 and result.info["classifier_free_guidance"] is False
    calls.clear()
    ours(pipe, kind, guidance_scale=7.5, scheduler="Euler", num_inference_steps=4)
    assert calls == [2, 2, 2, 2]  # one batched call for [uncond, cond] per step


def test_seed_reproducibility(sd_pipe):
    a = ours(sd_pipe, "sd", guidance_scale=7.5, seed=123)
    b = ours(sd_pipe, "sd", guidance_scale=7.5, seed=123)
    c = ours(sd_pipe, "sd", guidance_scale=7.5, seed=124)
    assert np.array_equal(a.images, b.images)
    assert max_diff(a.images, c.images) > 1e-3


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_negative_prompt_changes_output(sd_pipe, sdxl_pipe, kind):
    pipe = sd_pipe if kind == "sd" else sdxl_pipe
    a = ours(pipe, kind, prompt="A dog wearing a white hat", guidance_scale=7.5)
    b = ours(pipe, kind, prompt="A dog wearing a white hat", negative_prompt="a white hat", guidance_scale=7.5)
    assert max_diff(a.images, b.images) > 1e-4


def test_sdxl_crop_and_original_size_change_time_ids_and_output(sdxl_pipe):
    base = ours(sdxl_pipe, "sdxl", guidance_scale=5.0)
    assert base.info["add_time_ids"] == [64, 64, 0, 0, 64, 64]  # diffusers' defaults: (h, w), (0, 0), (h, w)
    moved = ours(sdxl_pipe, "sdxl", guidance_scale=5.0, original_size="256,128", crops_coords_top_left="32,0")
    assert moved.info["add_time_ids"] == [128, 256, 0, 32, 64, 64]
    assert max_diff(base.images, moved.images) > 1e-5
    # a negative condition left empty is the positive one
    partial = ours(sdxl_pipe, "sdxl", guidance_scale=5.0, crops_coords_top_left="32,0", negative_original_size="48,40")
    assert partial.info["negative_add_time_ids"] == [40, 48, 0, 32, 64, 64]


def test_step_states_carry_latents_and_x0(sd_pipe):
    events = list(text_to_image(sd_pipe, preset("sd"), prompt=PROMPT, num_inference_steps=3, width=SIZE,
                                height=SIZE, scheduler="DDIM", preview_every=2))
    steps = [e for e in events if isinstance(e, dict)]
    assert [e["step"] for e in steps] == [1, 2, 3]
    assert [e["preview"] is not None for e in steps] == [True, False, True]  # every 2nd step, and the last
    assert steps[0]["preview"].size == (SIZE, SIZE)


def test_previews_are_paced_by_the_clock_and_the_last_step_always_has_one(sd_pipe):
    from engine.txt2img.pipeline import show_preview

    paced = txt2img.make_request(preset("sd"), prompt=PROMPT, width=SIZE, height=SIZE, preview_seconds=0.3)
    assert show_preview(paced, 0, 25, math.inf)  # the first step: nothing shown yet
    assert not show_preview(paced, 1, 25, 0.05)  # too soon after the last preview
    assert show_preview(paced, 2, 25, 0.31)
    assert show_preview(paced, 24, 25, 0.0)  # the last step, however soon
    off = txt2img.make_request(preset("sd"), prompt=PROMPT, width=SIZE, height=SIZE, preview_every=0,
                                preview_seconds=0.3)
    assert not show_preview(off, 24, 25, math.inf)
    # a whole run with a pacing longer than the run: previews only at the first and the last step
    events = list(text_to_image(sd_pipe, preset("sd"), prompt=PROMPT, num_inference_steps=4, width=SIZE,
                                height=SIZE, scheduler="DDIM", preview_seconds=3600))
    assert [e["preview"] is not None for e in events if isinstance(e, dict)] == [True, False, False, True]


def test_predict_x0_inverts_add_noise():
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    from engine.noise_schedule import pred_original_sample

    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    config = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    for scheduler in (DDIMScheduler(**config), EulerDiscreteScheduler(**config)):
        scheduler.set_timesteps(10)
        t = scheduler.timesteps[3]
        if scheduler.init_noise_sigma > 1:  # Euler: x = x0 + sigma eps
            x = x0 + scheduler.sigmas[3] * eps
            scheduler._step_index = 3
        else:
            x = scheduler.add_noise(x0, eps, t.view(1))
        assert torch.allclose(pred_original_sample(scheduler, x, eps, t), x0, atol=1e-4)


def test_guidance_sweep_reuses_embeddings(sd_pipe, monkeypatch):
    calls = []
    encode = text_encoding.encode_prompt
    monkeypatch.setattr(pipeline, "encode_prompt", lambda *a, **k: calls.append(1) or encode(*a, **k))
    result = ours(sd_pipe, "sd", guidance_scales=[1, 2, 4, 12])
    assert len(calls) == 1
    assert result.images.shape == (4, SIZE, SIZE, 3)
    assert [r["guidance_scale"] for r in result.info["sweep"]] == [1, 2, 4, 12]
    single = ours(sd_pipe, "sd", guidance_scale=4)
    assert max_diff(result.images[2:3], single.images) < TOL  # the same image as a single run at g=4
    assert max_diff(result.images[0], result.images[3]) > 1e-4


def test_img2img_strength_zero_is_the_vae_round_trip(sd_pipe):
    image = _test_image()
    got = ours(sd_pipe, "sd", image=image, strength=0.0, guidance_scale=7.5, seed=5)
    assert got.info["unet_calls"] == 0 and got.info["timesteps"] == 0
    # Nothing is denoised: the output is the input through the VAE (encode, sample, decode).
    from engine.images import pil_to_tensor

    generator = torch.Generator("cpu").manual_seed(5)
    latents = t2i_latents.encode_image(sd_pipe, "sd", pil_to_tensor(image), generator)
    expected, _ = t2i_latents.decode_latents(sd_pipe, "sd", latents)
    assert max_diff(got.images, expected) < TOL
    # ...and further from it as strength grows
    half = ours(sd_pipe, "sd", image=image, strength=0.5, guidance_scale=7.5, seed=5)
    assert max_diff(half.images, expected) > 1e-3


def test_img2img_strength_zero_returns_roughly_the_input_with_an_identity_vae():
    """With a VAE that reconstructs perfectly, strength 0 gives the input image back."""
    from diffusers import StableDiffusionPipeline

    from tests.tiny_models import tiny_sd_components

    pipe = StableDiffusionPipeline(**tiny_sd_components(), requires_safety_checker=False)
    pipe.vae = IdentityVAE()
    image = _test_image()
    got = ours(pipe, "sd", image=image, strength=0.0, seed=1)
    expected = np.asarray(image, dtype=np.float32) / 255
    assert max_diff(got.images[0], expected) < 1 / 255 + 1e-4


def test_colour_guidance_moves_mean_colour_towards_target(sd_pipe):
    target = np.array([0.0, 0.0, 1.0])  # blue
    plain = ours(sd_pipe, "sd", guidance_scale=1.0, scheduler="DDIM", num_inference_steps=4)
    guided = ours(sd_pipe, "sd", guidance_scale=1.0, scheduler="DDIM", num_inference_steps=4, colour="#0000ff",
                  colour_scale=500.0, colour_every=1)
    before = np.abs(plain.images.mean(axis=(0, 1, 2)) - target).mean()
    after = np.abs(guided.images.mean(axis=(0, 1, 2)) - target).mean()
    assert after < before - 0.01, (before, after)
    assert len(guided.info["colour_loss"]) == 4


def test_safety_checker_blacks_out_flagged_images(sd_pipe):
    """SD 1.x presets ship a safety checker: a flagged image comes back black, the others untouched."""
    from types import SimpleNamespace

    seen = {}

    def feature_extractor(images, return_tensors="pt"):
        seen["images"] = len(images)
        return _Batch(torch.zeros(len(images), 3, 4, 4))

    def safety_checker(images, clip_input):
        flags = [False, True]
        images = images.clone()
        images[1] = 0.0  # diffusers' checker zeroes flagged images in [-1, 1] space
        return images, flags

    pipe = SimpleNamespace(vae=sd_pipe.vae, safety_checker=safety_checker, feature_extractor=feature_extractor)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    images, flags = t2i_latents.decode_latents(pipe, "sd", latents)
    plain, none = t2i_latents.decode_latents(SimpleNamespace(vae=sd_pipe.vae), "sd", latents)
    assert flags == [False, True] and none is None and seen["images"] == 2
    assert np.array_equal(images[0], plain[0])
    assert images[1].max() == 0.0 and plain[1].max() > 0.1


class _Batch:
    def __init__(self, pixel_values):
        self.pixel_values = pixel_values

    def to(self, device):
        return self


def test_long_prompt_warns_with_the_cut_text(sd_pipe):
    prompt = " ".join(["collie"] * 80) + " wearing a purple umbrella"
    result = ours(sd_pipe, "sd", prompt=prompt, guidance_scale=1.0, num_inference_steps=1)
    warning = result.info["warnings"][0]
    assert "77" in warning and "purple umbrella" in warning


# ----------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("kwargs, message", [
    ({"width": 60}, "multiple of 8"),
    ({"height": 512}, "outside 32-256"),
    ({"width": 16}, "outside 32-256"),
    ({"num_inference_steps": 0}, "between 1 and"),
    ({"num_inference_steps": 100000}, "between 1 and"),
    ({"num_inference_steps": 2.5}, "whole number"),
    ({"guidance_scale": float("nan")}, "guidance_scale"),
    ({"guidance_scale": -1}, "guidance_scale"),
    ({"guidance_scale": "lots"}, "guidance_scale"),
    ({"num_images": 0}, "num_images"),
    ({"seed": -3}, "seed"),
    ({"strength": 1.5, "image": "IMAGE"}, "strength"),
    ({"strength": -0.1, "image": "IMAGE"}, "strength"),
    ({"strength": 1e12}, "strength must be between 0 and 1"),  # checked even without an image (an API value)
    ({"colour_every": 0}, "colour_every must be between 1 and 150, got 0"),  # checked with colour guidance off
    ({"colour_scale": -1, "colour": "#ff0000"}, "colour_scale must be between 0 and 1000"),
    ({"guidance_scale": 1e12}, "guidance_scale must be between 0 and 50"),
    ({"width": 64.5}, "width must be a whole number of pixels from 32 to 256"),
    ({"scheduler": "LMS"}, "Unknown scheduler"),
    ({"original_size": "1024"}, "original_size"),
    ({"colour": "#12", "colour_scale": 10}, "Colour"),
    ({"guidance_scales": "1, two"}, "guidance list"),
])
def test_bad_input_names_the_problem(sd_pipe, kwargs, message):
    if kwargs.get("image") == "IMAGE":
        kwargs["image"] = _test_image()
    kind = "sdxl" if "original_size" in kwargs else "sd"
    with pytest.raises(ValueError, match=message):
        ours(sd_pipe, kind, **kwargs)


def test_turbo_style_preset_refuses_guidance(sd_pipe):
    with pytest.raises(ValueError, match="takes no guidance"):
        ours(sd_pipe, "sd", guidance_scale=7.5, options={"guidance": False, "guidance_note": "Distilled."})
    assert ours(sd_pipe, "sd", guidance_scale=0.0, num_inference_steps=1,
                options={"guidance": False}).info["unet_calls"] == 1


def test_out_of_memory_frees_cache_and_says_what_to_lower(sd_pipe, monkeypatch):
    freed = []
    monkeypatch.setattr(pipeline, "free_memory", lambda: freed.append(1))

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(pipeline, "decode_latents", oom)
    with pytest.raises(ValueError, match="lower the size or the number of images"):
        ours(sd_pipe, "sd", num_inference_steps=1)
    assert freed == [1]


def test_gpu_seconds_grows_with_work():
    small = txt2img.gpu_seconds(None, None, num_inference_steps=4, width=512, height=512)
    big = txt2img.gpu_seconds(None, None, num_inference_steps=50, width=1024, height=1024, num_images=4)
    assert 15 <= small < big <= 300
    assert txt2img.gpu_seconds(None, None, num_inference_steps="x") == 60


# ----------------------------------------------------------------------------
# Through the loader, as the app does


def test_runs_on_a_preset_loaded_by_the_loader(tiny_presets):
    from engine.loader import load
    from engine.presets import get_preset

    p = get_preset("tiny-SDXL (test)", "sdxl")
    pipe = load(p)
    result = run_to_end(text_to_image(pipe, p, prompt=PROMPT, num_inference_steps=2, width=64, height=64,
                                      guidance_scale=5.0))
    assert result.images.shape == (1, 64, 64, 3)
    assert math.isfinite(float(result.images.mean()))
    assert result.info["add_time_ids"] == [64, 64, 0, 0, 64, 64]


# ----------------------------------------------------------------------------
# Helpers


def _test_image():
    from PIL import Image

    x = np.linspace(0, 255, SIZE, dtype=np.float32)
    arr = np.stack([np.tile(x, (SIZE, 1)), np.tile(x[:, None], (1, SIZE)), np.full((SIZE, SIZE), 128.0)], -1)
    return Image.fromarray(arr.astype(np.uint8))


class IdentityVAE(torch.nn.Module):
    """A stand-in VAE whose latents are the image itself, pixel-unshuffled: it reconstructs perfectly."""

    class _Dist:
        def __init__(self, z):
            self.z = z

        def sample(self, generator=None):
            return self.z

    def __init__(self):
        super().__init__()
        from types import SimpleNamespace

        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(scaling_factor=1.0, block_out_channels=(1, 1, 1, 1), force_upcast=False)

    device = torch.device("cpu")
    dtype = torch.float32

    def encode(self, image):
        from types import SimpleNamespace

        # 3 channels + a zero channel -> 4 channels at full resolution, averaged down by 8 in space would
        # lose detail, so keep the latent at full size: the loop does not care about the size ratio.
        z = torch.cat([image, torch.zeros_like(image[:, :1])], dim=1)
        return SimpleNamespace(latent_dist=self._Dist(z))

    def decode(self, z, return_dict=False):
        return (z[:, :3],)


def test_sdxl_fp16_vae_runs_in_fp32_and_is_restored_even_on_error():
    from engine.txt2img.latents import vae_upcast_if_needed
    from tests.tiny_models import tiny_vae

    vae = tiny_vae().to(torch.float16)
    vae.register_to_config(force_upcast=True)
    with vae_upcast_if_needed(vae, "sdxl"):
        assert vae.dtype == torch.float32
    assert vae.dtype == torch.float16
    with pytest.raises(RuntimeError):
        with vae_upcast_if_needed(vae, "sdxl"):
            raise RuntimeError("decode failed")
    assert vae.dtype == torch.float16  # the shared cached VAE is never left in fp32
    with vae_upcast_if_needed(vae, "sd"):
        assert vae.dtype == torch.float16  # SD 1.x's VAE is fine in fp16


def test_default_guidance_comes_from_the_preset():
    assert txt2img.default_guidance(preset("sd")) == 7.5
    assert txt2img.default_guidance(preset("sd", default_guidance=5.0)) == 5.0
    assert txt2img.default_guidance(preset("sdxl", guidance=False, default_guidance=5.0)) == 0.0


def _previews_and_images(pipe, p):
    events = list(text_to_image(pipe, p, prompt=PROMPT, num_inference_steps=4, width=SIZE, height=SIZE, seed=3,
                                scheduler="Euler"))  # its last step lands on x0 exactly
    steps = [e for e in events if isinstance(e, dict)]
    return steps, events[-1]


def test_decoded_preview_is_the_vae_decode_of_x0(sd_pipe):
    """"preview": "decode" (the mini models) decodes each step's x0 with the VAE: at the last step x0 is the
    final latent, so the preview is the final image. The linear map's preview is not."""
    steps, result = _previews_and_images(sd_pipe, preset("sd", preview="decode"))
    final = np.asarray(result.pil_images[0], dtype=np.float64)
    decoded = np.asarray(steps[-1]["preview"], dtype=np.float64)
    assert steps[-1]["preview"].size == (SIZE, SIZE)
    assert np.abs(decoded - final).mean() < 1.0  # 8-bit levels
    linear_steps, _ = _previews_and_images(sd_pipe, preset("sd"))
    assert np.abs(np.asarray(linear_steps[-1]["preview"], dtype=np.float64) - final).mean() > 5.0
    # earlier previews differ from the final image: they show the prediction at that step
    assert np.abs(np.asarray(steps[0]["preview"], dtype=np.float64) - final).mean() > 1.0
