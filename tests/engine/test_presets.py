"""Presets: the shipped file, EXPLORER_MODELS, pipeline parts, and validation."""

import json

import pytest

from engine import presets


def test_shipped_presets_are_valid_and_offline_tokenizers_come_first(monkeypatch):
    monkeypatch.delenv("EXPLORER_MODELS", raising=False)
    names = presets.preset_names("tokenizer")
    assert names[:2] == ["CLIP ViT-L/14 (offline)", "OpenCLIP ViT-bigG/14 · SDXL tokenizer_2 (offline)"]
    sdxl = presets.get_preset("SDXL base 1.0", "sdxl")
    assert sdxl.repo == "stabilityai/stable-diffusion-xl-base-1.0" and sdxl.options["vae"] == "madebyollin/sdxl-vae-fp16-fix"


def test_operator_presets_are_appended_and_paths_resolved(tmp_path, monkeypatch):
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps([
        {"name": "My SDXL", "kind": "sdxl", "path": "some/relative/folder"},
        {"name": "My VAE", "kind": "vae", "repo": "someone/vae", "dtype": "float16", "max_size": 512},
    ]))
    monkeypatch.setenv("EXPLORER_MODELS", str(extra))
    all_names = [p.name for p in presets.all_presets()]
    assert all_names[-2:] == ["My SDXL", "My VAE"]  # appended after the shipped ones
    mine = presets.get_preset("My SDXL", "sdxl")
    assert mine.path == str((presets.REPO_ROOT / "some/relative/folder").resolve())
    assert presets.get_preset("My VAE", "vae").options == {"max_size": 512}
    # The parts of a pipeline preset count as VAE and tokenizer presets.
    assert "My SDXL · VAE" in presets.preset_names("vae")
    tok_names = presets.preset_names("tokenizer")
    assert "My SDXL · tokenizer" in tok_names and "My SDXL · tokenizer_2" in tok_names
    part = presets.get_preset("My SDXL · tokenizer_2", "tokenizer")
    assert part.subfolder == "tokenizer_2" and part.parent == "My SDXL"


def test_a_pipeline_preset_with_a_replacement_vae_offers_that_vae(monkeypatch):
    monkeypatch.delenv("EXPLORER_MODELS", raising=False)
    vae = presets.get_preset("SDXL base 1.0 · VAE", "vae")
    assert vae.repo == "madebyollin/sdxl-vae-fp16-fix" and vae.subfolder is None


@pytest.mark.parametrize("entry, words", [
    ({"kind": "sd", "repo": "a/b"}, "'name'"),
    ({"name": "x", "kind": "gan", "repo": "a/b"}, "'kind'"),
    ({"name": "x", "kind": "sd"}, "exactly one of 'repo' or 'path'"),
    ({"name": "x", "kind": "sd", "repo": "a/b", "path": "c"}, "exactly one of 'repo' or 'path'"),
    ({"name": "x", "kind": "sd", "repo": 5}, "'repo' must be a string"),
])
def test_bad_entries_are_refused_with_a_message_naming_them(tmp_path, monkeypatch, entry, words):
    extra = tmp_path / "bad.json"
    extra.write_text(json.dumps([entry]))
    monkeypatch.setenv("EXPLORER_MODELS", str(extra))
    with pytest.raises(ValueError, match="entry 0") as e:
        presets.all_presets()
    assert words in str(e.value)


def test_unreadable_operator_file_is_reported(tmp_path, monkeypatch):
    bad = tmp_path / "broken.json"
    bad.write_text("[{")
    monkeypatch.setenv("EXPLORER_MODELS", str(bad))
    with pytest.raises(ValueError, match="not valid JSON"):
        presets.all_presets()
    monkeypatch.setenv("EXPLORER_MODELS", str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="not found"):
        presets.all_presets()


def test_unknown_name_lists_the_choices(monkeypatch):
    monkeypatch.delenv("EXPLORER_MODELS", raising=False)
    with pytest.raises(ValueError, match="Choose one of: 'CLIP ViT-L/14 \\(offline\\)'"):
        presets.get_preset("../../etc/passwd", "tokenizer")


def test_the_mini_models_come_first_and_list_their_parts_once(monkeypatch):
    """Issue 6: the offline mini models are the text-to-image and VAE defaults; their tokenizers and VAE,
    which are the shipped CLIP tokenizers and one mini VAE, are not listed again as pipeline parts."""
    from engine import txt2img

    monkeypatch.delenv("EXPLORER_MODELS", raising=False)
    assert [p.name for p in txt2img.pipeline_presets()][:2] == ["mini-SD (offline)", "mini-SDXL (offline)"]
    vae = presets.get_preset("mini VAE (offline)", "vae")
    assert vae.path.endswith("mini-sd") and vae.subfolder == "vae" and not vae.is_hub
    names = presets.preset_names("vae") + presets.preset_names("tokenizer")
    assert not [n for n in names if n.startswith("mini-SD")]
    # an SD 1.5 part is still listed: "parts": false is per preset
    assert "SD 1.5 · VAE" in names


def test_parts_false_hides_a_pipelines_parts(tmp_path, monkeypatch):
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps([{"name": "Mine", "kind": "sdxl", "path": "x", "parts": False},
                                 {"name": "Yours", "kind": "sdxl", "path": "y"}]))
    monkeypatch.setenv("EXPLORER_MODELS", str(extra))
    names = presets.preset_names("vae") + presets.preset_names("tokenizer")
    assert not [n for n in names if n.startswith("Mine")]
    assert "Yours · VAE" in names and "Yours · tokenizer_2" in names
