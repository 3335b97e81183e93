"""The Guidance tab's endpoints and the new parameters through gradio_client: classifier guidance on
/sample_fashion, the four panels, prompt weights in /generate and the weight sweep; bad values answered clearly."""

import pytest
from gradio_client.exceptions import AppError


def _panels(client, **kw):
    args = dict(label="Shirt", count=2, sampler="DPM-Solver++", num_inference_steps=4, guidance_scale=2.0,
                classifier_scale=5.0, seed=3)
    args.update(kw)
    return client.predict(**args, api_name="/guidance_panels")


def test_guidance_panels_give_four_timed_and_judged_panels(client):
    gallery, table, info = _panels(client)
    assert [item["caption"].split(" ")[0] for item in gallery] == ["none", "classifier-free", "classifier", "both"]
    assert [(p["guidance_scale"], p["classifier_scale"]) for p in info["panels"]] == [(1, 0), (2, 0), (1, 5), (2, 5)]
    for panel in info["panels"]:
        assert panel["count"] == 2 and 0 <= panel["judged_as_asked"] <= 2 and panel["seconds_per_image"] > 0
    assert info["seed"] == 3 and info["class"] == "Shirt" and "| classifier |" in table


def test_sample_fashion_takes_a_classifier_scale(client):
    *_, off = client.predict(label="Bag", count=2, sampler="DPM-Solver++", num_inference_steps=4, guidance_scale=1,
                             seed=5, api_name="/sample_fashion")
    *_, on = client.predict(label="Bag", count=2, sampler="DPM-Solver++", num_inference_steps=4, guidance_scale=1,
                            seed=5, classifier_scale=4, api_name="/sample_fashion")
    assert off["classifier_scale"] == 0 and on["classifier_scale"] == 4


@pytest.mark.parametrize("kw,message", [
    (dict(classifier_scale=-1), "classifier_scale must be between 0 and 50 \\(0 means off\\), got -1"),
    (dict(classifier_scale="lots"), "classifier_scale must be a number, got 'lots'"),
    (dict(guidance_scale=11), "guidance_scale must be between 0 and 10"),
    (dict(count=0), "count\\) must be a whole number between 1 and 64|between 1 and 64"),
])
def test_bad_guidance_values_are_named(client, kw, message):
    with pytest.raises(AppError, match=message):
        _panels(client, **kw)
    if "classifier_scale" in kw:
        with pytest.raises(AppError, match=message):
            client.predict(label="Bag", count=1, sampler="DPM-Solver++", num_inference_steps=4, guidance_scale=1,
                           seed=5, classifier_scale=kw["classifier_scale"], api_name="/sample_fashion")


def _sweep(client, **kw):
    args = dict(prompt="a red sneaker", word="red", weights="0, 1", negative_prompt="", model="tiny-SD (test)",
                guidance_scale=2.0, num_inference_steps=2, seed=1)
    args.update(kw)
    return client.predict(**args, api_name="/prompt_weight_sweep")


def test_prompt_weight_sweep_gives_one_image_per_weight(client):
    gallery, info, _ = _sweep(client)
    assert [item["caption"] for item in gallery] == ["a (red:0) sneaker", "a (red:1) sneaker"]
    assert [run["prompt"] for run in info["sweep"]] == ["a (red:0) sneaker", "a (red:1) sneaker"]


@pytest.mark.parametrize("kw,message", [
    (dict(weights="0, 4"), "Each weight must be between 0 and 3, got '4'"),
    (dict(weights="0, heavy"), "Each weight must be a number, got 'heavy'"),
    (dict(word="blue"), "The word to weigh, 'blue', is not in the prompt"),
    (dict(negative_prompt="(blurry:7)"), "The weight of 'blurry' in the negative_prompt must be between 0 and 3"),
])
def test_bad_weights_are_named(client, kw, message):
    with pytest.raises(AppError, match=message):
        _sweep(client, **kw)


def test_generate_reads_weights_and_names_a_bad_one(client):
    with pytest.raises(AppError, match="The weight of 'red' in the prompt must be between 0 and 3, got '9'"):
        client.predict(prompt="a (red:9) sneaker", model="tiny-SD (test)", num_inference_steps=2, width=64,
                       height=64, api_name="/generate")


# --------------------------------------------------------------------------------------------
# The text-to-image half: four panels, negative prompts, the guidance sweep (moved from Text to image)

MINI = "mini-SD (offline)"


def _paths(gallery) -> list[str]:
    return [item["image"] if isinstance(item["image"], str) else item["image"]["path"] for item in gallery]


def _pixels(path):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def _t2i_panels(client, **kw):
    args = dict(prompt="a red sneaker", model=MINI, guidance_scale=2.0, clip_guidance_scale=10.0, colour="#1f4fd1",
                colour_scale=400.0, colour_every=1, num_inference_steps=3, seed=5)
    args.update(kw)
    return client.predict(**args, api_name="/guidance_t2i_panels")


def test_t2i_panels_give_none_cfg_clip_and_colour_with_times_and_scores(client):
    gallery, table, info = _t2i_panels(client)
    assert [item["caption"].split(" · ")[0] for item in gallery] == ["none", "classifier-free", "CLIP guidance",
                                                                      "colour guidance"]
    panels = info["panels"]
    assert [(p["guidance_scale"], p["clip_guidance_scale"]) for p in panels] == [(1, 0), (2, 0), (1, 10), (1, 0)]
    assert [p.get("colour") for p in panels] == [None, None, None, "#1f4fd1"]
    assert "clip_loss" in panels[2] and "colour_loss" in panels[3] and "clip_loss" not in panels[0]
    for p in panels:
        assert p["loop_seconds"] > 0 and -1 <= p["clip_score"] <= 1 and p["unet_calls"] == 4  # PNDM: 3 steps, 4 calls
    assert info["seed"] == 5 and info["model"] == MINI and "| CLIP guidance |" in table
    pictures = [_pixels(path) for path in _paths(gallery)]
    assert all((pictures[0] != other).any() for other in pictures[1:])  # each guidance changed the picture


@pytest.mark.parametrize("kw,message", [
    (dict(clip_guidance_scale=-1), "clip_guidance_scale must be between 0 and 1000"),
    (dict(colour_scale=-5), "colour_scale must be between 0 and 1000"),
    (dict(colour="#12"), "Colour must look like #ff8800, got '#12'"),
    (dict(colour_every=0), "colour_every must be between 1 and 150, got 0"),
    (dict(guidance_scale=60), "guidance_scale must be between 0 and 50"),
    (dict(model="tiny-SD (test)"), "'tiny-SD \\(test\\)' has no CLIP image model"),
    (dict(prompt="a (red:9) sneaker"), "The weight of 'red' in the prompt must be between 0 and 3, got '9'"),
])
def test_bad_t2i_panel_values_are_named(client, kw, message):
    with pytest.raises(AppError, match=message):
        _t2i_panels(client, **kw)


def _negative(client, **kw):
    args = dict(prompt="a sneaker", negative_prompt="red", model=MINI, guidance_scale=2.0, num_inference_steps=3,
                seed=5)
    args.update(kw)
    return client.predict(**args, api_name="/negative_prompt_pair")


def test_negative_prompt_pair_gives_without_and_with(client):
    gallery, info = _negative(client)
    assert [p["negative_prompt"] for p in info["panels"]] == ["", "red"]
    assert [item["caption"].split(" · ")[0] for item in gallery] == ["without a negative prompt",
                                                                      "with the negative prompt"]
    first, second = (_pixels(path) for path in _paths(gallery))
    assert (first != second).any()


@pytest.mark.parametrize("kw,message", [
    (dict(negative_prompt=""), "negative_prompt is empty"),
    (dict(guidance_scale=1), "guidance_scale must be above 1 for a negative prompt to act"),
    (dict(num_inference_steps=0), "num_inference_steps must be"),
    (dict(model="no such model"), "Unknown model 'no such model'"),
    (dict(model="Missing hub model (test)"), "'Missing hub model \\(test\\)' is not available"),
])
def test_bad_negative_pair_values_are_named(client, kw, message):
    with pytest.raises(AppError, match=message):
        _negative(client, **kw)


def test_the_books_negative_prompt_example_says_clearly_when_sd15_is_out_of_reach(client):
    from engine.loader import hub_reachable

    if hub_reachable():
        pytest.skip("the model hub is reachable here: SD 1.5 would download")
    with pytest.raises(AppError, match="Model 'SD 1.5' is not available"):
        _negative(client, prompt="a dog wearing a white hat", negative_prompt="a white hat", model="SD 1.5",
                  guidance_scale=7.5, num_inference_steps=2)


SWEEP = dict(prompt="An oil painting of a collie in a top hat", negative_prompt="", model="tiny-SD (test)",
             guidance_scales="1, 4, 12", num_inference_steps=2, scheduler="DDIM", seed=3, randomize_seed=False,
             width=64, height=64)


def test_guidance_sweep(client):
    from tests.png_parameters import parse_parameters, read_parameters
    from PIL import Image

    gallery, info, _ = client.predict(**SWEEP, api_name="/guidance_sweep")
    paths = _paths(gallery)
    assert len(paths) == 3
    assert [run["guidance_scale"] for run in info["sweep"]] == [1.0, 4.0, 12.0]
    assert [run["unet_batch"] for run in info["sweep"]] == [1, 2, 2]
    cfgs = [parse_parameters(read_parameters(Image.open(p)))["CFG scale"] for p in paths]
    assert cfgs == ["1", "4", "12"]


def test_prompt_weights_in_the_sweep_and_the_attention_maps_weight_one_is_the_plain_prompt(client):
    """Issue 22: ``(word:w)`` reads in /guidance_sweep and /attention_maps; at weight 1.0 the pictures are the
    plain prompt's exactly, and another weight changes them."""
    def sweep(prompt):
        gallery, *_ = client.predict(**{**SWEEP, "prompt": prompt, "guidance_scales": "1, 4"},
                                     api_name="/guidance_sweep")
        return [_pixels(path) for path in _paths(gallery)]

    plain, one, strong = sweep("a red sneaker"), sweep("a (red:1.0) sneaker"), sweep("a (red:2.5) sneaker")
    assert all((a == b).all() for a, b in zip(plain, one)) and any((a != b).any() for a, b in zip(plain, strong))
    maps = dict(negative_prompt="", model="tiny-SD (test)", guidance_scale=5.0, num_inference_steps=3, seed=4,
                width=64, height=64)
    image, _, info, *_ = client.predict(prompt="a red sneaker", **maps, api_name="/attention_maps")
    image_one, _, info_one, *_ = client.predict(prompt="a (red:1.0) sneaker", **maps, api_name="/attention_maps")
    assert (_pixels(image) == _pixels(image_one)).all() and info["mass"] == info_one["mass"]
    assert [t["token"] for t in info["tokens"]] == [t["token"] for t in info_one["tokens"]]
    with pytest.raises(AppError, match="The weight of 'red' in the prompt must be between 0 and 3"):
        client.predict(prompt="a (red:4) sneaker", **maps, api_name="/attention_maps")
