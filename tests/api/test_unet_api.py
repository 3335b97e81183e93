"""The "Inside the UNet" endpoints through gradio_client: /attention_maps, /timestep_experiment, /unet_anatomy."""

from __future__ import annotations

import numpy as np
import pytest
from gradio_client.exceptions import AppError
from PIL import Image

ATTENTION = dict(prompt="a red sneaker on the left", negative_prompt="", model="tiny-SD (test)", guidance_scale=5.0,
                 num_inference_steps=3, seed=4, width=64, height=64)
GENERATE = dict(prompt="a red sneaker on the left", negative_prompt="", model="tiny-SD (test)", guidance_scale=5.0,
                num_inference_steps=3, scheduler="default", seed=4, randomize_seed=False, width=64, height=64,
                num_images=1)


def _image(item) -> np.ndarray:
    path = item if isinstance(item, str) else (item.get("path") if isinstance(item, dict) else item)
    return np.asarray(Image.open(path).convert("RGB"))


def _gallery_path(item) -> str:
    image = item["image"]
    return image if isinstance(image, str) else image["path"]


def test_attention_maps_per_token_sum_to_one_and_leave_the_unet_as_it_was(client):
    before = _image(_gallery_path(client.predict(**GENERATE, api_name="/generate")[0][0]))
    image, gallery, info, *_ = client.predict(**ATTENTION, api_name="/attention_maps")
    tokens = [t["token"] for t in info["tokens"]]
    assert tokens[0] == "<|startoftext|>" and tokens[-1] == "<|endoftext|>" and "sneaker</w>" in tokens
    assert len(info["maps"]) == len(tokens) == len(gallery) == len(info["mass"])
    for token_map in info["maps"]:
        grid = np.asarray(token_map)
        assert grid.shape == (8, 8) and abs(grid.sum() - 1) < 1e-3 and grid.min() >= 0
    assert abs(sum(info["mass"]) - 1) < 1e-3
    assert info["steps"] and info["layers"] and all("attn2" in name for name in info["layers"])
    assert "sneaker</w>" in " ".join(item["caption"] for item in gallery)
    # the image is the one /generate makes (the recording processor agrees with SDPA to ~1e-6: at most a
    # rounding edge of one 8-bit level), and /generate still makes exactly it afterwards (processors restored)
    assert np.abs(_image(image).astype(int) - before.astype(int)).max() <= 1
    after = _image(_gallery_path(client.predict(**GENERATE, api_name="/generate")[0][0]))
    assert np.array_equal(after, before)


def test_attention_maps_of_an_empty_prompt_are_the_special_tokens(client):
    _, gallery, info, *_ = client.predict(**{**ATTENTION, "prompt": ""}, api_name="/attention_maps")
    assert [t["special"] for t in info["tokens"]] == [True, True] and len(gallery) == 2
    assert info["notes"] and "empty" in info["notes"][0]


def test_a_weighted_words_attention_share_follows_its_weight_on_mini_sd(client):
    """Issue 22: "(red:w)" in the prompt changes where the UNet looks. On mini-SD, seeds 1 and 2, 10 steps, "red"
    took 9% of the attention at weight 0.5, 20% at 1 and 66% at 1.5: at least twice as much at 1.5 as at 0.5."""
    def share(weight):
        _, _, info, *_ = client.predict(**{**ATTENTION, "model": "mini-SD (offline)", "guidance_scale": 2.0,
                                           "num_inference_steps": 10, "seed": 1,
                                           "prompt": f"a (red:{weight:g}) sneaker"}, api_name="/attention_maps")
        tokens = [t["token"] for t in info["tokens"]]
        assert tokens[1:4] == ["a</w>", "red</w>", "sneaker</w>"]  # the syntax is not a token
        return info["mass"][tokens.index("red</w>")]

    low, high = share(0.5), share(1.5)
    assert high > 2 * low and high > 0.3, (low, high)


# gradio's own checks (slider bounds, dropdown choices) or the engine's: either names what is wrong
@pytest.mark.parametrize("change, message", [
    ({"width": 60}, "multiple of 8|less than minimum value 64"),
    ({"num_inference_steps": 0}, "between 1 and|less than minimum value 1"),
    ({"seed": -1}, "seed"),
    ({"model": "../../etc/passwd"}, "Unknown model|not in the list of choices"),
])
def test_attention_maps_bad_input_is_checked_as_in_text_to_image(client, change, message):
    with pytest.raises(AppError, match=message) as e:
        client.predict(**{**ATTENTION, **change}, api_name="/attention_maps")
    assert "Traceback" not in str(e.value)


def test_timestep_experiment_finds_the_true_time(client):
    gallery, plot, info = client.predict(example=3, true_t=300, seed=0, api_name="/timestep_experiment")
    assert len(info["told_t"]) == len(info["mse"]) and 300 in info["told_t"]
    assert abs(info["best_told_t"] - 300) <= 50  # the error curve bottoms out at (or next to) the true t
    mse = dict(zip(info["told_t"], info["mse"]))
    assert mse[0] > mse[300] and mse[975] > mse[300]
    assert len(gallery) >= 4


@pytest.mark.parametrize("change, message", [({"true_t": 1000}, "between 1 and 999|greater than maximum value 999"),
                                             ({"example": 99}, "example|not in the list of choices")])
def test_timestep_experiment_bad_input(client, change, message):
    with pytest.raises(AppError, match=message):
        client.predict(**{"example": 0, "true_t": 400, "seed": 0, **change}, api_name="/timestep_experiment")


def test_unet_anatomy_of_sd15_offline(client):
    table, info = client.predict(model="SD 1.5", width=512, height=512, api_name="/unet_anatomy")
    assert info["total_parameters"] == 859_520_964
    assert 0.75e12 < info["flops_per_call"] < 0.85e12
    assert info["pixel_space"]["flops_per_call"] > 10 * info["flops_per_call"]
    names = [b["name"] for b in info["blocks"]]
    assert any(n.startswith("down_blocks") for n in names) and "mid_block" in names
    assert any(b["cross_attention"] for b in info["blocks"]) and "| " in table


def test_unet_anatomy_unknown_model(client):
    with pytest.raises(AppError, match="Unknown model|not in the list of choices"):
        client.predict(model="/etc/passwd", width=512, height=512, api_name="/unet_anatomy")
