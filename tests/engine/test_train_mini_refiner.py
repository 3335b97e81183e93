"""scripts/train_mini_refiner.py (issue 23): the refiner's UNet built from mini-SDXL's, and a smoke run that ships a
folder which loads into ``StableDiffusionXLImg2ImgPipeline`` and through the app's loader next to mini-SDXL."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
MINI_SDXL = REPO_ROOT / "assets" / "mini-sdxl"
sys.path.insert(0, str(REPO_ROOT / "scripts"))

pytestmark = pytest.mark.skipif(not (MINI_SDXL / "unet").is_dir(), reason="mini-SDXL is not shipped")


def test_the_refiner_unet_starts_as_the_base_where_shapes_allow():
    """Copied where the shapes match; the added embedding keeps pooled, size and crop columns and zeroes the
    aesthetic score's; cross-attention keys and values keep text_encoder_2's columns of the base's context."""
    from diffusers import UNet2DConditionModel

    import train_mini_refiner as tr

    base = UNet2DConditionModel.from_pretrained(MINI_SDXL / "unet", dtype=torch.float32)
    unet, notes = tr.refiner_unet_from_base(base, text_hidden_size=96, projection_dim=96)
    assert unet.config.cross_attention_dim == 96 and unet.config.projection_class_embeddings_input_dim == 5 * 32 + 96
    assert notes["fresh"] == [] and notes["copied"] > 300
    old, new = base.add_embedding.linear_1.weight, unet.add_embedding.linear_1.weight
    assert torch.equal(new[:, :96 + 128], old[:, :96 + 128]) and not new[:, 96 + 128:].any()
    name = next(n for n in notes["sliced"] if n.endswith("attn2.to_k.weight"))
    assert torch.equal(unet.state_dict()[name], base.state_dict()[name][:, -96:])
    fresh, notes = tr.refiner_unet_from_base(base, 96, 96, init="fresh")
    assert len(notes["fresh"]) == len([n for n in notes["fresh"] if "attn2.to_" in n]) > 0


@pytest.mark.slow
def test_smoke_run_ships_a_refiner_that_loads_and_hands_off(tmp_path, monkeypatch):
    import train_mini_refiner as tr
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from engine import loader
    from engine.mini import models as ms
    from engine.presets import get_preset
    from engine.txt2img import run_to_end, text_to_image

    args = ["--smoke", "--assets", str(tmp_path / "assets"), "--out", str(tmp_path / "run"), "--threads", "1"]
    tr.main(args)
    folder = tmp_path / "assets" / tr.FOLDER
    assert {p.name for p in folder.iterdir()} == {"model_index.json", "unet", "scheduler", "training.json",
                                                  "README.md", "samples.png"}
    record = json.loads((folder / "training.json").read_text())
    assert record["steps"] == 4 and record["max_timestep"] == 200 and record["smoke"]
    base = ms.load_pipeline(MINI_SDXL)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(folder, text_encoder_2=base.text_encoder_2,
                                                               tokenizer_2=base.tokenizer_2, vae=base.vae)
    assert refiner.config.requires_aesthetics_score and refiner.unet.config.cross_attention_dim == 96

    # through the app's loader, paired with the shipped mini-SDXL: our hand-off equals diffusers'
    presets = tmp_path / "presets.json"
    presets.write_text(json.dumps([{"name": "mini refiner (test)", "kind": "sdxl-refiner", "path": str(folder),
                                    "base": "mini-SDXL (offline)"}]))
    monkeypatch.setenv("EXPLORER_MODELS", str(presets))
    loader.clear()
    try:
        preset = get_preset("mini-SDXL (offline)", "sdxl")
        pipe = loader.load(preset, device="cpu")
        got = run_to_end(text_to_image(pipe, preset, prompt="a red bag", width=64, height=64, seed=3, guidance_scale=2,
                                       num_inference_steps=5, refiner="mini refiner (test)", denoising_end=0.8))
        refiner = loader.load("mini refiner (test)", "sdxl-refiner", device="cpu")
        latents = pipe("a red bag", num_inference_steps=5, guidance_scale=2, denoising_end=0.8, output_type="latent",
                       generator=torch.Generator().manual_seed(3)).images
        ref = refiner("a red bag", image=latents, num_inference_steps=5, guidance_scale=2, denoising_start=0.8,
                      output_type="np", generator=torch.Generator().manual_seed(3)).images
    finally:
        loader.clear()
    assert got.info["refiner"]["base_steps"] == 4 and got.info["refiner"]["refiner_steps"] == 1
    assert float(np.abs(got.images - ref).max()) < 1e-4

    tr.main(args)  # done already: resumes at the last step, trains nothing, ships again
    assert json.loads((folder / "training.json").read_text())["steps"] == 4
