"""The offline CLIP tokenizer against the book, the 77-token window, and odd input."""

import json

import pytest

from engine import tokenizer as tk
from engine.presets import REPO_ROOT

L14 = "CLIP ViT-L/14 (offline)"
BIGG = "OpenCLIP ViT-bigG/14 · SDXL tokenizer_2 (offline)"


def test_the_books_example():
    view = tk.token_view("A photograph of a puppy", L14)
    assert view["ids"] == [49406, 320, 8853, 539, 320, 6829, 49407]
    assert view["tokens"] == ["<|startoftext|>", "a</w>", "photograph</w>", "of</w>", "a</w>", "puppy</w>", "<|endoftext|>"]
    assert view["count"] == 7 and view["truncated_ids"] == []
    assert view["decoded"] == "a photograph of a puppy"
    assert len(view["padded_ids"]) == 77 and view["padded_ids"][7:] == [49407] * 70


def test_vocabulary_files_have_clips_layout():
    folder = REPO_ROOT / "assets" / "tokenizers" / "clip-vit-l-14"
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408
    assert vocab["!"] == 0 and vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["photograph</w>"] == 8853
    merges = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0].startswith("#version") and len(merges) == 1 + 48894
    assert "MIT License" in (folder / "LICENSE").read_text()


def test_window_of_77_cuts_the_rest():
    words = " ".join(f"word{i}" for i in range(100))
    view = tk.token_view(words, L14)
    assert len(view["ids"]) == 77 and view["ids"][0] == 49406 and view["ids"][-1] == 49407
    assert view["count"] > 77
    assert len(view["truncated_ids"]) == view["count"] - 77
    assert "word99" in view["truncated_text"].replace(" ", "")
    assert "word99" not in view["decoded"].replace(" ", "")
    assert any("never sees" in n for n in view["notes"])


def test_exactly_75_content_tokens_fit():
    view = tk.token_view("a " * 75, L14)
    assert view["count"] == 77 and view["truncated_ids"] == [] and view["padded_ids"] == view["ids"]
    view = tk.token_view("a " * 76, L14)
    assert view["truncated_ids"] == [320]


def test_sdxl_second_tokenizer_pads_with_exclamation_mark():
    a = tk.token_view("A photograph of a puppy", L14)
    b = tk.token_view("A photograph of a puppy", BIGG)
    assert a["ids"] == b["ids"]  # same BPE
    assert a["pad_token"] == "<|endoftext|>" and a["pad_token_id"] == 49407
    assert b["pad_token"] == "!" and b["pad_token_id"] == 0
    assert b["padded_ids"][7:] == [0] * 70


def test_empty_prompt_is_the_unconditional_input():
    view = tk.token_view("", L14)
    assert view["ids"] == [49406, 49407] and view["count"] == 2 and view["decoded"] == ""


@pytest.mark.parametrize("prompt", [
    "a puppy " * 2500,              # 20,000 characters
    "a puppy 🐶🐕‍🦺 with a 🎩",
    "東京の柴犬、写真",
    "bell\x07 null\x00 escape\x1b[31m tab\tnewline\n",
    "lone \ud800 surrogate \udfff",
])
def test_odd_prompts_tokenize(prompt):
    view = tk.token_view(prompt, L14)
    assert view["ids"][0] == 49406 and view["ids"][-1] == 49407 and len(view["padded_ids"]) == 77
    json.dumps(view)  # the API can send it


def test_surrogates_and_control_characters_are_reported():
    view = tk.token_view("x\ud800y\x07", L14)
    assert any("surrogate" in n for n in view["notes"]) and any("control" in n for n in view["notes"])


def test_emoji_pieces_decode_readably():
    view = tk.token_view("🐶", L14)
    assert "🐶" in "".join(view["pieces"]) or "🐶" in view["decoded"]


def test_absurdly_long_prompt_gets_a_clear_message():
    with pytest.raises(ValueError, match="characters"):
        tk.token_view("x" * (tk.MAX_PROMPT_CHARS + 1), L14)


def test_shapes_per_encoder():
    shapes = tk.token_view("hi", L14)["shapes"]
    assert shapes["SD 1.x · CLIP ViT-L/14"]["prompt_embeds"] == [1, 77, 768]
    assert shapes["SD 2.x · OpenCLIP ViT-H/14"]["prompt_embeds"] == [1, 77, 1024]
    xl = shapes["SDXL · CLIP ViT-L/14 + OpenCLIP ViT-bigG/14"]
    assert xl == {"prompt_embeds": [1, 77, 2048], "pooled_prompt_embeds": [1, 1280]}


def test_shapes_match_a_real_text_encoder_forward():
    """The SDXL shape rule (penultimate states of both encoders, concatenated) on tiny encoders."""
    import torch

    from tests.tiny_models import tiny_sdxl_components

    c = tiny_sdxl_components()
    ids = torch.tensor([tk.token_view("a puppy", L14)["padded_ids"]])
    h1 = c["text_encoder"](ids, output_hidden_states=True).hidden_states[-2]
    out2 = c["text_encoder_2"](ids, output_hidden_states=True)
    embeds = torch.cat([h1, out2.hidden_states[-2]], dim=-1)
    assert embeds.shape == (1, 77, c["text_encoder"].config.hidden_size + c["text_encoder_2"].config.hidden_size)
    assert out2.text_embeds.shape == (1, c["text_encoder_2"].config.projection_dim)
