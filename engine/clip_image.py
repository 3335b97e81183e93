"""CLIP image towers that CLIP guidance reads: the mini one trained against a locked text encoder, or a hub CLIP.

Both expose the same two methods, so ``engine.txt2img.clip_guidance`` does not
care which it has:

* ``embed_images(images)``: pictures [B, 3, H, W] in [0, 1] -> unit vectors [B, E];
  differentiable, since guidance follows its gradient.
* ``embed_text(pipe, ids)``: token ids [B, 77] (the pipeline's first tokenizer) -> unit vectors [B, E].

``MiniImageEncoder`` is a small CNN trained *against the frozen mini-SD text
encoder* (``scripts/train_clip_tower.py``): LiT-style (Zhai et al. 2022,
"LiT: Zero-Shot Transfer with Locked-image text Tuning"), with the roles swapped:
the text side is locked, the image side learns. The mini CLIP's own text
projection was dropped after its training, so a 64x64 linear ``text_projection``
on the encoder's pooled output is learned with the tower (the encoder itself is
untouched, and with it every UNet). Its folder (``<pipeline>/image_encoder``)
holds ``config.json`` and fp16 ``model.safetensors``.

``HubCLIP`` wraps transformers' ``CLIPModel`` (for SD 1.5 on the Space,
``openai/clip-vit-base-patch32``, Radford et al. 2021): 224 px input normalised
with CLIP's mean and std, its own text tower on the pipeline's token ids, as
diffusers' community ``clip_guided_stable_diffusion`` pipeline does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: CLIP's pixel mean and std (OpenAI's preprocessing), RGB.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_HUB_CLIP = "openai/clip-vit-base-patch32"



def conv_body(width: int) -> nn.Sequential:
    """The mini image towers' body: pictures [B, 3, H, W] -> flattened features [B, 4 * width * (H/16) * (W/16)].
    Four stride-2 3x3 convolutions (widths width, 2w, 4w, 4w), each with GroupNorm and GELU; no pooling, so the
    features keep where the item is."""
    chans = [3, width, 2 * width, 4 * width, 4 * width]
    layers = []
    for cin, cout in zip(chans[:-1], chans[1:]):
        layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8 if cout % 8 == 0 else 1, cout),
                   nn.GELU()]
    return nn.Sequential(*layers, nn.Flatten())

class MiniImageEncoder(nn.Module):
    """A small CNN image tower [B, 3, 64, 64] -> [B, E], plus the learned projection of the locked text side.

    Four stride-2 convolutions (64 -> 4 px) with GroupNorm and GELU, then a
    linear ``visual_projection`` of the flattened 4x4 map (no global pooling, so
    the embedding keeps *where* the item is; the same body as the mini CLIP's
    tower in ``engine.mini.models.ImageTower``). ``logit_scale`` is CLIP's
    learned temperature (log 1/0.07 at the start).
    """

    def __init__(self, width: int = 32, embed_dim: int = 64, text_dim: int = 64, image_size: int = 64):
        super().__init__()
        self.config = dict(width=width, embed_dim=embed_dim, text_dim=text_dim, image_size=image_size)
        self.body = conv_body(width)
        cells = (image_size // 16) ** 2
        self.visual_projection = nn.Linear(4 * width * cells, embed_dim)
        self.text_projection = nn.Linear(text_dim, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(2.6593))

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pictures [B, 3, S, S] in [-1, 1] (S = ``image_size``) -> unit vectors [B, E] (training's entry)."""
        return F.normalize(self.visual_projection(self.body(pixels)), dim=-1)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Pictures [B, 3, H, W] in [0, 1], resized to ``image_size`` when needed -> unit vectors [B, E]."""
        size = self.config["image_size"]
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return self.embed_pixels(images * 2 - 1)

    def embed_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """The locked text encoder's pooled output [B, D] -> unit vectors [B, E]."""
        return F.normalize(self.text_projection(pooled), dim=-1)

    def embed_text(self, pipe, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, L] -> unit vectors [B, E], through ``pipe.text_encoder``'s pooled output (EOS token)."""
        pooled = pipe.text_encoder(ids.to(pipe.text_encoder.device)).pooler_output
        return self.embed_pooled(pooled.to(self.text_projection.weight.dtype))

    def save(self, folder: str | Path, dtype: torch.dtype = torch.float16) -> Path:
        """``folder/config.json`` and ``folder/model.safetensors`` (weights in ``dtype``)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps({"model_type": "mini-clip-image-tower", **self.config},
                                                     indent=2) + "\n")
        state = {k: v.detach().to(dtype).contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME))
        return folder

    @classmethod
    def from_folder(cls, folder: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
        """Load what ``save`` wrote; frozen (no gradients for the weights) and in eval mode."""
        from safetensors.torch import load_file

        folder = Path(folder)
        config = json.loads((folder / CONFIG_NAME).read_text())
        model = cls(**{k: config[k] for k in ("width", "embed_dim", "text_dim", "image_size")})
        model.load_state_dict({k: v.float() for k, v in load_file(str(folder / WEIGHTS_NAME)).items()})
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _features(output) -> torch.Tensor:
    """``get_*_features`` returns a tensor in transformers 4 and an output with ``pooler_output`` in 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class HubCLIP(nn.Module):
    """transformers' ``CLIPModel`` behind the two methods CLIP guidance uses (diffusers' community pipeline's
    preprocessing: resize to the vision tower's size, CLIP's mean and std; no cutouts)."""

    def __init__(self, clip_model):
        super().__init__()
        self.clip_model = clip_model
        self.image_size = int(clip_model.config.vision_config.image_size)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Pictures [B, 3, H, W] in [0, 1] -> unit vectors [B, projection_dim]."""
        size = self.image_size
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        pixels = ((images - self.mean.to(images)) / self.std.to(images)).to(self.clip_model.dtype)
        return F.normalize(_features(self.clip_model.get_image_features(pixel_values=pixels)).float(), dim=-1)

    def embed_text(self, pipe, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B, 77] (SD's CLIP tokenizer: the same BPE) -> unit vectors [B, projection_dim]."""
        ids = ids.to(self.clip_model.device)
        return F.normalize(_features(self.clip_model.get_text_features(input_ids=ids)).float(), dim=-1)


def load_image_encoder(preset, device: str, dtype: torch.dtype, local_only: bool):
    """``engine.loader``'s loader for kind "clip-image": a folder with ``config.json`` of a mini tower, else a
    ``CLIPModel`` (hub repo or folder). Frozen, in eval mode."""
    if not preset.is_hub:
        folder = Path(preset.source) / (preset.subfolder or "")
        config = json.loads((folder / CONFIG_NAME).read_text())
        if config.get("model_type") == "mini-clip-image-tower":
            return MiniImageEncoder.from_folder(folder, device, torch.float32)
    from transformers import CLIPModel

    kwargs = {"local_files_only": local_only}
    if preset.subfolder:
        kwargs["subfolder"] = preset.subfolder
    model = CLIPModel.from_pretrained(preset.source, dtype=dtype, **kwargs)
    return HubCLIP(model.eval().requires_grad_(False)).to(device)
