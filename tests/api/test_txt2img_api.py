"""``/generate`` through gradio_client, on the tiny test presets (``/guidance_sweep``, now in the Guidance tab: in
test_guidance_api.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.png_parameters import parse_parameters, read_parameters

BASE = dict(prompt="An oil painting of a collie in a top hat", negative_prompt="", model="tiny-SD (test)",
            guidance_scale=7.5, num_inference_steps=2, scheduler="default", seed=7, randomize_seed=False,
            width=64, height=64, num_images=1)


def _paths(gallery) -> list[str]:
    return [item["image"] if isinstance(item["image"], str) else item["image"]["path"] for item in gallery]


def test_generate_returns_pngs_with_parameters(client):
    gallery, info, preview = client.predict(**BASE, api_name="/generate")
    paths = _paths(gallery)
    assert len(paths) == 1 and paths[0].endswith(".png")
    image = Image.open(paths[0])
    assert image.size == (64, 64)
    params = parse_parameters(read_parameters(image))
    assert params["prompt"] == BASE["prompt"]
    assert params["Seed"] == "7" and params["Steps"] == "2" and params["Size"] == "64x64"
    assert params["Model"] == "tiny-SD (test)"
    assert info["seed"] == 7 and info["unet_calls"] == 3  # PNDM: 2 steps are 3 UNet calls
    assert preview is None  # live previews are drawn for the page only (tabs.common.shows_live_pictures)


def test_generate_is_reproducible_and_matches_the_engine(client, tiny_presets):
    from engine.loader import load
    from engine.presets import get_preset
    from engine.txt2img import run_to_end, text_to_image

    first = np.asarray(Image.open(_paths(client.predict(**BASE, api_name="/generate")[0])[0]))
    second = np.asarray(Image.open(_paths(client.predict(**BASE, api_name="/generate")[0])[0]))
    assert np.array_equal(first, second)
    preset = get_preset("tiny-SD (test)", "sd")
    kwargs = {k: v for k, v in BASE.items() if k not in ("model", "randomize_seed")}
    local = run_to_end(text_to_image(load(preset), preset, **kwargs))
    assert np.array_equal(first, np.asarray(local.pil_images[0]))


def test_sdxl_micro_conditioning_through_the_api(client):
    gallery, info, _ = client.predict(**{**BASE, "model": "tiny-SDXL (test)", "guidance_scale": 5.0},
                                      original_size="256,128", crops_coords_top_left="8,0", target_size=64,
                                      api_name="/generate")
    assert info["add_time_ids"] == [128, 256, 0, 8, 64, 64]
    assert len(_paths(gallery)) == 1


def test_randomized_seed_is_reported(client):
    _, info, _ = client.predict(**{**BASE, "randomize_seed": True, "num_inference_steps": 1}, api_name="/generate")
    assert isinstance(info["seed"], int) and 0 <= info["seed"] <= 2**32 - 1


def test_bad_input_gives_a_clean_error_and_the_server_keeps_serving(client):
    with pytest.raises(Exception, match="multiple of 8"):
        client.predict(**{**BASE, "width": 60}, api_name="/generate")
    with pytest.raises(Exception, match="guidance_scale"):
        client.predict(**{**BASE, "guidance_scale": -2}, api_name="/generate")
    gallery, _, _ = client.predict(**BASE, api_name="/generate")
    assert len(_paths(gallery)) == 1


def test_missing_hub_preset_gives_the_friendly_message(client):
    with pytest.raises(Exception) as error:
        client.predict(**{**BASE, "model": "Missing hub model (test)"}, api_name="/generate")
    message = str(error.value)
    assert "Missing hub model (test)" in message and "not available" in message
    assert "Traceback" not in message
    gallery, _, _ = client.predict(**BASE, api_name="/generate")
    assert len(_paths(gallery)) == 1


def test_image_to_image_through_the_api(client, tmp_path):
    from gradio_client import handle_file

    path = tmp_path / "start.png"
    Image.new("RGB", (96, 80), (200, 40, 40)).save(path)
    gallery, info, _ = client.predict(**{**BASE, "num_inference_steps": 4}, image=handle_file(str(path)),
                                      strength=0.5, api_name="/generate")
    assert info["strength"] == 0.5 and info["timesteps"] == 2 + 1  # half of 4 steps, plus PNDM's extra one
    params = parse_parameters(read_parameters(Image.open(_paths(gallery)[0])))
    assert params["Denoising strength"] == "0.5"


def test_a_non_image_upload_gets_a_clean_error(client, tmp_path):
    from gradio_client import handle_file

    path = tmp_path / "not-an-image.png"
    path.write_bytes(b"this is not a PNG at all" * 10)
    with pytest.raises(Exception, match="not an image"):
        client.predict(**BASE, image=handle_file(str(path)), strength=0.5, api_name="/generate")


def _as_pictures(paths) -> "torch.Tensor":
    import torch

    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255 for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def test_the_offline_mini_sdxl_draws_the_asked_colour_and_obeys_original_size(client):
    """Issue 6 through the API: the shipped mini-SDXL answers "a red dress" in red, and a small original_size
    gives blurrier pictures (less high-frequency energy), as in the SDXL paper's figure."""
    import sys


    from engine.mini import measure
    from tests.conftest import REPO_ROOT

    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    from eval_mini_sd import high_frequency_energy

    request = {**BASE, "model": "mini-SDXL (offline)", "prompt": "a red dress", "guidance_scale": 2.0,
               "num_inference_steps": 25, "num_images": 4, "seed": 1}
    gallery, info, _ = client.predict(**request, api_name="/generate")
    sharp = _as_pictures(_paths(gallery))
    assert sharp.shape == (4, 3, 64, 64)
    assert measure.item_colours(sharp).count("red") >= 3
    blurry = _as_pictures(_paths(client.predict(**request, original_size="16,16", api_name="/generate")[0]))
    assert high_frequency_energy(blurry) < high_frequency_energy(sharp)


def test_clip_guidance_through_the_api(client):
    """Issue 22: ``clip_guidance_scale`` (the last input of /generate) checked, and run on the offline mini-SD,
    whose folder ships a CLIP image tower; a model without one says so."""
    with pytest.raises(Exception, match="clip_guidance_scale must be between 0 and 1000"):
        client.predict(**BASE, clip_guidance_scale=-1, api_name="/generate")
    with pytest.raises(Exception, match="no CLIP image model"):
        client.predict(**BASE, clip_guidance_scale=10, api_name="/generate")
    mini = {**BASE, "model": "mini-SD (offline)", "prompt": "a red sneaker", "guidance_scale": 1.0,
            "num_inference_steps": 4}
    plain = np.asarray(Image.open(_paths(client.predict(**mini, api_name="/generate")[0])[0]))
    gallery, info, _ = client.predict(**mini, clip_guidance_scale=10, api_name="/generate")
    assert info["clip_guidance_scale"] == 10 and len(info["clip_loss"]) == info["timesteps"]
    assert not np.array_equal(plain, np.asarray(Image.open(_paths(gallery)[0])))


def test_generate_with_the_sdxl_refiner(client):
    """Issue 23: ``refiner`` and ``denoising_end``, the last inputs of /generate, checked by the engine; the run
    details give both models' steps and times; the PNG names the refiner."""
    sdxl = {**BASE, "model": "tiny-SDXL (test)", "num_inference_steps": 5}
    with pytest.raises(Exception, match="denoising_end must be between 0 and 1"):
        client.predict(**sdxl, refiner="tiny-SDXL refiner (test)", denoising_end=1.5, api_name="/generate")
    with pytest.raises(Exception, match="Unknown refiner 'nope'"):
        client.predict(**sdxl, refiner="nope", api_name="/generate")
    with pytest.raises(Exception, match="Unknown refiner"):  # paired with tiny-SDXL only
        client.predict(**BASE, refiner="tiny-SDXL refiner (test)", api_name="/generate")
    gallery, info, _ = client.predict(**sdxl, refiner="tiny-SDXL refiner (test)", denoising_end=0.8,
                                      api_name="/generate")
    details = info["refiner"]
    assert details["base_steps"] == 4 and details["refiner_steps"] == 1 and info["timesteps"] == 5
    assert details["base_seconds"] >= 0 and details["refiner_seconds"] >= 0
    params = parse_parameters(read_parameters(Image.open(_paths(gallery)[0])))
    assert params["Refiner"] == "tiny-SDXL refiner (test)" and params["Refiner switch at"] == "0.8"
