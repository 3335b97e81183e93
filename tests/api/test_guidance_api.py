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
