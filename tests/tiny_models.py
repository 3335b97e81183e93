"""Tiny, seeded, randomly initialised Stable Diffusion components, built from configs.

The same recipe as diffusers' own pipeline tests (``get_dummy_components``),
with two changes: the tokenizers are the project's real CLIP tokenizers (so the
ids are real), and the VAE downsamples by 8 like the real one (so a 64x64 image
has an 8x8x4 latent). Everything is saved with ``save_pretrained`` in the
diffusers folder layout, so the app loads it through a preset exactly as it
would load a hub repo.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_L = REPO_ROOT / "assets" / "tokenizers" / "clip-vit-l-14"
TOKENIZER_G = REPO_ROOT / "assets" / "tokenizers" / "clip-vit-bigg-14"

#: A tiny class-conditional UNet2DModel for the Fashion-MNIST sampler (labels 0-9 and the null class 10).
TINY_CLASS_UNET = dict(
    sample_size=32, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    norm_num_groups=4, num_class_embeds=11,
)


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),  # 3 downsamples: factor 8, like SD's VAE
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
    )


def _text_config(projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    kwargs = dict(
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, vocab_size=49408,
        hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4,
        num_hidden_layers=3, hidden_act="gelu", max_position_embeddings=77,
    )
    if projection_dim is not None:
        kwargs["projection_dim"] = projection_dim
    return CLIPTextConfig(**kwargs)


def tiny_sd_components() -> dict:
    """Components of a tiny SD 1.x pipeline (cross-attention dim 32, PNDM like SD 1.5)."""
    from diffusers import PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_text_config())
    return {
        "unet": unet, "scheduler": scheduler, "vae": tiny_vae(), "text_encoder": text_encoder,
        "tokenizer": CLIPTokenizer.from_pretrained(TOKENIZER_L),
        "safety_checker": None, "feature_extractor": None, "image_encoder": None,
    }


def tiny_sdxl_components() -> dict:
    """Components of a tiny SDXL pipeline: two text encoders, ``text_time`` added conditioning."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=80,  # 6 time ids * 8 + pooled 32
        cross_attention_dim=64,  # 32 + 32, the two encoders' hidden states concatenated
        norm_num_groups=4,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_text_config())
    torch.manual_seed(1)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(projection_dim=32))
    return {
        "unet": unet, "scheduler": scheduler, "vae": tiny_vae(),
        "text_encoder": text_encoder, "text_encoder_2": text_encoder_2,
        "tokenizer": CLIPTokenizer.from_pretrained(TOKENIZER_L),
        "tokenizer_2": CLIPTokenizer.from_pretrained(TOKENIZER_G),
        "image_encoder": None, "feature_extractor": None,
    }


def tiny_sdxl_refiner_unet():
    """A tiny SDXL refiner UNet: cross-attention on the second encoder only (32 wide), and five time ids
    (the aesthetic score in place of the target size): 5 * 8 + pooled 32 = 72, as the refiner's config."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(2)
    return UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=72, cross_attention_dim=32, norm_num_groups=4,
    )


def tiny_sdxl_refiner(base):
    """A tiny ``StableDiffusionXLImg2ImgPipeline`` refiner for the SDXL pipeline ``base``: its own UNet and
    scheduler, the base's ``text_encoder_2``, ``tokenizer_2`` and VAE (as diffusers' refiner example)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline

    scheduler = EulerDiscreteScheduler.from_config(base.scheduler.config)
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=base.vae, text_encoder=None, text_encoder_2=base.text_encoder_2, tokenizer=None,
        tokenizer_2=base.tokenizer_2, unet=tiny_sdxl_refiner_unet(), scheduler=scheduler,
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_sd(path: Path) -> Path:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny_sd_components(), requires_safety_checker=False)
    pipe.save_pretrained(path)
    return path


def save_tiny_sdxl(path: Path) -> Path:
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components())
    pipe.save_pretrained(path)
    return path


def save_tiny_sdxl_refiner(path: Path, base_dir: Path) -> Path:
    """The tiny refiner for the tiny SDXL saved in ``base_dir``: only its UNet, scheduler and model_index.json,
    as the loader takes ``text_encoder_2``, ``tokenizer_2`` and the VAE from the paired base."""
    import shutil

    from diffusers import StableDiffusionXLPipeline

    tiny_sdxl_refiner(StableDiffusionXLPipeline.from_pretrained(base_dir)).save_pretrained(path)
    for shared in ("text_encoder_2", "tokenizer_2", "vae"):
        shutil.rmtree(Path(path) / shared)
    return path


def save_tiny_vae(path: Path) -> Path:
    tiny_vae().save_pretrained(path)
    return path


def write_test_presets(root: Path) -> Path:
    """Save the tiny models under ``root`` and write a presets file for ``EXPLORER_MODELS``.

    Besides the tiny SD, SDXL (with its refiner) and VAE, it lists a hub preset whose repo does
    not exist, to check that a broken preset fails politely.
    """
    root = Path(root)
    entries = [
        {"name": "tiny-SD (test)", "kind": "sd", "path": str(save_tiny_sd(root / "tiny-sd")),
         "min_size": 32, "max_size": 256, "default_size": 64},
        {"name": "tiny-SDXL (test)", "kind": "sdxl", "path": str(save_tiny_sdxl(root / "tiny-sdxl")),
         "min_size": 32, "max_size": 256, "default_size": 64},
        {"name": "tiny-SDXL refiner (test)", "kind": "sdxl-refiner", "base": "tiny-SDXL (test)",
         "path": str(save_tiny_sdxl_refiner(root / "tiny-sdxl-refiner", root / "tiny-sdxl"))},
        {"name": "tiny-VAE (test)", "kind": "vae", "path": str(save_tiny_vae(root / "tiny-vae"))},
        {"name": "Missing hub model (test)", "kind": "sd", "repo": "explorer-tests/this-repo-does-not-exist"},
    ]
    presets = root / "presets.json"
    presets.write_text(json.dumps(entries, indent=1))
    return presets
