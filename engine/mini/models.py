"""A miniature Stable Diffusion and a miniature SDXL, from the real diffusers and transformers classes.

Every part is the class the full-size model uses, only smaller, and is saved in
the diffusers folder layout, so ``StableDiffusionPipeline.from_pretrained(path)``
and ``StableDiffusionXLPipeline.from_pretrained(path)`` load the result:

=================  ==========================================  ==========================================
part               mini-SD (like SD 1.5)                       mini-SDXL (like SDXL base)
=================  ==========================================  ==========================================
tokenizer(s)       the project's CLIP ViT-L/14 tokenizer       + the ViT-bigG/14 one (pad "!") as tokenizer_2
text encoder(s)    ``CLIPTextModel``, width 64                 + ``CLIPTextModelWithProjection``, width 96
VAE                ``AutoencoderKL``, 4 latent channels, 3 downsamples: 64x64x3 -> 8x8x4 (48x fewer values)
UNet               ``UNet2DConditionModel``, cross-attention   the same + ``addition_embed_type="text_time"``
scheduler          ``PNDMScheduler``, SD 1.5's config          ``EulerDiscreteScheduler``, SDXL's config
=================  ==========================================  ==========================================

The text encoders are pre-trained as a mini CLIP (Radford et al. 2021,
"Learning Transferable Visual Models From Natural Language Supervision"):
a small image tower and the text towers learn, with the symmetric InfoNCE loss,
to match each picture with its caption. Then they are frozen, as Stable
Diffusion freezes CLIP (Rombach et al. 2022, §3.3), and the UNets learn to
denoise VAE latents (scaled by ``scaling_factor`` = 1 / std of the latents,
LDM §4.3.2 and appendix D.1) given the text encoders' hidden states.

``MODEL_SIZES["full"]`` is what ships (sized for a ~2 hour training on 2 CPU cores,
≤ 60 MB of fp16 weights in all); ``MODEL_SIZES["smoke"]`` is the same architecture at
toy width, for tests and ``--smoke`` runs. Shapes below: B images, L = 77 tokens.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.clip_image import conv_body
from engine.mini.data import IMAGE_SIZE  # 64: the pictures the mini models make are the data's size
from engine.presets import TOKENIZER_DIRS
from engine.noise_schedule import SD_NOISE_SCHEDULE
from engine.unet.anatomy import count_parameters  # noqa: F401 - the training scripts read it here

LATENT_SIZE = 8  # 64 / 2**3
LATENT_CHANNELS = 4
BOS, EOS = 49406, 49407
VOCAB_SIZE = 49408

def _sizes(text: tuple, text_2: tuple, vae: tuple, unet: tuple, tower: tuple) -> dict:
    """One size's configs from compact tuples: text (width, mlp, layers, heads), text_2 (the same +
    projection), vae (block channels, norm groups, ResNets per level: 2 in "full", as shipped since its decoder
    was grown by ``deepen_vae``), unet (block channels, head dim, norm groups, time-id embedding width), tower
    (image tower width, embedding width)."""
    def clip(width, mlp, layers, heads):
        return dict(hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads)

    return dict(
        text=clip(*text), text_2=dict(clip(*text_2[:4]), projection_dim=text_2[4]),
        vae=dict(block_out_channels=vae[0], layers_per_block=vae[2], norm_num_groups=vae[1]),
        unet=dict(block_out_channels=unet[0], layers_per_block=1, attention_head_dim=unet[1],
                  norm_num_groups=unet[2], addition_time_embed_dim=unet[3]),
        image_tower=dict(width=tower[0], embed_dim=tower[1]),
    )


MODEL_SIZES: dict[str, dict] = {
    "full": _sizes(text=(64, 256, 4, 4), text_2=(96, 384, 4, 4, 96), vae=((16, 32, 64, 64), 16, 2),
                   unet=((64, 128, 128), 4, 32, 32), tower=(32, 64)),
    "smoke": _sizes(text=(16, 32, 1, 2), text_2=(24, 48, 1, 2, 24), vae=((8, 8, 16, 16), 4, 1),
                    unet=((16, 32, 32), 2, 8, 8), tower=(8, 16)),
}



def _size(size: str) -> dict:
    if size not in MODEL_SIZES:
        raise ValueError(f"Unknown size {size!r}; choose one of {', '.join(MODEL_SIZES)}.")
    return MODEL_SIZES[size]


# ----------------------------------------------------------------------------
# Components


def text_encoder_config(size: str = "full", second: bool = False):
    """``CLIPTextConfig`` for the first (ViT-L-like) or ``second`` (ViT-bigG-like) text encoder.

    The vocabulary (49,408) and window (77 positions) are CLIP's, so the real
    tokenizer's ids go in unchanged. Like the real ones, the first uses
    quick_gelu and the second gelu and a projection.
    """
    from transformers import CLIPTextConfig

    dims = dict(_size(size)["text_2" if second else "text"])
    return CLIPTextConfig(vocab_size=VOCAB_SIZE, max_position_embeddings=77, bos_token_id=BOS, eos_token_id=EOS,
                          pad_token_id=0 if second else EOS, hidden_act="gelu" if second else "quick_gelu",
                          **dims)


def make_text_encoder(size: str = "full"):
    """A ``CLIPTextModel``: ids [B, L] -> last_hidden_state [B, L, D], pooler_output [B, D]."""
    from transformers import CLIPTextModel

    return CLIPTextModel(text_encoder_config(size))


def make_text_encoder_2(size: str = "full"):
    """A ``CLIPTextModelWithProjection``: ids [B, L] -> text_embeds [B, P] (SDXL's pooled), hidden states."""
    from transformers import CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(text_encoder_config(size, second=True))


def make_vae(size: str = "full", scaling_factor: float = 1.0):
    """``AutoencoderKL`` with 4 latent channels and 3 downsamples: [B, 3, 64, 64] -> [B, 4, 8, 8]."""
    from diffusers import AutoencoderKL

    cfg = _size(size)["vae"]
    levels = len(cfg["block_out_channels"])
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
                         down_block_types=("DownEncoderBlock2D",) * levels,
                         up_block_types=("UpDecoderBlock2D",) * levels,
                         sample_size=IMAGE_SIZE, scaling_factor=scaling_factor, **cfg)


def deepen_vae(vae, layers_per_block: int):
    """The same ``AutoencoderKL`` with ``layers_per_block`` ResNets per level (decoder: one more), computing
    exactly the same function: each added ResNet starts with a zero ``conv2``, so it adds 0 to its skip path
    (zero-initialised residuals, Goyal et al. 2017; function-preserving growth, Chen et al. 2016, Net2Net).
    The encoder and the latent space stay, so every UNet trained on them still fits; fine-tuning the decoder
    then gives it the extra depth. Returns a new model in fp32."""
    from diffusers import AutoencoderKL

    old = vae.config.layers_per_block
    if layers_per_block < old:
        raise ValueError(f"deepen_vae adds layers: the VAE has {old} per block, asked for {layers_per_block}.")
    config = {k: v for k, v in vae.config.items() if not k.startswith("_")}  # not where the VAE was loaded from
    deeper = AutoencoderKL.from_config({**config, "layers_per_block": layers_per_block})
    missing, unexpected = deeper.load_state_dict(vae.state_dict(), strict=False)
    if unexpected:
        raise ValueError(f"deepen_vae: the VAE has weights the deeper one lacks: {unexpected[:3]}")
    added = {k.rsplit(".", 2)[0] for k in missing}  # "decoder.up_blocks.0.resnets.2.conv1.weight" -> its ResNet
    modules = dict(deeper.named_modules())
    if any(".resnets." not in name or not hasattr(modules.get(name), "conv2") for name in added):
        raise ValueError(f"deepen_vae: only whole ResNets should be new, got {sorted(added)[:3]}")
    for name in added:
        resnet = modules[name]
        torch.nn.init.zeros_(resnet.conv2.weight)
        torch.nn.init.zeros_(resnet.conv2.bias)
    return deeper


def unet_config(size: str = "full", sdxl: bool = False) -> dict:
    """``UNet2DConditionModel`` kwargs: cross-attention at 8x8 and 4x4 and in the middle, plain ResNets at 2x2.

    mini-SDXL is the same UNet with SDXL's added conditioning
    (``addition_embed_type="text_time"``): the pooled text embedding and six
    sinusoidally embedded numbers (original size, crop, target size) are added
    to the timestep embedding (Podell et al. 2023, §2.2). Its cross-attention
    reads both encoders' hidden states, concatenated.
    """
    s = _size(size)
    u = dict(s["unet"])
    time_dim = u.pop("addition_time_embed_dim")
    cfg = dict(sample_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
               down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
               cross_attention_dim=s["text"]["hidden_size"], **u)
    if sdxl:
        cfg.update(cross_attention_dim=s["text"]["hidden_size"] + s["text_2"]["hidden_size"],
                   addition_embed_type="text_time", addition_time_embed_dim=time_dim,
                   projection_class_embeddings_input_dim=6 * time_dim + s["text_2"]["projection_dim"],
                   use_linear_projection=True)
    return cfg


def make_unet(size: str = "full", sdxl: bool = False):
    """UNet: latents [B, 4, 8, 8], timestep, hidden states [B, 77, D] (+ SDXL's added cond) -> noise [B, 4, 8, 8]."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**unet_config(size, sdxl))


def pipeline_scheduler(sdxl: bool = False):
    """The sampler each pipeline ships with: SD 1.5's PNDM or SDXL's Euler, with their configs."""
    from diffusers import EulerDiscreteScheduler, PNDMScheduler

    if sdxl:
        return EulerDiscreteScheduler(**SD_NOISE_SCHEDULE, timestep_spacing="leading", steps_offset=1,
                                      interpolation_type="linear", use_karras_sigmas=False)
    return PNDMScheduler(**SD_NOISE_SCHEDULE, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False,
                         timestep_spacing="leading")


def load_tokenizers() -> dict:
    """The project's real CLIP tokenizers: {"tokenizer": ViT-L/14's, "tokenizer_2": ViT-bigG/14's}."""
    from transformers import CLIPTokenizer

    return {name: CLIPTokenizer.from_pretrained(str(path)) for name, path in TOKENIZER_DIRS.items()}


# ----------------------------------------------------------------------------
# The mini CLIP: an image tower against the text encoder(s), InfoNCE (Radford et al. 2021)


class ImageTower(nn.Module):
    """A small CNN: pictures [B, 3, 64, 64] in [-1, 1] -> one L2-normalised embedding per text tower.

    Four stride-2 convolutions (64 -> 4 px), then a linear head per text
    encoder width (``out_dims``) on the flattened 4x4 map: no global pooling,
    so the embedding keeps *where* the item is, and captions with place words
    ("on the left") can be matched.
    """

    def __init__(self, width: int = 32, out_dims: tuple[int, ...] = (64,)):
        super().__init__()
        self.body = conv_body(width)
        self.heads = nn.ModuleList(nn.Linear(4 * width * 16, d) for d in out_dims)

    def forward(self, pictures: torch.Tensor) -> list[torch.Tensor]:
        features = self.body(pictures)
        return [F.normalize(head(features), dim=-1) for head in self.heads]


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
                     fits: torch.Tensor, negative_emb: torch.Tensor | None = None,
                     negative_fits: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP's loss) over a batch of normalised embeddings [B, E].

    A caption names only a class and perhaps a colour, so a batch holds many
    pairs that match equally well: ``fits`` [B, B] (bool, fits[i, j] = caption
    j describes picture i, the diagonal true) marks them all as positives, with
    equal weight, instead of as negatives. With ``fits`` the identity this is
    CLIP's loss exactly.

    ``negative_emb`` [K, E]: extra captions that belong to no picture of their
    own, such as a two-item caption with its colours swapped (NegCLIP's hard
    negatives, Yuksekgonul et al. 2023). They join the image-to-text side as
    more columns; ``negative_fits`` [B, K] marks a picture they do describe
    (all false unless given).
    """
    scale = logit_scale.exp().clamp(max=100)
    logits = scale * image_emb @ text_emb.t()
    fits = fits.float()
    text_to_image = F.cross_entropy(logits.t(), fits.t() / fits.t().sum(1, keepdim=True))
    if negative_emb is not None:
        extra = torch.zeros(len(fits), len(negative_emb), device=fits.device) if negative_fits is None \
            else negative_fits.float()
        logits, fits = torch.cat([logits, scale * image_emb @ negative_emb.t()], 1), torch.cat([fits, extra], 1)
    image_to_text = F.cross_entropy(logits, fits / fits.sum(1, keepdim=True))
    return (image_to_text + text_to_image) / 2


class MiniCLIP(nn.Module):
    """The image tower, both text encoders, the first encoder's projection, and two temperatures.

    The first text encoder (a ``CLIPTextModel``) has no projection of its own,
    so ``text_projection`` maps its pooled output to the contrastive space and
    is dropped after training, as SD drops CLIP's projections. The second
    (``CLIPTextModelWithProjection``) uses its own ``text_embeds``, which SDXL
    then takes as the pooled conditioning.
    """

    def __init__(self, size: str = "full"):
        super().__init__()
        s = _size(size)
        self.text_encoder = make_text_encoder(size)
        self.text_encoder_2 = make_text_encoder_2(size)
        embed = s["image_tower"]["embed_dim"]
        self.text_projection = nn.Linear(s["text"]["hidden_size"], embed, bias=False)
        self.image_tower = ImageTower(s["image_tower"]["width"], (embed, s["text_2"]["projection_dim"]))
        self.logit_scale = nn.Parameter(torch.full((2,), 2.6593))  # log(1 / 0.07), CLIP's initial temperature

    def forward(self, pictures: torch.Tensor, ids: torch.Tensor, ids_2: torch.Tensor, fits: torch.Tensor,
                negatives: tuple | None = None) -> dict[str, torch.Tensor]:
        """Pictures [B, 3, 64, 64], ids [B, T] for each tokenizer, fits [B, B] -> the two losses and their sum.

        ``negatives``: (ids [K, T], ids_2 [K, T], fits [B, K]) of hard-negative captions
        (``contrastive_loss``), or None; K may be 0.
        """
        image_1, image_2 = self.image_tower(pictures)
        text_1, text_2 = self.embed_texts(ids, ids_2)
        negative_1 = negative_2 = negative_fits = None
        if negatives is not None and len(negatives[0]):
            (negative_1, negative_2), negative_fits = self.embed_texts(*negatives[:2]), negatives[2]
        loss_1 = contrastive_loss(image_1, text_1, self.logit_scale[0], fits, negative_1, negative_fits)
        loss_2 = contrastive_loss(image_2, text_2, self.logit_scale[1], fits, negative_2, negative_fits)
        return {"loss": loss_1 + loss_2, "loss_text_encoder": loss_1, "loss_text_encoder_2": loss_2}

    def embed_texts(self, ids: torch.Tensor, ids_2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B, T] for each tokenizer -> the normalised embeddings [B, E] of each text encoder."""
        text_1 = F.normalize(self.text_projection(self.text_encoder(ids).pooler_output), dim=-1)
        return text_1, F.normalize(self.text_encoder_2(ids_2).text_embeds, dim=-1)

    @torch.no_grad()
    def retrieval_accuracy(self, pictures: torch.Tensor, ids: torch.Tensor, ids_2: torch.Tensor,
                           fits: torch.Tensor) -> tuple[float, float]:
        """Share of pictures whose best-matching caption (among the batch's) describes them (``fits``)."""
        image_1, image_2 = self.image_tower(pictures)
        text_1, text_2 = self.embed_texts(ids, ids_2)
        rows = torch.arange(len(fits), device=fits.device)
        acc = [float(fits[rows, (img @ txt.t()).argmax(1)].float().mean())
               for img, txt in ((image_1, text_1), (image_2, text_2))]
        return acc[0], acc[1]


# ----------------------------------------------------------------------------
# Pipelines in the diffusers folder layout


def copy_tokenizers(path: str | Path, names=("tokenizer",)) -> None:
    """Replace ``path/<name>/`` by a copy of the project's tokenizer files (vocab, merges, configs, licence)."""
    for name in names:
        target = Path(path) / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(TOKENIZER_DIRS[name], target)


def build_sd_pipeline(unet, vae, text_encoder, tokenizers: dict | None = None):
    """A ``StableDiffusionPipeline`` from our parts (no safety checker: the data is clothes)."""
    from diffusers import StableDiffusionPipeline

    tokenizers = tokenizers or load_tokenizers()
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizers["tokenizer"], unet=unet,
                                   scheduler=pipeline_scheduler(sdxl=False), safety_checker=None,
                                   feature_extractor=None, image_encoder=None, requires_safety_checker=False)


def build_sdxl_pipeline(unet, vae, text_encoder, text_encoder_2, tokenizers: dict | None = None):
    """A ``StableDiffusionXLPipeline`` from our parts; the empty prompt's embedding is zeros, as SDXL base."""
    from diffusers import StableDiffusionXLPipeline

    tokenizers = tokenizers or load_tokenizers()
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizers["tokenizer"], tokenizer_2=tokenizers["tokenizer_2"],
                                     unet=unet, scheduler=pipeline_scheduler(sdxl=True), image_encoder=None,
                                     feature_extractor=None, force_zeros_for_empty_prompt=True)


#: Files of a pipeline folder that are not components: kept when the pipeline is saved again.
KEPT_FILES = ("README.md", "training.json", "eval.json", "samples.png")


def save_pipeline(pipe, path: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Save ``pipe`` as safetensors in ``dtype`` in the diffusers layout, with the project's tokenizer files.

    The pipeline itself is left in its own dtype. Writes to ``path.tmp`` first,
    then swaps it in, so a crash never leaves half a model; the model card and
    other ``KEPT_FILES`` already in ``path`` are kept.
    """
    import copy

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    clone = copy.deepcopy(pipe).to(dtype=dtype)
    clone.save_pretrained(tmp, safe_serialization=True)
    for name in ("text_encoder", "text_encoder_2"):
        _set_default_dtype(tmp / name / "config.json", "float32")
    for config_path in tmp.glob("*/config.json"):
        drop_source_path(config_path)
    copy_tokenizers(tmp, [n for n in TOKENIZER_DIRS if (tmp / n).exists()])
    for name in KEPT_FILES:
        if (path / name).exists():
            shutil.copy(path / name, tmp / name)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def save_part(model: nn.Module, path: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Save one component (text encoder, VAE, UNet) as ``dtype`` safetensors into ``path`` (a pipeline subfolder).

    Used to ship a training stage's part before the whole pipeline exists.
    """
    import copy

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    copy.deepcopy(model).to(dtype=dtype).save_pretrained(tmp, safe_serialization=True)
    if (tmp / "model.safetensors").exists():  # a transformers model (diffusers names its file differently)
        _set_default_dtype(tmp / "config.json", "float32")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def drop_source_path(config_path: Path) -> None:
    """Remove ``_name_or_path`` from a saved config: a part loaded from a folder (the VAE, re-shipped with
    each UNet) records that folder, which would put this machine's absolute path into the shipped files."""
    config = json.loads(config_path.read_text())
    if config.pop("_name_or_path", None) is not None:
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _set_default_dtype(config_path: Path, dtype: str) -> None:
    """Make transformers load a text encoder in ``dtype`` by default, whatever the file's dtype.

    transformers 5 loads a model in the dtype its config names (else the
    file's), while diffusers loads its models in fp32: without this, a plain
    ``from_pretrained(path)`` of fp16 files would give an fp16 text encoder
    next to an fp32 UNet, and the UNet would refuse the mixed inputs. An
    explicit ``dtype=`` still wins.
    """
    if config_path.exists():
        config = json.loads(config_path.read_text())
        config["dtype"] = dtype
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def weights_megabytes(path: str | Path) -> float:
    """Total size of the ``*.safetensors`` files under ``path``, in MB (10^6 bytes)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*.safetensors")) / 1e6


def load_pipeline(path: str | Path, dtype: torch.dtype = torch.float32):
    """Load a saved mini pipeline (SD or SDXL, from its ``model_index.json``) with the plain diffusers class."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    index = json.loads((Path(path) / "model_index.json").read_text())
    cls = StableDiffusionXLPipeline if index["_class_name"] == "StableDiffusionXLPipeline" else StableDiffusionPipeline
    pipe = cls.from_pretrained(str(path), dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe
