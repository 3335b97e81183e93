"""The anatomy of Stable Diffusion's UNet: parameters, FLOPs and attention memory, block by block.

The UNet is built from its config on PyTorch's ``meta`` device: every tensor
has a shape and a dtype but no storage, so SD 1.5 (0.86 B parameters) and SDXL
(2.6 B) are "built" and "run" in a second or two, offline, without weights. One
forward pass on meta tensors, under ``torch.utils.flop_counter.FlopCounterMode``,
gives the FLOPs of a real call with the same shapes.

References:

* Ronneberger et al. 2015, "U-Net": the encoder / bottleneck / decoder with
  skip connections that ``down_blocks``, ``mid_block`` and ``up_blocks`` are.
* Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
  Models" (CVPR): the UNet works on the VAE's latent, 8x smaller a side (§3),
  and reads the text through cross-attention (§3.3).
* Podell et al. 2023, "SDXL" §2.1 and Table 1: 2.6 B UNet parameters, no
  attention at the highest resolution, transformer depths 0, 2, 10.
* Vaswani et al. 2017, "Attention Is All You Need": softmax(Q Kᵀ / sqrt(d)) V
  makes a tokens x tokens matrix per head, so its memory grows with tokens²,
  i.e. with side⁴: twice the side, 4x the tokens, 16x the attention matrix.

Conventions (the numbers mean exactly this):

* ``flops_per_call``: one UNet forward on ONE sample (batch 1), as counted by
  ``FlopCounterMode``: 2 FLOPs per multiply-add of the matmuls and
  convolutions; normalisations, softmax and element-wise ops are not counted.
  A step with classifier-free guidance runs the UNet on a batch of 2
  ([uncond, cond]), so it costs 2 x ``flops_per_call``.
* ``attention_matrix_bytes``: one self-attention probability matrix,
  tokens² x heads x 2 bytes (float16, the dtype SD runs in on a GPU), batch 1,
  at the highest-resolution attention layer. This is what the classic
  ``AttnProcessor`` (baddbmm + softmax) materialises; fused SDPA / flash
  attention never stores it, which is why it is a speed and memory lever.
* ``pixel_space``: the same UNet with ``in_channels = out_channels = 3``,
  applied to the pixels themselves at the full image size: what latent
  diffusion saves.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention
from torch.utils.flop_counter import FlopCounterMode

from engine.errors import UserError, whole_number
from engine.presets import REPO_ROOT

CONFIG_DIR = REPO_ROOT / "assets" / "configs"
CONFIG_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler")
# Hub repo id -> folder of assets/configs holding its published configs.
HUB_CONFIGS = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd15",
    "runwayml/stable-diffusion-v1-5": "sd15",
    "stabilityai/stable-diffusion-xl-base-1.0": "sdxl-base",
    # SDXL Turbo (Sauer et al. 2023, adversarial diffusion distillation) fine-tunes SDXL's UNet:
    # same architecture, so the same block and FLOP figures (its config differs in sample_size only).
    "stabilityai/sdxl-turbo": "sdxl-base",
}
MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = 64, 2048  # the width and height check_image_size takes, in pixels
ATTENTION_DTYPE, ATTENTION_BYTES = "float16", 2
TEXT_TOKENS = 77  # CLIP's context length: encoder_hidden_states is [B, 77, cross_attention_dim]
SDXL_TIME_IDS = 6  # original (h, w), crop (top, left), target (h, w): Podell et al. 2023 §2.2
_ATTENTION_OPS = ("aten.bmm", "aten.baddbmm", "aten._scaled_dot_product")
_EMBEDDINGS = ("time_proj", "time_embedding", "class_embedding", "add_time_proj", "add_embedding",
               "encoder_hid_proj")
_OUTPUT = ("conv_norm_out", "conv_act", "conv_out")
CONVENTION = ("one UNet forward on one sample (batch 1); FLOPs = 2 x multiply-adds of matmuls and convolutions "
              "(torch.utils.flop_counter.FlopCounterMode); a classifier-free-guidance step runs batch 2, i.e. 2x. "
              f"Attention matrix: tokens^2 x heads x {ATTENTION_BYTES} bytes ({ATTENTION_DTYPE}), batch 1, "
              "at the highest-resolution self-attention.")


# ----------------------------------------------------------------------------
# Configs: shipped ones and those of the presets


def shipped_config(folder: str, part: str) -> dict:
    """A published config from ``assets/configs/<folder>/<part>.json`` (folder "sd15" or "sdxl-base")."""
    folders = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir())
    if folder not in folders:
        raise UserError(f"No shipped configs called {folder!r}. Choose one of: {', '.join(folders)}.")
    if part not in CONFIG_PARTS:
        raise UserError(f"Unknown model part {part!r}. Choose one of: {', '.join(CONFIG_PARTS)}.")
    path = CONFIG_DIR / folder / f"{part}.json"
    if not path.is_file():
        raise UserError(f"The shipped {folder} configs have no {part} (no {path.name}).")
    return json.loads(path.read_text(encoding="utf-8"))


def _pipeline_preset(preset_name: str):
    """The SD or SDXL preset called ``preset_name`` (matched by name only); ValueError listing choices."""
    from engine.presets import presets_for

    presets = presets_for("sd") + presets_for("sdxl")
    for preset in presets:
        if preset.name == preset_name:
            return preset
    choices = ", ".join(repr(p.name) for p in presets) or "none"
    raise UserError(f"Unknown model {preset_name!r}. Choose one of: {choices}.")


def preset_config(preset_name: str, part: str = "unet") -> dict:
    """The config of one part ("unet", "vae"...) of a pipeline preset, without any download.

    A preset with a local ``path`` has it in ``<path>/<part>/config.json``; a hub
    preset uses the published config shipped in ``assets/configs`` for its repo
    (``HUB_CONFIGS``). The user's text only ever selects a preset by name.
    """
    preset = _pipeline_preset(preset_name)
    if preset.is_hub:
        folder = HUB_CONFIGS.get(preset.repo)
        if folder is None:
            known = ", ".join(sorted(HUB_CONFIGS))
            raise UserError(f"No shipped config for '{preset.name}' (hub repo '{preset.repo}'); "
                             f"configs are shipped for: {known}.")
        return shipped_config(folder, part)
    path = Path(preset.path) / part / "config.json"
    if not path.is_file():
        raise UserError(f"'{preset.name}' has no {part}/config.json in its folder.")
    return json.loads(path.read_text(encoding="utf-8"))


def unet_config_for(preset_name: str) -> dict:
    """The UNet config of the SD / SDXL preset called ``preset_name`` ("SD 1.5", "mini-SD (offline)"...)."""
    return preset_config(preset_name, "unet")


def vae_scale_factor_for(preset_name: str) -> int:
    """2^(number of VAE blocks - 1): 8 for SD 1.5, SDXL and the mini models."""
    return 2 ** (len(preset_config(preset_name, "vae")["block_out_channels"]) - 1)


# ----------------------------------------------------------------------------
# Building and calling the UNet on the meta device


def check_image_size(width, height, vae_scale_factor: int = 8) -> tuple[int, int]:
    """Width and height as ints: multiples of 8 (and of the VAE factor), from 64 to 2048 pixels."""
    if isinstance(vae_scale_factor, bool) or not isinstance(vae_scale_factor, int) or vae_scale_factor < 1:
        raise UserError(f"vae_scale_factor must be a positive whole number, got {vae_scale_factor!r}.")
    sides = []
    for name, value in (("width", width), ("height", height)):
        value = whole_number(value, name, f" of pixels from {MIN_IMAGE_SIDE} to {MAX_IMAGE_SIDE}")
        if value % 8 or value % vae_scale_factor:
            step = max(8, vae_scale_factor)
            raise UserError(f"{name} must be a multiple of {step} (the VAE downsamples by {vae_scale_factor}), "
                             f"got {value}.")
        if not MIN_IMAGE_SIDE <= value <= MAX_IMAGE_SIDE:
            raise UserError(f"{name} must be between {MIN_IMAGE_SIDE} and {MAX_IMAGE_SIDE} pixels, got {value}.")
        sides.append(value)
    return sides[0], sides[1]


def _check_unet_config(config: dict) -> None:
    if not isinstance(config, dict):
        raise UserError(f"A UNet config must be a dict, got {type(config).__name__}.")
    name = config.get("_class_name", "UNet2DConditionModel")
    if name != "UNet2DConditionModel":
        raise UserError(f"Expected a UNet2DConditionModel config, got {name!r}.")
    if config.get("addition_embed_type") not in (None, "text_time"):
        raise UserError(f"addition_embed_type {config['addition_embed_type']!r} is not supported "
                         "(SD's None or SDXL's 'text_time').")
    if not isinstance(config.get("cross_attention_dim", 1280), int):
        raise UserError("Only configs with one cross_attention_dim for all blocks are supported.")


def build_unet_on_meta(config: dict) -> UNet2DConditionModel:
    """``UNet2DConditionModel.from_config(config)`` on the meta device: shapes only, no weights allocated."""
    _check_unet_config(config)
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config).eval()


def unet_inputs(config: dict, latent_height: int, latent_width: int, batch_size: int = 1,
                device: str | torch.device = "meta") -> dict:
    """The keyword arguments of one UNet call, shaped as diffusers' pipelines pass them.

    sample [B, in_channels, h, w]; timestep [B]; encoder_hidden_states
    [B, 77, cross_attention_dim]; SDXL ("text_time"): added_cond_kwargs with
    text_embeds [B, P] (the pooled text, P = projection_class_embeddings_input_dim
    - 6 x addition_time_embed_dim: 1280 for SDXL) and time_ids [B, 6];
    LCM-style configs (``time_cond_proj_dim``): timestep_cond [B, d].
    """
    with torch.device(device):
        kwargs = {
            "sample": torch.zeros(batch_size, config.get("in_channels", 4), latent_height, latent_width),
            "timestep": torch.full((batch_size,), 999),
            "encoder_hidden_states": torch.zeros(batch_size, TEXT_TOKENS, config.get("cross_attention_dim", 1280)),
        }
        if config.get("addition_embed_type") == "text_time":
            pooled = config["projection_class_embeddings_input_dim"] - SDXL_TIME_IDS * config["addition_time_embed_dim"]
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.zeros(batch_size, pooled),
                                           "time_ids": torch.zeros(batch_size, SDXL_TIME_IDS)}
        if config.get("time_cond_proj_dim"):
            kwargs["timestep_cond"] = torch.zeros(batch_size, config["time_cond_proj_dim"])
    return kwargs


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters (works on meta modules: no data is read)."""
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------
# One counted forward pass


def _parts(unet: UNet2DConditionModel) -> list[tuple[str, list[str]]]:
    """(row name, names of the UNet's children in it), in the order ``forward`` runs them."""
    embeddings = [n for n in _EMBEDDINGS if getattr(unet, n, None) is not None]
    rows = [("time_embedding", embeddings), ("conv_in", ["conv_in"])]
    rows += [(f"down_blocks.{i}", [f"down_blocks.{i}"]) for i in range(len(unet.down_blocks))]
    if unet.mid_block is not None:
        rows.append(("mid_block", ["mid_block"]))
    rows += [(f"up_blocks.{i}", [f"up_blocks.{i}"]) for i in range(len(unet.up_blocks))]
    rows.append(("conv_out", [n for n in _OUTPUT if getattr(unet, n, None) is not None]))
    return rows


class _ShapeProbe:
    """Forward hooks that record, during one call, each part's input and output shapes and,
    for every self-attention (``attn1``), its number of tokens and heads."""

    def __init__(self, unet: UNet2DConditionModel):
        self.unet, self.handles = unet, []
        self.inputs: dict[str, tuple] = {}
        self.outputs: dict[str, tuple] = {}
        self.self_attention: list[tuple[str, int, int]] = []  # (module name, tokens, heads)

    def _on_input(self, name):
        def hook(module, args, kwargs):
            x = kwargs.get("hidden_states", args[0] if args else None)
            self.inputs.setdefault(name, tuple(x.shape))
        return hook

    def _on_output(self, name):
        def hook(module, args, output):
            y = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
            self.outputs[name] = tuple(y.shape)
        return hook

    def _on_attention(self, name):
        def hook(module, args, kwargs):
            x = kwargs.get("hidden_states", args[0] if args else None)
            tokens = x.shape[1] if x.ndim == 3 else x.shape[-2] * x.shape[-1]
            self.self_attention.append((name, int(tokens), int(module.heads)))
        return hook

    def __enter__(self):
        for row, children in _parts(self.unet):
            if children:
                first, last = self.unet.get_submodule(children[0]), self.unet.get_submodule(children[-1])
                self.handles.append(first.register_forward_pre_hook(self._on_input(row), with_kwargs=True))
                self.handles.append(last.register_forward_hook(self._on_output(row)))
        for name, module in self.unet.named_modules():
            if isinstance(module, Attention) and not module.is_cross_attention and name.endswith("attn1"):
                self.handles.append(module.register_forward_pre_hook(self._on_attention(name), with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        return False


def _flops_of(counts: dict, key: str, attention_only: bool = False) -> int:
    ops = counts.get(key, {})
    return int(sum(v for op, v in ops.items() if not attention_only or str(op).startswith(_ATTENTION_OPS)))


def _transformer_summary(module: torch.nn.Module) -> tuple[int, bool, int | None]:
    """(transformer layers, has cross-attention, context width) of a block."""
    layers = [m for m in module.modules() if isinstance(m, BasicTransformerBlock)]
    cross = [m.attn2 for m in layers if getattr(m, "attn2", None) is not None and m.attn2.is_cross_attention]
    return len(layers), bool(cross), (int(cross[0].cross_attention_dim) if cross else None)


def _spatial(shape: tuple | None) -> list[int] | None:
    return list(shape[-2:]) if shape is not None and len(shape) == 4 else None


def _block_rows(unet, probe: _ShapeProbe, counts: dict, root: str) -> list[dict]:
    """One dict per part of the UNet: parameters, FLOPs, shapes, resnets, attention."""
    rows = []
    for row, children in _parts(unet):
        modules = [unet.get_submodule(c) for c in children]
        out = probe.outputs.get(row)
        layers, cross, context = (0, False, None)
        resnets = 0
        for m in modules:
            n, c, w = _transformer_summary(m)
            layers, cross, context = layers + n, cross or c, context or w
            resnets += len(getattr(m, "resnets", None) or [])
        tokens = [(t, h) for name, t, h in probe.self_attention if any(name.startswith(c + ".") for c in children)]
        rows.append({
            "name": row,
            "type": type(modules[0]).__name__ if len(modules) == 1 else "+".join(children),
            "parameters": sum(count_parameters(m) for m in modules),
            "flops": sum(_flops_of(counts, f"{root}.{c}") for c in children),
            "resolution": _spatial(probe.inputs.get(row)),
            "out_resolution": _spatial(out),
            "channels": int(out[1]) if out is not None and len(out) == 4 else (int(out[-1]) if out else None),
            "resnets": resnets,
            "transformer_layers": layers,
            "cross_attention": cross,
            "context_width": context,
            "attention_tokens": max(tokens)[0] if tokens else None,
            "attention_heads": max(tokens)[1] if tokens else None,
        })
    return rows


def _measure(config: dict, height: int, width: int, blocks: bool = True) -> dict:
    """Build on meta, run one counted forward on [1, C, height, width]; figures for one sample."""
    unet = build_unet_on_meta(config)
    inputs = unet_inputs(config, height, width)
    counter = FlopCounterMode(display=False)
    with _ShapeProbe(unet) as probe, counter, torch.no_grad():
        unet(**inputs)
    counts, root = counter.get_flop_counts(), type(unet).__name__
    self_keys = [f"{root}.{name}" for name, _, _ in probe.self_attention]
    tokens, heads = max(((t, h) for _, t, h in probe.self_attention), default=(0, 0))
    out = {
        "input_shape": list(inputs["sample"].shape),
        "total_parameters": count_parameters(unet),
        "flops_per_call": _flops_of(counts, "Global"),
        "attention_flops": _flops_of(counts, "Global", attention_only=True),
        "self_attention_score_flops": sum(_flops_of(counts, k, attention_only=True) for k in set(self_keys)),
        "attention_tokens": tokens,
        "attention_heads": heads,
        "attention_matrix_bytes": tokens**2 * heads * ATTENTION_BYTES,
    }
    if blocks:
        out["blocks"] = _block_rows(unet, probe, counts, root)
    return out


# ----------------------------------------------------------------------------
# The public figures


def unet_flops(config: dict, width: int, height: int, vae_scale_factor: int = 8) -> int:
    """FLOPs of one UNet forward on one sample (batch 1) for a ``width`` x ``height`` image."""
    width, height = check_image_size(width, height, vae_scale_factor)
    return _measure(config, height // vae_scale_factor, width // vae_scale_factor, blocks=False)["flops_per_call"]


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def unet_anatomy(config: dict, width: int, height: int, vae_scale_factor: int = 8) -> dict:
    """The UNet of ``config`` taken apart at one image size; a JSON-able dict.

    Latent-space figures (the UNet as SD runs it, on [1, in_channels, H/f, W/f]
    with f = ``vae_scale_factor``): ``total_parameters``, ``flops_per_call``,
    ``attention_flops`` (the Q Kᵀ and P V matmuls of every attention),
    ``self_attention_score_flops`` (those of the self-attentions only: they
    grow with tokens²), ``attention_tokens`` / ``attention_heads`` /
    ``attention_matrix_bytes`` at the highest-resolution self-attention, and
    ``blocks``: time_embedding, conv_in, the down blocks, mid block, up blocks,
    conv_out, each with name, parameters, flops, resolution ([h, w] at the
    block's input), out_resolution, channels (out), resnets,
    transformer_layers, cross_attention, context_width (cross_attention_dim or
    None), attention_tokens and attention_heads. ``pixel_space``: the same
    figures for the UNet with 3 input and output channels run on the
    [1, 3, H, W] pixels; ``pixel_over_latent``: their ratios.
    See the module docstring for the conventions (batch 1, float16 matrix).
    """
    width, height = check_image_size(width, height, vae_scale_factor)
    latent = _measure(config, height // vae_scale_factor, width // vae_scale_factor)
    pixel = _measure(dict(config, in_channels=3, out_channels=3), height, width)
    keys = ("flops_per_call", "attention_tokens", "attention_matrix_bytes", "self_attention_score_flops")
    return {
        "width": width,
        "height": height,
        "vae_scale_factor": vae_scale_factor,
        "convention": CONVENTION,
        "attention_dtype": ATTENTION_DTYPE,
        **latent,
        "pixel_space": pixel,
        "pixel_over_latent": {k: _ratio(pixel[k], latent[k]) for k in keys},
    }


def anatomy_for_preset(preset_name: str, width: int, height: int) -> dict:
    """``unet_anatomy`` of a preset's UNet (by preset name), with the preset's VAE factor."""
    anatomy = unet_anatomy(unet_config_for(preset_name), width, height, vae_scale_factor_for(preset_name))
    return {"model": preset_name, **anatomy}
