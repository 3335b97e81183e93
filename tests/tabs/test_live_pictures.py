"""Live pictures go to the page only: API callers (gradio_client, MCP) get progress and the same result."""

from __future__ import annotations

import types

import gradio as gr
import pytest

from tabs.common import last_output, shows_live_pictures

API = types.SimpleNamespace(headers={"x-gradio-user": "api"})
PAGE = types.SimpleNamespace(headers={"user-agent": "Mozilla/5.0"})


def no_progress(*args, **kwargs):
    return None


def test_who_gets_live_pictures():
    assert shows_live_pictures(PAGE) and shows_live_pictures(None)
    assert not shows_live_pictures(API)
    assert not shows_live_pictures(types.SimpleNamespace(headers={"x-gradio-user": "mcp"}))


def _pictures(outputs) -> int:
    """How many streamed outputs (all but the last) carry a picture rather than gr.skip()."""
    skip = gr.skip()
    return sum(any(v != skip for v in out) for out in outputs[:-1])


def test_fashion_streams_its_trajectory_to_the_page_only():
    from tabs.class_conditional import sample_fashion

    args = ("Trouser", 2, "DPM-Solver++", 8, 2.0, 3)
    page = list(sample_fashion(*args, caller=PAGE, progress=no_progress))
    api = list(sample_fashion(*args, caller=API, progress=no_progress))
    assert _pictures(page) >= 3 and _pictures(api) == 0
    (page_samples, page_trajectory, page_info, _), (api_samples, api_trajectory, api_info, _) = page[-1], api[-1]
    assert page_samples.tobytes() == api_samples.tobytes()
    assert page_trajectory.tobytes() == api_trajectory.tobytes()
    assert page_info["seed"] == api_info["seed"] == 3


@pytest.mark.usefixtures("tiny_presets")
def test_text_to_image_previews_go_to_the_page_only():
    from tabs.text_to_image import generate_images

    kwargs = dict(prompt="a cat", negative_prompt="", model="tiny-SD (test)", guidance_scale=2.0,
                  num_inference_steps=3, scheduler="default", seed=1, randomize_seed=False, width=64, height=64,
                  num_images=1, original_size="", crops_coords_top_left="", target_size="",
                  negative_original_size="", negative_crops_coords_top_left="", negative_target_size="",
                  progress=no_progress)
    page = list(generate_images(**kwargs, caller=PAGE))
    api = list(generate_images(**kwargs, caller=API))
    assert _pictures(page) >= 1 and page[-1][2] is not None
    assert _pictures(api) == 0 and api[-1][2] is None
    assert page[-1][1]["seed"] == api[-1][1]["seed"] == 1
    assert last_output(generate_images(**kwargs, caller=API))[1]["unet_calls"] == api[-1][1]["unet_calls"]
