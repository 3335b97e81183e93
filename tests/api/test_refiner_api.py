"""/refiner_handoff through gradio_client (issue 23): the three pictures and both models' steps and times, on the
test app's tiny SDXL and its tiny refiner; clear messages for a missing refiner or a switch point out of range."""

from __future__ import annotations

import numpy as np
import pytest
from gradio_client.exceptions import AppError
from PIL import Image

BASE, REFINER = "tiny-SDXL (test)", "tiny-SDXL refiner (test)"


def handoff(client, **changes):
    args = dict(prompt="a red bag", negative_prompt="", model=BASE, refiner=REFINER, denoising_end=0.8,
                guidance_scale=5.0, num_inference_steps=10, seed=7, randomize_seed=False)
    args.update(changes)
    return client.predict(*args.values(), api_name="/refiner_handoff")


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_the_hand_off_gives_three_pictures_and_both_models_steps(client):
    alone, switch, refined, info = handoff(client)
    a, s, r = pixels(alone), pixels(switch), pixels(refined)
    assert a.shape == s.shape == r.shape == (64, 64, 3)
    assert np.abs(s - r).max() > 0  # the switch point is still noisy; the refiner denoised it
    assert info["base_alone"]["steps"] == 10 and info["seed"] == 7
    assert info["handoff"]["model"] == REFINER and info["handoff"]["switch_timestep"] == 200
    assert info["handoff"]["base_steps"] + info["handoff"]["refiner_steps"] == 10
    assert info["handoff"]["base_seconds"] > 0 and info["handoff"]["refiner_seconds"] > 0
    # a later switch point leaves the refiner fewer steps
    later = handoff(client, denoising_end=0.95)[3]
    assert later["handoff"]["refiner_steps"] < info["handoff"]["refiner_steps"]


@pytest.mark.parametrize("changes, words", [
    (dict(refiner="none"), "Choose a refiner"),
    (dict(refiner="no such refiner"), "Unknown refiner"),
    (dict(denoising_end=1.2), "denoising_end must be between 0 and 1"),
    (dict(prompt="word " * 12_000), "prompt has 60,000 characters"),
])
def test_bad_hand_off_inputs_get_clear_messages(client, changes, words):
    with pytest.raises(AppError, match=words):
        handoff(client, **changes)
    assert handoff(client, num_inference_steps=4)[3]["base_alone"]["steps"] == 4  # the server answers on
