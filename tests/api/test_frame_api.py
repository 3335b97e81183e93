"""The app as a service: the frame, /tokenize, and a broken preset that leaves the rest working."""

import urllib.request

import pytest
from gradio_client.exceptions import AppError

L14 = "CLIP ViT-L/14 (offline)"


def test_page_has_the_title(app_url):
    with urllib.request.urlopen(app_url, timeout=30) as r:
        assert "Stable Diffusion Explorer" in r.read().decode("utf-8", "replace")


def test_tokenize_api(client):
    chips, summary, shapes, decoded, view = client.predict(prompt="A photograph of a puppy", tokenizer=L14,
                                                            api_name="/tokenize")
    assert view["ids"] == [49406, 320, 8853, 539, 320, 6829, 49407]
    assert view["count"] == 7 and view["truncated_ids"] == []
    assert view["shapes"]["SD 1.x · CLIP ViT-L/14"]["prompt_embeds"] == [1, 77, 768]
    assert "8853" in chips and "<|startoftext|>" in chips.replace("&lt;", "<").replace("&gt;", ">")
    assert decoded == "a photograph of a puppy"
    assert "`[1, 77, 2048]`" in shapes and "`[1, 1280]`" in shapes


def test_tokenize_api_truncates_and_warns(client):
    *_, view = client.predict(prompt="a cat " * 100, tokenizer=L14, api_name="/tokenize")
    assert len(view["ids"]) == 77 and len(view["truncated_ids"]) == 200 - 75
    summary = client.predict(prompt="a cat " * 100, tokenizer=L14, api_name="/tokenize")[1]
    assert "125 tokens are cut" in summary


def test_tokenize_api_odd_inputs(client):
    for prompt in ["", "🐶 東京", "x" * 20_000, "bell\x07"]:
        *_, view = client.predict(prompt=prompt, tokenizer=L14, api_name="/tokenize")
        assert view["ids"][0] == 49406 and view["ids"][-1] == 49407


def test_unknown_tokenizer_is_a_clear_error(client):
    with pytest.raises(AppError, match="Unknown tokenizer model '../../secret'"):
        client.predict(prompt="hi", tokenizer="../../secret", api_name="/tokenize")


def test_broken_hub_preset_fails_politely_and_the_app_keeps_serving(client):
    with pytest.raises(AppError) as e:
        client.predict(prompt="hi", tokenizer="Missing hub model (test) · tokenizer", api_name="/tokenize")
    message = str(e.value)
    assert "Missing hub model (test) · tokenizer" in message and "not available" in message
    assert "Traceback" not in message
    *_, view = client.predict(prompt="A photograph of a puppy", tokenizer=L14, api_name="/tokenize")
    assert view["ids"][2] == 8853


def test_a_pipeline_presets_tokenizer_uses_the_same_path(client):
    *_, view = client.predict(prompt="A photograph of a puppy", tokenizer="tiny-SDXL (test) · tokenizer_2",
                              api_name="/tokenize")
    assert view["ids"] == [49406, 320, 8853, 539, 320, 6829, 49407] and view["pad_token_id"] == 0


def test_loaded_models_report_lists_what_was_used(client):
    client.predict(prompt="hi", tokenizer=L14, api_name="/tokenize")
    report = client.predict(api_name="/loaded_models")
    names = [m["name"] for m in report["models"]]
    assert L14 in names and report["device"] in ("cpu", "cuda", "mps")
    assert "Missing hub model (test) · tokenizer" not in names  # failures are not cached as loaded
