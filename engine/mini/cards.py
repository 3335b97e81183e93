"""The mini models' model cards and sample grids, written from ``training.json`` (and by the eval script).

``scripts/train_mini_sd.py`` writes a card each time a stage ships, and
``scripts/eval_mini_sd.py --write-cards`` adds the measured-quality section
between ``<!-- eval:start -->`` and ``<!-- eval:end -->``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.figures import image_grid
from engine.mini import data as cf
from engine.mini import micro
from engine.mini import models as ms

#: The training stages, in order.
STAGES = ("clip", "vae", "unet-sd", "unet-sdxl")
GRID_COLOURS = cf.COLOUR_NAMES
#: The mini models' default guidance scale (their presets' ``default_guidance``). eval_mini_sd.py's sweep
#: picked it: at 4-5 the colours burn out (classifier-free guidance extrapolates the latents off the VAE's
#: manifold, as high guidance oversaturates SD), at 1 the classes blur.
DEFAULT_GUIDANCE = 2.0


@torch.no_grad()
def sample_grid(pipe, sdxl: bool, path: Path, steps: int = 20, guidance_scale: float = DEFAULT_GUIDANCE) -> None:
    """One row per class, one column per colour ("a {colour} {class}"); SDXL adds rows for size and crop."""
    prompts = [cf.prompt_for(label, colour) for label in range(10) for colour in GRID_COLOURS]
    kwargs = dict(num_inference_steps=steps, guidance_scale=guidance_scale, output_type="pt", height=64, width=64)
    images = [pipe(prompts, generator=torch.Generator("cpu").manual_seed(0), **kwargs).images.cpu()]
    rows = 10
    if sdxl:
        extra = [cf.prompt_for(7, c) for c in GRID_COLOURS]
        for cond in (dict(original_size=(16, 16)), dict(crops_coords_top_left=(16, 16))):
            images.append(pipe(extra, generator=torch.Generator("cpu").manual_seed(0), **kwargs, **cond).images.cpu())
            rows += 1
    save_grid(torch.cat(images), rows, path)


def save_grid(pictures: torch.Tensor, rows: int, path: Path) -> None:
    """Pictures [rows * cols, 3, H, W] in [0, 1] -> one PNG grid, row-major."""
    cols = len(pictures) // rows
    image_grid(pictures[: rows * cols], cols).save(path)


def model_card(folder: str, record: dict, path: Path) -> str:
    """The model card from ``training.json``'s facts: data, parts, training, size; eval adds measured quality.

    Parts whose stage has not run yet are listed as "not trained yet".
    """
    sdxl = folder == "mini-sdxl"
    unet = record.get("unet-sdxl" if sdxl else "unet-sd")
    pipeline = "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline"
    lines = [f"# {folder}: a miniature {'SDXL' if sdxl else 'Stable Diffusion'} trained on Fashion-MNIST in colour", ""]
    if record.get("size") == "smoke":
        lines += ["**Smoke test**: toy sizes and a few steps (`--smoke`); this model has learnt nothing.", ""]
    if unet is None:
        lines += [f"**Unfinished**: the stages done so far are {', '.join(k for k in record if k in STAGES)}. "
                  f"This folder becomes a pipeline (`model_index.json`) when `python scripts/train_mini_sd.py all` "
                  "has trained its UNet.", ""]
    lines += [
        f"A complete latent text-to-image model at toy scale, built from the same classes as "
        f"{'SDXL base' if sdxl else 'Stable Diffusion 1.5'} and saved in the diffusers layout:",
        "",
        "```python",
        f"from diffusers import {pipeline}",
        f"pipe = {pipeline}.from_pretrained(\"assets/{folder}\")",
        f"image = pipe(\"a blue sneaker\", height=64, width=64, num_inference_steps=25, "
        f"guidance_scale={DEFAULT_GUIDANCE:g}).images[0]",
        "```",
        "",
        "## Data",
        "",
        f"\"Fashion-MNIST in colour\" (`engine/mini/data.py`, seed {record.get('seed', 0)}): Fashion-MNIST "
        "training items (Xiao et al. 2017, Debian's `dataset-fashion-mnist`), upscaled to 48 px, centred on a "
        f"64x64 light background and tinted with one of {len(cf.COLOUR_NAMES)} colours "
        f"({', '.join(cf.COLOUR_NAMES)}), the pixel intensity as shading. Captions come from {len(cf.TEMPLATES)} "
        "templates and synonyms (\"a red ankle boot\", \"a photo of blue trousers\", \"sneakers in yellow\"); "
        "about 10% are empty, for classifier-free guidance, and about 10% leave the colour out (\"a photo of a "
        f"sneaker\"). {positioned_share(unet):.0%} of the pictures of the UNet's last run are *positioned*: "
        "the item is smaller "
        f"({cf.PLACED_SIZES[0]}-{cf.PLACED_SIZES[1]} px) and sits at a named place ({', '.join(cf.PLACE_NAMES)}), "
        "jittered, and the caption says where (\"a red sneaker on the left\", \"a small blue bag in the top right "
        "corner\"). A caption without a place word means the classic centred 48 px item."
        + two_item_sentence(unet)
        + (f" {unet['train_items']} items, {unet['distinct_captions']} distinct captions." if unet else ""),
    ]
    if sdxl:
        lines += ["", "Micro-conditioning (Podell et al. 2023, §2.2): each UNet training picture is, with probability "
                  f"1/2, downscaled to an `original_size` in {list(micro.SIZE_CHOICES)} and upscaled back (blurry), "
                  "and, independently with probability 1/2, cut from a larger canvas at a `crops_coords_top_left` "
                  f"uniform in 0..{micro.MAX_CROP} (the item moves up and left by that much). The UNet is told both."]
    lines += components_section(sdxl, record, path)
    lines += training_section(sdxl, record)
    return "\n".join(lines)


def positioned_share(unet: dict | None) -> float:
    """The placed share of the pictures the UNet's last run saw (``--positioned-share``)."""
    return (unet or {}).get("positioned_share", cf.POSITIONED_SHARE)


def two_item_sentence(unet: dict | None) -> str:
    """The data paragraph's sentence on two-item pictures, when the UNet saw them."""
    share = (unet or {}).get("two_item_share")
    if not share:
        return ""
    return (f" {share:.0%} of the placed pictures hold two items at opposite places, each of its own class and "
            f"colour, {cf.TWO_ITEM_SIZES[0]}-{cf.TWO_ITEM_SIZES[1]} px (\"a red sneaker on the left and a blue bag "
            "on the right\", in three phrasings).")


def grounding_sentence(unet: dict) -> str:
    """The UNet cell's words on TokenCompose's grounding losses, when they were on."""
    if not unet.get("token_loss_weight") and not unet.get("pixel_loss_weight"):
        return ""
    return (f"; plus TokenCompose's grounding losses (Wang et al. 2024) on the item and colour words' "
            f"cross-attention at 8x8 and 4x4, token loss x {unet['token_loss_weight']:g} and pixel (BCE) loss x "
            f"{unet['pixel_loss_weight']:g}, each word grounded on its item's exact mask (`engine/mini/grounding.py`"
            + (", each grid cell weighted by the share of it the item covers" if unet.get("grounding_mask") ==
               "coverage" else "") + ")")


def _vae_stretch(vae: dict, before: dict | None) -> str:
    """One decoder fine-tune from its record: steps, batch, losses, and the depth it grew to, if it did."""
    gan = vae.get("patch_gan_weight")
    layers, layers_before = vae.get("layers_per_block", 1), (before or {}).get("layers_per_block", 1)
    grown = (f"grown from {layers_before} to {layers} ResNets per level (`deepen_vae`: the new ones start as "
             "identities), " if layers != layers_before else "")
    return (f"{grown}{vae['steps']} steps of {vae['batch']}, L1 + MSE"
            + (f" + a patch discriminator (PatchGAN, hinge loss, taming's adaptive weight x {gan:g})" if gan else ""))


def vae_cell_text(vae: dict) -> str:
    """How the VAE was trained (and, for decoder fine-tunes, each stretch, oldest first, and on what)."""
    text = (f"L1 + MSE + 1e-6 KL, {vae['steps']} steps of {vae['batch']}; `scaling_factor` {vae['scaling_factor']} "
            f"= 1 / latent std; test PSNR {vae['test_psnr_db']} dB")
    if vae.get("decoder_only"):
        trips = vae.get("judge_on_placed_round_trips") or {}
        chain = [vae]
        while (chain[-1].get("previous") or {}).get("decoder_only"):
            chain.append(chain[-1]["previous"])
        chain.reverse()  # oldest first
        befores = [chain[0].get("previous")] + chain[:-1]  # the oldest stretch started from the scratch VAE
        steps = ", then ".join(_vae_stretch(r, before) for r, before in zip(chain, befores))
        text = (f"trained from scratch, then its decoder alone fine-tuned on {vae.get('data', 'placed pictures')}: "
                f"{steps} (the encoder, the latent space and "
                f"`scaling_factor` {vae['scaling_factor']} stay, so the UNets still fit); test PSNR "
                f"{vae['test_psnr_db']} dB" + "".join(f"; the judge reads {100 * v:.0f}% of {side} px placed real "
                                                       "items after a round trip" for side, v in trips.items()))
    return text


def shared_encoder_text(clip: dict) -> str:
    """The text-encoder cell's words on a first encoder taken from the other pipeline (``share-encoder``)."""
    source = clip.get("text_encoder_from")
    if not source:
        return ""
    return (f"; the first encoder was then replaced by {source['folder']}'s, trained on positioned captions "
            f"({source['steps']} steps of {source['batch']}, retrieval "
            f"{100 * source['retrieval_accuracy_text_encoder']:.0f}%), so that it tells places apart")


def two_item_text(clip: dict, sdxl: bool) -> str:
    """The text-encoder cell's words on a fine-tune for two-item captions (``--clip-init`` with hard negatives,
    clause distillation or an anchor)."""
    if not clip.get("previous"):
        return ""
    parts = (["each two-item caption with its colours swapped as a hard negative (NegCLIP, Yuksekgonul et al. "
              "2023)"] if clip.get("hard_negatives") else []) + (
        [f"clause distillation x {clip['clause_weight']:g} (the second item's words pulled to their states in "
         "the clause alone, as Feng et al. 2023 encode each noun phrase on its own)"]
        if clip.get("clause_weight") else []) + (
        [f"an anchor x {clip['anchor_weight']:g} on one-item captions' states"] if clip.get("anchor_weight") else [])
    return (f", then fine-tuned for two items, {clip['steps']} steps of {clip['batch']} at lr {clip['lr']:g}"
            + (": " + ", ".join(parts) if parts else "")
            + swap_accuracy_text(clip.get("binding_swap_accuracy") or {}, sdxl))


def swap_accuracy_text(swap: dict, sdxl: bool) -> str:
    """"; a picture scores its own caption above the colour-swapped one for 68% of 83 test pictures"."""
    if not swap.get("pictures"):
        return ""
    shares = [swap["text_encoder"]] + ([swap["text_encoder_2"]] if sdxl else [])
    return (f"; a two-item picture scores its own caption above the colour-swapped one for "
            f"{' / '.join(f'{100 * v:.0f}%' for v in shares)} of {swap['pictures']} test pictures (chance: 50%)")


def history_text(unet: dict) -> str:
    """The UNet cell's words on the runs a fine-tuned UNet started from (``previous`` in training.json)."""
    runs, node = [], unet
    while node.get("previous"):
        node = node["previous"]
        runs.append(f"{node['steps']} steps of {node['batch']} at lr {node['lr']:g}"
                    + (f", placed share {node['positioned_share']:g}" if "positioned_share" in node else "")
                    + (f", grounding x {node['token_loss_weight']:g} / {node['pixel_loss_weight']:g}"
                       + (" on coverage masks" if node.get("grounding_mask") == "coverage" else "")
                       if node.get("token_loss_weight") else ""))
    return "; a fine-tune, after these runs (newest first): " + "; ".join(runs) if runs else ""


def components_section(sdxl: bool, record: dict, path: Path) -> list[str]:
    """The model card's table of parts: class, size and how each was trained (from ``training.json``)."""
    clip, vae, unet = record.get("clip"), record.get("vae"), record.get("unet-sdxl" if sdxl else "unet-sd")
    todo = "not trained yet"
    size = ms.MODEL_SIZES[record.get("size", "full")]
    t1, t2 = size["text"], size["text_2"]
    encoders = (f"`CLIPTextModel` (width {t1['hidden_size']}, {t1['num_hidden_layers']} layers); the UNet reads "
                f"its last hidden state (77 x {t1['hidden_size']})")
    if sdxl:
        encoders = (f"`CLIPTextModel` (width {t1['hidden_size']}, {t1['num_hidden_layers']} layers) + "
                    f"`CLIPTextModelWithProjection` (width {t2['hidden_size']}, {t2['num_hidden_layers']} layers, "
                    f"projection {t2['projection_dim']}); the UNet reads both penultimate hidden states "
                    f"concatenated (77 x {t1['hidden_size'] + t2['hidden_size']}) and the pooled projection")
    if clip:
        params = f"{clip['params_text_encoder']:,}" + (f" + {clip['params_text_encoder_2']:,}" if sdxl else "")
        first = clip.get("previous") or clip
        clip_cell = (f"as a mini CLIP (InfoNCE against a {clip['params_image_tower']:,}-parameter CNN image tower), "
                     f"{first['steps']} steps of {first['batch']}" + two_item_text(clip, sdxl)
                     + f"; caption retrieval on test pictures {100 * clip['retrieval_accuracy_text_encoder']:.0f}%"
                     + (f" / {100 * clip['retrieval_accuracy_text_encoder_2']:.0f}%" if sdxl else "")
                     + " (the top caption among 512 fits the picture); then frozen" + shared_encoder_text(clip))
    else:
        params, clip_cell = "-", todo
    vae_cell = todo if not vae else vae_cell_text(vae)
    text_time = ', `addition_embed_type="text_time"`' if sdxl else ""
    unet_cell = todo if not unet else (
        f"epsilon MSE with min-SNR-{unet.get('snr_gamma', 0):g} weighting, {unet['steps']} steps of {unet['batch']}, "
        f"AdamW lr {unet['lr']}, EMA {unet['ema_decay']} (shipped)"
        + (f", placed share {unet['positioned_share']:g}" if "positioned_share" in unet else "")
        + grounding_sentence(unet)
        + (history_text(unet) or (f"; initialised from {unet['initialised_from']}"
                                  if unet.get("initialised_from", "scratch") != "scratch" else "")))
    return [
        "",
        "## Components",
        "",
        "| part | class | parameters | training |",
        "|---|---|---|---|",
        "| tokenizer" + ("s" if sdxl else "") + " | `CLIPTokenizer`: the project's CLIP ViT-L/14"
        + (" and ViT-bigG/14 (pad `!`)" if sdxl else "") + " files | - | none (the real ids) |",
        f"| text encoder{'s' if sdxl else ''} | {encoders} | {params} | {clip_cell} |",
        "| VAE | `AutoencoderKL`, 4 latent channels, 3 downsamples: 64x64x3 -> 8x8x4 (48x fewer values) | "
        f"{format(vae['params'], ',') if vae else '-'} | {vae_cell} |",
        f"| UNet | `UNet2DConditionModel`{text_time}, cross-attention at 8x8 and 4x4 | "
        f"{format(unet['params'], ',') if unet else '-'} | {unet_cell} |",
        f"| scheduler | `{'EulerDiscreteScheduler' if sdxl else 'PNDMScheduler'}`, "
        f"{'SDXL' if sdxl else 'SD 1.5'}'s config (scaled_linear 0.00085-0.012, 1000 steps) | - | - |",
        "",
        f"Weights: {ms.weights_megabytes(path):.1f} MB of fp16 safetensors (the VAE and the first text encoder are "
        "copies of the ones in the other mini pipeline). The text encoders' configs say `dtype: float32`, so a "
        f"plain `from_pretrained` runs everything in fp32. Only the ~{len(cf.caption_vocabulary())} words of the "
        "captions were ever trained: other words reach the UNet as untrained embeddings.",
        "",
    ]


def training_section(sdxl: bool, record: dict) -> list[str]:
    """The model card's training and measured-quality sections (eval fills the latter in)."""
    unet = record.get("unet-sdxl" if sdxl else "unet-sd")
    return [
        "## Training",
        "",
        "`python scripts/train_mini_sd.py all` ("
        + "; ".join(f"{stage} on {record[stage].get('device', '?')}" for stage in STAGES if stage in record)
        + "). Checkpoints and sample grids stay in "
        "`runs/mini_sd/` (not shipped); `training.json` holds the figures above."
        + (" `samples.png`: one row per class, one column per colour"
           + (", then \"a {colour} sneaker\" with original_size (16, 16) and with crop (16, 16)" if sdxl else "")
           + f"; {record.get('grid_steps', 20)} steps, guidance {record.get('grid_guidance', 5):g}." if unet else ""),
        "",
        "A GPU run would improve it: wider and deeper UNets trained for 10-50x more steps, a VAE with a "
        "perceptual (LPIPS) and adversarial loss as SD's, and a mini CLIP trained longer with more caption variety.",
        "",
        "## Measured quality",
        "",
        "<!-- eval:start -->",
        "Not measured yet: run `python scripts/eval_mini_sd.py --write-cards`.",
        "<!-- eval:end -->",
        "",
    ]
