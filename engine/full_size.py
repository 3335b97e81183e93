"""Full-size Stable Diffusion 1.5 and SDXL base pipelines with RANDOM weights, built from shipped configs.

``build_random_pipeline("sd15")`` gives a ``StableDiffusionPipeline`` and
``build_random_pipeline("sdxl-base")`` a ``StableDiffusionXLPipeline`` whose
UNet, VAE, text encoder(s) and scheduler come from the published configs in
``assets/configs`` (see its README) with seeded random weights
(``from_config``), and whose tokenizers are the project's CLIP tokenizers in
``assets/tokenizers``. Nothing is downloaded. The architecture, and so every
tensor shape, FLOP and byte, is the real one: they are for timing, memory and
FLOP measurements (``scripts/bench_gpu.py``), and for tests.

Never present such a pipeline's images as real: with random weights they are
noise, not what Stable Diffusion would draw.

``tiny=True`` builds the same classes (same block types, two text encoders and
``text_time`` conditioning for SDXL, a VAE that downsamples by 8) with tiny
widths and depths, for CPU tests and ``bench_gpu.py --tiny``.

References: Rombach et al. 2022 (LDM, §3: VAE + UNet + CLIP text encoder);
Podell et al. 2023 (SDXL, §2.1: two text encoders, 2048-wide context, pooled
text and size/crop conditioning).
"""

from __future__ import annotations


import torch

from engine.presets import TOKENIZER_DIRS
from engine.unet.anatomy import shipped_config

MODELS = {
    "sd15": ("StableDiffusionPipeline", ("unet", "vae", "text_encoder", "scheduler")),
    "sdxl-base": ("StableDiffusionXLPipeline", ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler")),
}
SCHEDULER_CLASSES = ("PNDMScheduler", "EulerDiscreteScheduler")
TEXT_ENCODERS = ("CLIPTextModel", "CLIPTextModelWithProjection")

# Tiny versions: the same config with these values replaced. Text encoders 32 wide, so SD's context is 32
# and SDXL's 32 + 32 = 64; SDXL's added embedding takes 6 time ids x 8 + the 32-wide pooled text = 80.
_TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
              "projection_dim": 32}
_TINY_VAE = {"block_out_channels": [8, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 64}
TINY_OVERRIDES = {
    "sd15": {
        "unet": {"block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8,
                 "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                 "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
                 "cross_attention_dim": 32, "attention_head_dim": 4},
        "vae": _TINY_VAE, "text_encoder": _TINY_TEXT,
    },
    "sdxl-base": {
        "unet": {"block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8,
                 "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                 "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
                 "attention_head_dim": [2, 4], "transformer_layers_per_block": [1, 2],
                 "cross_attention_dim": 64, "addition_time_embed_dim": 8,
                 "projection_class_embeddings_input_dim": 80},
        "vae": _TINY_VAE, "text_encoder": _TINY_TEXT, "text_encoder_2": _TINY_TEXT,
    },
}


def check_model_name(name: str) -> str:
    if name not in MODELS:
        raise ValueError(f"Unknown full-size model {name!r}. Choose one of: {', '.join(MODELS)}.")
    return name


def component_configs(name: str, tiny: bool = False) -> dict[str, dict]:
    """The configs of a model's parts ("unet", "vae", "text_encoder"[, "text_encoder_2"], "scheduler")."""
    parts = MODELS[check_model_name(name)][1]
    configs = {part: shipped_config(name, part) for part in parts}
    if tiny:
        for part, changes in TINY_OVERRIDES[name].items():
            configs[part] = dict(configs[part], **changes)
    return configs


def _text_encoder(config: dict):
    import transformers

    cls_name = config.get("architectures", ["CLIPTextModel"])[0]
    if cls_name not in TEXT_ENCODERS:
        raise ValueError(f"Unsupported text encoder class {cls_name!r}; expected one of {', '.join(TEXT_ENCODERS)}.")
    # transformers 5 would make the inner text model in the config's published "torch_dtype" (float16 for
    # SDXL) and the projection in float32: build in float32, the caller casts the whole module.
    config = {k: v for k, v in config.items() if k not in ("torch_dtype", "dtype")}
    return getattr(transformers, cls_name)(transformers.CLIPTextConfig.from_dict(config))


def _scheduler(config: dict):
    import diffusers

    if config["_class_name"] not in SCHEDULER_CLASSES:
        raise ValueError(f"Unsupported scheduler {config['_class_name']!r}; expected one of {', '.join(SCHEDULER_CLASSES)}.")
    return getattr(diffusers, config["_class_name"]).from_config(config)


def build_components(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                     tiny: bool = False, seed: int = 0) -> dict:
    """The modules and scheduler of a model, with seeded random weights, made directly on ``device``.

    ``device="meta"`` allocates nothing (shapes only: parameter counts, FLOPs).
    Each module is seeded with ``torch.manual_seed(seed + k)`` before it is made
    (k = its position), so a build is reproducible on one kind of device.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    configs = component_configs(name, tiny)
    makers = {"unet": UNet2DConditionModel.from_config, "vae": AutoencoderKL.from_config,
              "text_encoder": _text_encoder, "text_encoder_2": _text_encoder}
    components = {"scheduler": _scheduler(configs.pop("scheduler"))}  # its tables stay on the CPU
    with torch.device(device):
        for k, (part, config) in enumerate(configs.items()):
            torch.manual_seed(seed + k)
            module = makers[part](config).eval().requires_grad_(False)
            components[part] = module if dtype == torch.float32 else module.to(dtype=dtype)
    return components


def build_random_pipeline(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                          tiny: bool = False, seed: int = 0):
    """A whole diffusers pipeline ("sd15" or "sdxl-base") with random weights, on ``device`` in ``dtype``.

    UNet, VAE, text encoder(s) and scheduler from ``assets/configs/<name>``
    (``tiny``: the same classes, tiny sizes), tokenizers from
    ``assets/tokenizers``; no safety checker. Random weights: for measurements
    only, never present its images as real.
    """
    import diffusers
    from transformers import CLIPTokenizer

    if str(device) == "meta":
        raise ValueError("A pipeline cannot run on the meta device; use build_components(name, device='meta').")
    pipeline_class = getattr(diffusers, MODELS[check_model_name(name)][0])
    components = build_components(name, device, dtype, tiny, seed)
    components["tokenizer"] = CLIPTokenizer.from_pretrained(TOKENIZER_DIRS["tokenizer"])
    if name == "sdxl-base":
        components["tokenizer_2"] = CLIPTokenizer.from_pretrained(TOKENIZER_DIRS["tokenizer_2"])
        pipe = pipeline_class(**components)
    else:
        pipe = pipeline_class(**components, safety_checker=None, feature_extractor=None,
                              requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_weights_preset(name: str, tiny: bool = False):
    """An ``engine.presets.Preset`` for our loop (``engine.txt2img.text_to_image``) to run such a pipeline.

    Kind "sd" or "sdxl", sizes 64 to 2048 px; it names no folder or repo, so the
    loader can never load it: the pipeline comes from ``build_random_pipeline``.
    """
    from engine.presets import Preset

    label = {"sd15": "SD 1.5", "sdxl-base": "SDXL base"}[check_model_name(name)]
    return Preset(name=f"{'tiny ' if tiny else ''}{label} (random weights)", kind="sd" if name == "sd15" else "sdxl",
                  options={"min_size": 64, "max_size": 2048, "random_weights": True})
