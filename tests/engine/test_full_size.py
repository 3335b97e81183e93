"""Random-weight pipelines from the shipped configs: full-size parameter pins on meta, tiny ones that run."""

import json

import numpy as np
import pytest
import torch

from engine import full_size
from engine.unet.anatomy import CONFIG_DIR, count_parameters

# Published sizes (diffusers / transformers, measured on meta): VAE 83.65 M, CLIP ViT-L/14 text 123.06 M,
# OpenCLIP ViT-bigG/14 text with projection 694.66 M, UNets 859.52 M and 2,567.46 M.
PINS = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sdxl-base": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
                  "text_encoder_2": 694_659_840},
}


@pytest.mark.parametrize("name", ["sd15", "sdxl-base"])
def test_full_size_parts_have_the_published_parameter_counts(name):
    parts = full_size.build_components(name, device="meta")
    modules = {k: v for k, v in parts.items() if isinstance(v, torch.nn.Module)}
    assert {k: count_parameters(v) for k, v in modules.items()} == PINS[name]
    assert all(p.is_meta for m in modules.values() for p in m.parameters())
    expected = "PNDMScheduler" if name == "sd15" else "EulerDiscreteScheduler"
    assert type(parts["scheduler"]).__name__ == expected
    assert parts["unet"].config.cross_attention_dim == (768 if name == "sd15" else 768 + 1280)


def test_shipped_configs_name_no_machine_path():
    files = sorted(CONFIG_DIR.glob("*/*.json"))
    assert len(files) == 9
    for path in files:
        text = path.read_text()
        config = json.loads(text)
        assert "_name_or_path" not in config, path
        assert "_class_name" in config or "architectures" in config, path
        for fragment in ("/home/", "/root/", "/tmp/", "/Users/", ":\\\\"):
            assert fragment not in text, (path, fragment)


def _run_ours(pipe, name, steps=1):
    from engine.txt2img import run_to_end, text_to_image

    preset = full_size.random_weights_preset(name, tiny=True)
    return run_to_end(text_to_image(pipe, preset, prompt="a red dress", guidance_scale=7.5,
                                    num_inference_steps=steps, width=64, height=64, seed=0, preview_every=0))


@pytest.mark.parametrize("name, pipeline_class", [("sd15", "StableDiffusionPipeline"),
                                                  ("sdxl-base", "StableDiffusionXLPipeline")])
def test_tiny_random_pipeline_runs_a_step_in_our_loop_and_in_diffusers(name, pipeline_class):
    pipe = full_size.build_random_pipeline(name, tiny=True, seed=0)
    assert type(pipe).__name__ == pipeline_class
    # the same classes as the full-size model, only smaller
    full = full_size.component_configs(name)
    assert pipe.unet.config.cross_attention_dim != full["unet"]["cross_attention_dim"]
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel" and pipe.vae_scale_factor == 8
    assert len(pipe.tokenizer.get_vocab()) == 49408
    ours = _run_ours(pipe, name)
    theirs = pipe(prompt="a red dress", guidance_scale=7.5, num_inference_steps=1, width=64, height=64,
                  generator=torch.Generator("cpu").manual_seed(0), output_type="np").images
    assert ours.images.shape == theirs.shape == (1, 64, 64, 3)
    assert np.isfinite(ours.images).all()
    # the same work: same seed, same components, same image (this is what bench_gpu.py compares)
    np.testing.assert_allclose(ours.images, theirs, atol=1e-4)


def test_builds_are_seeded_and_cast():
    a = full_size.build_components("sd15", tiny=True, seed=3)
    b = full_size.build_components("sd15", tiny=True, seed=3)
    c = full_size.build_components("sd15", tiny=True, seed=4, dtype=torch.bfloat16)
    assert torch.equal(a["unet"].conv_in.weight, b["unet"].conv_in.weight)
    assert not torch.equal(a["unet"].conv_in.weight, c["unet"].conv_in.weight.float())
    assert {p.dtype for m in ("unet", "vae", "text_encoder") for p in c[m].parameters()} == {torch.bfloat16}


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="Choose one of: sd15, sdxl-base"):
        full_size.build_random_pipeline("sd3", tiny=True)
    with pytest.raises(ValueError, match="meta device"):
        full_size.build_random_pipeline("sd15", device="meta")
    preset = full_size.random_weights_preset("sdxl-base")
    assert preset.kind == "sdxl" and "random weights" in preset.name and not preset.is_hub and preset.path is None
