#!/usr/bin/env python
"""Train the mini Stable Diffusion and the mini SDXL on "Fashion-MNIST in colour", and ship them.

Stages, in order (``all`` runs the ones not done yet, so the same command resumes):

1. ``clip``: the text encoders, pre-trained as a mini CLIP (InfoNCE against a
   small image tower, Radford et al. 2021), then frozen for the rest.
2. ``vae``: the ``AutoencoderKL`` (64x64x3 -> 8x8x4), L1 + MSE + a small KL term;
   its ``scaling_factor`` is 1 / std of the training latents (LDM §4.3.2).
3. ``unet-sd``: the mini-SD UNet, epsilon-prediction MSE on VAE latents (DDPM,
   Ho et al. 2020, Algorithm 1), conditioned on the frozen encoder's last hidden
   state; the ~10% empty captions teach the unconditional prediction for
   classifier-free guidance. Ships ``assets/mini-sd``.
4. ``unet-sdxl``: the same with SDXL's inputs: both encoders' penultimate hidden
   states, the pooled embedding (zeros for an empty caption, as SDXL base) and
   the six micro-conditioning numbers, trained on pictures that are blurred
   (``original_size``) and cropped (``crops_coords_top_left``) as in Podell et
   al. 2023, §2.2. Ships ``assets/mini-sdxl``.

Each stage ships its part as soon as it is done, as fp16 safetensors, into
``ASSETS/mini-sd/`` and ``ASSETS/mini-sdxl/`` (the diffusers layout), records
itself in their ``training.json`` and rewrites their ``README.md`` model cards.
The VAE and the first text encoder are *copied* into both folders, so each
loads on its own. A folder becomes a pipeline (``model_index.json``) when its
UNet is done. Later stages read the earlier parts from there, so they train
against exactly the (fp16-rounded) weights that ship.

Every stage is resumable: ``OUT/<stage>/checkpoint.pt`` holds the model, EMA,
optimiser and step (``OUT`` is ``runs/mini_sd/``, git-ignored). Batches are
drawn from ``numpy.random.default_rng([seed, stage, step])``, so a resumed run
sees the same batches as an uninterrupted one. Sample grids go to
``OUT/<stage>/samples/``. bf16 autocast is used on CUDA and on CPUs with native
bf16 (``--bf16 auto``).

Examples::

    python scripts/train_mini_sd.py all                  # the shipped models, ~2 h on 2 CPU cores
    python scripts/train_mini_sd.py bench                # time a few steps of each stage, estimate the total
    python scripts/train_mini_sd.py all --smoke          # toy sizes, a few steps, into runs/mini_sd_smoke
    python scripts/train_mini_sd.py unet-sdxl --unet-steps 6000   # one stage, longer
    # mini-SDXL reads mini-SD's first encoder (it tells places apart), then its UNet is fine-tuned on it
    python scripts/train_mini_sd.py share-encoder --assets runs/x/assets
    python scripts/train_mini_sd.py unet-sdxl --unet-init assets --assets runs/x/assets --token-loss 0.0125
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from engine import metrics  # noqa: E402
from engine import text_encoding as te_  # noqa: E402
from engine.mini import data as cf  # noqa: E402
from engine.mini.grounding import MASKS  # noqa: E402
from engine.mini import micro  # noqa: E402
from engine.mini import measure  # noqa: E402
from engine.mini.cards import DEFAULT_GUIDANCE, STAGES, model_card, sample_grid, save_grid  # noqa: E402
from engine.mini import models as ms  # noqa: E402
from engine import noise_schedule  # noqa: E402
from engine.txt2img.time_ids import add_time_ids  # noqa: E402
from engine.training import (autocast, ema_update, load_checkpoint, lr_at, optimizer_step,  # noqa: E402
                             resumable_loop, save_checkpoint, set_lr)

# Steps of the shipped run (sized with ``bench`` for ~2 h on 2 CPU cores) and of ``--smoke``.
DEFAULTS = {
    "full": dict(clip_steps=800, clip_batch=256, vae_steps=3000, vae_batch=32, unet_steps=4000, unet_batch=128,
                 num_items=None, sample_every=500, checkpoint_every=100, grid_steps=20),
    "smoke": dict(clip_steps=4, clip_batch=16, vae_steps=4, vae_batch=4, unet_steps=4, unet_batch=8,
                  num_items=256, sample_every=4, checkpoint_every=2, grid_steps=2),
}
CLIP_TOKENS = 24  # two-item captions take up to 24 tokens; CLIP's causal mask makes positions < 24 the same at 77


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=STAGES + ("all", "bench", "share-encoder"),
                   help="share-encoder: mini-SDXL's first text encoder becomes mini-SD's (then fine-tune its UNet)")
    p.add_argument("--smoke", action="store_true", help="toy model sizes and a few steps (tests, quick checks)")
    p.add_argument("--out", default=None, help="run folder (default runs/mini_sd, or runs/mini_sd_smoke)")
    p.add_argument("--assets", default=None,
                   help="where the pipelines are shipped (default assets/, or OUT/assets with --smoke)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    for name in ("clip_steps", "clip_batch", "vae_steps", "vae_batch", "unet_steps", "unet_batch",
                 "num_items", "sample_every", "checkpoint_every", "grid_steps"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    p.add_argument("--clip-lr", type=float, default=1e-3)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--unet-lr", type=float, default=1e-3)
    p.add_argument("--unet-init", default=None,
                   help="start the UNets from the ones in this assets folder (DIR/mini-sd/unet, DIR/mini-sdxl/unet) "
                        "instead of from scratch: a fine-tune, for when the data changed but the VAE did not")
    p.add_argument("--clip-init", default=None,
                   help="start the mini CLIP's text encoder(s) from the ones in this pipeline folder (e.g. "
                        "assets/mini-sd): a fine-tune")
    p.add_argument("--clip-train", choices=("both", "text_encoder"), default="both",
                   help="text_encoder: train only the first encoder and ship it into mini-sdxl only; the second "
                        "stays as shipped (the refiner reads it) and mini-SD keeps its own (its CLIP-guidance "
                        "tower was trained against it)")
    p.add_argument("--clip-folder", choices=("mini-sd", "mini-sdxl"), default="mini-sdxl",
                   help="with --clip-train text_encoder: the one pipeline folder the first encoder ships into")
    p.add_argument("--clip-hard-negatives", action="store_true",
                   help="add each two-item caption with its colours swapped as a caption no picture has (NegCLIP)")
    p.add_argument("--clip-clause", type=float, default=0.0,
                   help="weight of clause distillation: the first encoder's states on a two-item caption's second "
                        "clause are pulled to its starting states on that clause alone (structured text, as Feng "
                        "et al. 2023 encode each noun phrase on its own)")
    p.add_argument("--clip-anchor", type=float, default=0.0,
                   help="weight of an MSE between the first encoder's states and its starting states, on one-item "
                        "captions: the prompts that work today keep their meaning while two-item ones change")
    p.add_argument("--vae-init", default=None,
                   help="start the VAE from the one in this assets folder (DIR/mini-sd/vae): a fine-tune")
    p.add_argument("--vae-train", choices=("all", "decoder"), default="all",
                   help="decoder: train only the decoder (and post_quant_conv), so the latent space, and with it "
                        "every UNet, stays as it is")
    p.add_argument("--vae-layers", type=int, default=None,
                   help="grow the VAE to this many ResNets per level before training (engine.mini.models."
                        "deepen_vae: the added ones start as identities, so the latent space stays); use with "
                        "--vae-train decoder to give only the decoder more depth")
    p.add_argument("--vae-gan-weight", type=float, default=0.0,
                   help="weight of the patch discriminator's loss on the VAE (0: off; taming's adaptive weight "
                        "times this)")
    p.add_argument("--vae-gan-start", type=int, default=200,
                   help="steps in which only the discriminator learns, before its loss reaches the VAE")
    p.add_argument("--vae-item-weight", type=float, default=0.0,
                   help="extra loss weight on the items' pixels (0: plain L1 + MSE over the picture)")
    p.add_argument("--positioned-share", type=float, default=cf.POSITIONED_SHARE,
                   help="share of placed (not centred) pictures in the CLIP and UNet stages' data; the VAE "
                        "stage uses its own, larger share")
    p.add_argument("--two-item-share", type=float, default=0.3,
                   help="share of the placed pictures that hold a second item at the opposite place")
    p.add_argument("--token-loss", type=float, default=0.0,
                   help="weight of TokenCompose's token loss on the item and colour words (engine.mini.grounding)")
    p.add_argument("--pixel-loss", type=float, default=0.0, help="weight of TokenCompose's pixel (BCE) loss")
    p.add_argument("--grounding-mask", choices=MASKS, default="any",
                   help="an item's mask at the 8x8 / 4x4 grids: any pixel (TokenCompose) or each cell's item share "
                        "(engine.mini.grounding.MASKS)")
    p.add_argument("--deadline-minutes", type=float, default=None,
                   help="stop a stage after this many minutes (it checkpoints and ships what it has)")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                   help="bf16 autocast: auto = on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX)")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--snr-gamma", type=float, default=5.0,
                   help="min-SNR loss weighting gamma (Hang et al. 2023); 0 turns it off (plain MSE)")
    p.add_argument("--bench-steps", type=int, default=3, help="timed steps per stage for `bench`")
    p.add_argument("--no-eval", action="store_true", help="`all`: skip scripts/eval_mini_sd.py at the end")
    args = p.parse_args(argv)
    args.size = "smoke" if args.smoke else "full"
    for key, value in DEFAULTS[args.size].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = Path(args.out or ("runs/mini_sd_smoke" if args.smoke else "runs/mini_sd"))
    args.assets = Path(args.assets or (args.out / "assets" if args.smoke else REPO_ROOT / "assets"))
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    from engine.fashion.sampling import use_cpu_bf16

    native = args.device.startswith("cuda") or use_cpu_bf16(args.device)
    args.bf16 = {"auto": native, "on": True, "off": False}[args.bf16]
    return args


# ----------------------------------------------------------------------------
# Shared helpers


def batch_rng(seed: int, stage: str, step: int) -> np.random.Generator:
    """The random numbers of one step: the same for the same (seed, stage, step), resumed or not."""
    return np.random.default_rng([seed, STAGES.index(stage), step])


def resume(folder: Path, device: str, model, opt, ema=None, key: str | None = None) -> tuple[int, float | None]:
    """Load ``folder/checkpoint.pt`` into the model, EMA and optimiser, if there is one (made with the same
    frozen parts ``key``, for the UNets); returns (step, running loss), (0, None) for a fresh start."""
    state = load_checkpoint(folder / "checkpoint.pt", device)
    if state and key is not None and state.get("frozen_parts") != key:
        print(f"{folder.name}: the checkpoint was trained with other text encoders or VAE: starting again", flush=True)
        state = None
    if not state:
        return 0, None
    model.load_state_dict(state["model"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["opt"])
    print(f"{folder.name}: resumed at step {state['step']}", flush=True)
    return state["step"], state["running"]


def stage_dir(args, stage: str) -> Path:
    folder = args.out / stage
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    return folder


#: Which pipeline folders each stage ships into.
SHIPS_TO = {"clip": ("mini-sd", "mini-sdxl"), "vae": ("mini-sd", "mini-sdxl"), "unet-sd": ("mini-sd",),
            "unet-sdxl": ("mini-sdxl",)}


def training_record(args, folder: str, root=None) -> dict:
    """``ROOT/<folder>/training.json`` (ROOT: ``--assets`` unless given): {stage: facts} shipped there."""
    path = Path(root or args.assets) / folder / "training.json"
    return json.loads(path.read_text()) if path.exists() else {}


def ships_to(args, stage: str) -> tuple[str, ...]:
    """``SHIPS_TO[stage]``, except a first-encoder-only CLIP (``--clip-train text_encoder``): ``--clip-folder``
    only (mini-sdxl unless told)."""
    if stage == "clip" and args.clip_train == "text_encoder":
        return (args.clip_folder,)
    return SHIPS_TO[stage]


def is_done(args, stage: str) -> bool:
    return all(stage in training_record(args, folder) for folder in ships_to(args, stage))


def mark_done(args, stage: str, info: dict, folders=None) -> None:
    """Record ``stage`` in the training.json of the folders it shipped to (``folders``, else ``ships_to``),
    and rewrite their model cards."""
    for folder in folders or ships_to(args, stage):
        path = args.assets / folder
        record = training_record(args, folder)
        # a new text encoder or VAE encoder invalidates the UNet trained on the old one (a decoder fine-tune does not)
        stale = stage == "clip" or (stage == "vae" and not info.get("decoder_only"))
        if stale:
            record.pop("unet-sdxl" if folder == "mini-sdxl" else "unet-sd", None)
            for name in ("model_index.json", "eval.json", "samples.png"):
                (path / name).unlink(missing_ok=True)
            for name in ("unet", "scheduler"):
                shutil.rmtree(path / name, ignore_errors=True)
        record[stage] = info
        record.update(seed=args.seed, size=args.size, grid_steps=args.grid_steps, grid_guidance=DEFAULT_GUIDANCE)
        info.setdefault("device", f"{args.device}, {args.threads} threads" if args.device == "cpu" else args.device)
        (path / "training.json").write_text(json.dumps(record, indent=2) + "\n")
        text = model_card(folder, record, path)
        readme = path / "README.md"
        if readme.exists() and not stale:  # keep the measured-quality section that eval wrote
            old = re.search(r"<!-- eval:start -->.*<!-- eval:end -->", readme.read_text(encoding="utf-8"), re.S)
            if old:
                text = re.sub(r"<!-- eval:start -->.*<!-- eval:end -->", lambda _: old.group(0), text, flags=re.S)
        readme.write_text(text, encoding="utf-8")


def ship_part(args, stage: str, parts: dict) -> None:
    """Save ``parts`` ({subfolder: model}) as fp16 into every folder ``stage`` ships to (plus the tokenizers)."""
    for folder in ships_to(args, stage):
        path = args.assets / folder
        for name, model in parts.items():
            if name == "text_encoder_2" and folder == "mini-sd":
                continue
            ms.save_part(model, path / name)
        ms.copy_tokenizers(path, ["tokenizer"] + (["tokenizer_2"] if folder == "mini-sdxl" else []))


def dataset(args, split: str = "train", positioned_share: float | None = None) -> cf.ColourFashion:
    """The training (``--num-items``) or test (1,024) items; placed share ``positioned_share``, else
    ``--positioned-share``."""
    positioned_share = args.positioned_share if positioned_share is None else positioned_share
    return cf.make_dataset(split, seed=args.seed, num_items=args.num_items if split == "train" else 1024,
                           positioned_share=positioned_share, two_item_share=args.two_item_share)


def deadline(args) -> callable:
    """``stop()`` for ``resumable_loop``: True once ``--deadline-minutes`` have passed (never without it)."""
    end = None if args.deadline_minutes is None else time.time() + 60 * args.deadline_minutes
    return lambda: end is not None and time.time() > end


def fits_of(data: cf.ColourFashion, idx) -> torch.Tensor:
    """[B, B] bool: caption j describes picture i (same class, same colour or no colour named, same place, and
    the same second item, if any: a two-item caption fits only a picture with both items, colours and places).

    A caption without a place word describes only a classic (centred, large) picture, so places always match.
    """
    labels, colours = torch.as_tensor(data.labels[idx]), torch.as_tensor(data.colours[idx])
    names_colour, places = torch.as_tensor(data.names_colour[idx]), torch.as_tensor(data.places[idx])
    same_colour = (colours[:, None] == colours[None, :]) | ~names_colour[None, :]
    fits = (labels[:, None] == labels[None, :]) & same_colour & (places[:, None] == places[None, :])
    if data.second is not None:
        for values in (data.second.labels, data.second.colours, data.second.places):
            values = torch.as_tensor(values[idx])
            fits &= values[:, None] == values[None, :]
    return fits


# ----------------------------------------------------------------------------
# 1. Mini CLIP


def token_table(captions: list[str], tokenizers: dict) -> dict:
    """Each distinct caption tokenised once in ``CLIP_TOKENS`` positions: {"index" [N], "ids" [U, T], "ids_2"
    [U, T]}. A caption that would be cut (the tokenizer would still end it with an end token) is an error."""
    unique = sorted(set(captions))
    row = {c: i for i, c in enumerate(unique)}
    table = {"index": torch.tensor([row[c] for c in captions])}
    for key, name in (("ids", "tokenizer"), ("ids_2", "tokenizer_2")):
        longest = max(len(ids) for ids in tokenizers[name](unique).input_ids)
        if longest > CLIP_TOKENS:
            raise ValueError(f"A caption takes {longest} tokens, more than {CLIP_TOKENS}: raise CLIP_TOKENS.")
        table[key] = te_.tokenize(tokenizers[name], unique, CLIP_TOKENS)
    return table


def clip_batch(data: cf.ColourFashion, tokens: dict, rng: np.random.Generator, batch: int,
               captioned: np.ndarray) -> tuple:
    """Pictures [B, 3, 64, 64] in [-1, 1], ids [B, 16] for each tokenizer, fits [B, B]; captioned items only."""
    return clip_examples(data, tokens, rng.choice(captioned, size=batch, replace=False))


def clip_examples(data: cf.ColourFashion, tokens: dict, idx: np.ndarray) -> tuple:
    """``clip_batch`` for the pictures ``idx`` [B]."""
    rows = tokens["index"][idx]
    return cf.to_vae_input(data.pictures(idx)), tokens["ids"][rows], tokens["ids_2"][rows], fits_of(data, idx)


def two_item_rows(data: cf.ColourFashion) -> np.ndarray:
    """The indices of the pictures that hold two items (none when the data has no second items)."""
    return np.flatnonzero(data.second.labels >= 0) if data.second is not None else np.array([], dtype=np.int64)


def swapped_captions(data: cf.ColourFashion) -> list[str]:
    """Per picture: its two-item caption with the two colours swapped (``cf.swap_colour_words``), else ""."""
    out = [""] * len(data)
    for i in two_item_rows(data):
        out[i] = cf.swap_colour_words(data.captions[i], cf.COLOUR_NAMES[int(data.colours[i])],
                                      cf.COLOUR_NAMES[int(data.second.colours[i])])
    return out


def hard_negatives(data: cf.ColourFashion, negative_tokens: dict, idx: np.ndarray) -> tuple:
    """(ids [K, 16], ids_2 [K, 16], fits [B, K]): the swapped captions of the batch's K two-item pictures, and
    which of the B pictures each one describes (one holding the same two items with the colours the other way)."""
    second = data.second
    two = idx[second.labels[idx] >= 0]
    rows = negative_tokens["index"][two]
    col = lambda values, where: torch.as_tensor(values[where])  # noqa: E731
    fits = torch.ones(len(idx), len(two), dtype=torch.bool)
    for values in (data.labels, data.places, second.labels, second.places):
        fits &= col(values, idx)[:, None] == col(values, two)[None, :]
    fits &= col(data.colours, idx)[:, None] == col(second.colours, two)[None, :]
    fits &= col(second.colours, idx)[:, None] == col(data.colours, two)[None, :]
    return negative_tokens["ids"][rows], negative_tokens["ids_2"][rows], fits


@torch.no_grad()
def binding_accuracy(model, data: cf.ColourFashion, tokens: dict, negative_tokens: dict, idx: np.ndarray,
                     device: str) -> dict:
    """For the two-item pictures among ``idx``: the share whose own caption each encoder scores above the same
    caption with the colours swapped (``negative_tokens``, 0.5 is chance): {"text_encoder", "text_encoder_2",
    "pictures"}."""
    two = np.intersect1d(idx, two_item_rows(data))
    if not len(two):
        return {"pictures": 0}
    pictures, ids, ids_2, _ = clip_examples(data, tokens, two)
    images = model.image_tower(pictures.to(device))
    own, swapped = model.embed_texts(ids.to(device), ids_2.to(device)), model.embed_texts(
        *(t.to(device) for t in hard_negatives(data, negative_tokens, two)[:2]))
    wins = [round(float(((img * a).sum(1) > (img * b).sum(1)).float().mean()), 4)
            for img, a, b in zip(images, own, swapped)]
    return {"text_encoder": wins[0], "text_encoder_2": wins[1], "pictures": len(two)}


def second_clauses(data: cf.ColourFashion) -> list[str]:
    """Per picture: the second clause of its two-item caption ("a blue bag on the right"), else "". Every
    ``cf.TWO_ITEM_TEMPLATES`` joins its clauses with " and " or ", "."""
    out = [""] * len(data)
    for i in two_item_rows(data):
        out[i] = re.split(r" and |, ", data.captions[i], maxsplit=1)[1]
    return out


def clause_table(data: cf.ColourFashion, tokens: dict, tokenizers: dict) -> dict:
    """Each two-item caption's second clause, tokenised on its own (``token_table``: "index" [N], "ids" [U, T]),
    with "start" [N]: the position of the clause's first word in the whole caption's ids (-1: no clause), and
    "length" [N]: its tokens, without the start and end tokens."""
    table = token_table(second_clauses(data), tokenizers)
    start, length = torch.full((len(data),), -1), torch.zeros(len(data), dtype=torch.long)
    for i in two_item_rows(data):
        clause, whole = table["ids"][table["index"][i]], tokens["ids"][tokens["index"][i]]
        n, end = int((clause == ms.EOS).nonzero()[0]) - 1, int((whole == ms.EOS).nonzero()[0])
        if torch.equal(whole[end - n:end], clause[1:1 + n]):
            start[i], length[i] = end - n, n
    return {**table, "start": start, "length": length}


def clause_loss(text_encoder, reference, clauses: dict, idx: np.ndarray, ids: torch.Tensor) -> torch.Tensor:
    """MSE between ``text_encoder``'s last hidden states on the second clause of each two-item caption among
    ``idx`` (ids [B, T]: the batch's captions) and the frozen ``reference``'s states on that clause alone: the
    second item's words should read as they would in a one-item caption. 0 when the batch has none."""
    keep = clauses["start"][idx] >= 0
    rows = torch.as_tensor(idx)[keep]
    if not bool(keep.any()):
        return torch.zeros((), device=ids.device)
    with torch.no_grad():
        target = reference(clauses["ids"][clauses["index"][rows]].to(ids.device)).last_hidden_state
    states = text_encoder(ids[keep]).last_hidden_state
    pos = torch.arange(ids.shape[1])
    inside = (pos[None] < clauses["length"][rows][:, None]).to(ids.device)

    def at(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:  # x [K, T, D] at positions [K, T]
        positions = positions.clamp(max=ids.shape[1] - 1).to(ids.device)
        return x.gather(1, positions[..., None].expand(-1, -1, x.shape[-1]))

    return F.mse_loss(at(states, clauses["start"][rows][:, None] + pos[None])[inside].float(),
                      at(target, 1 + pos[None].expand(len(rows), -1))[inside].float())


def anchor_loss(text_encoder, reference, ids: torch.Tensor) -> torch.Tensor:
    """MSE between ``text_encoder``'s last hidden states [N, T, D] (what the UNets read) and the frozen
    ``reference``'s for the same ids [N, T]."""
    with torch.no_grad():
        target = reference(ids).last_hidden_state
    return F.mse_loss(text_encoder(ids).last_hidden_state.float(), target.float())


def clip_model(args) -> ms.MiniCLIP:
    """A fresh ``MiniCLIP``; with ``--clip-init`` its text encoder(s) start from a shipped pipeline's; with
    ``--clip-train text_encoder`` the second encoder is mini-SDXL's shipped one, frozen."""
    from safetensors.torch import load_file

    def load(part, folder: Path) -> None:
        part.load_state_dict({k: v.float() for k, v in load_file(folder / "model.safetensors").items()})

    model = ms.MiniCLIP(args.size)
    for name in ("text_encoder", "text_encoder_2") if args.clip_init else ():
        if (Path(args.clip_init) / name).exists():
            load(getattr(model, name), Path(args.clip_init) / name)
    if args.clip_train == "text_encoder":
        load(model.text_encoder_2, args.assets / "mini-sdxl" / "text_encoder_2")
        model.text_encoder_2.requires_grad_(False)
    return model


def train_clip(args) -> dict:
    folder = stage_dir(args, "clip")
    device = args.device
    data, test = dataset(args), dataset(args, "test")
    tokenizers = ms.load_tokenizers()
    tokens, test_tokens = token_table(data.captions, tokenizers), token_table(test.captions, tokenizers)
    captioned = np.flatnonzero([bool(c) for c in data.captions])
    test_idx = np.flatnonzero([bool(c) for c in test.captions])[:512]
    test_batch = clip_batch(test, test_tokens, np.random.default_rng(0), len(test_idx), test_idx)

    negative_tokens = token_table(swapped_captions(data), tokenizers) if args.clip_hard_negatives else None
    test_negatives = token_table(swapped_captions(test), tokenizers)
    torch.manual_seed(args.seed)
    model = clip_model(args).to(device)
    clauses = clause_table(data, tokens, tokenizers) if args.clip_clause else None
    reference = copy.deepcopy(model.text_encoder).eval().requires_grad_(False) if (
        args.clip_anchor or args.clip_clause) else None
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=args.clip_lr, weight_decay=0.01)
    step, running = resume(folder, device, model, opt)
    total = args.clip_steps

    def train_step(step: int) -> float:
        idx = batch_rng(args.seed, "clip", step).choice(captioned, size=args.clip_batch, replace=False)
        pictures, ids, ids_2, fits = clip_examples(data, tokens, idx)
        negatives = None if negative_tokens is None else tuple(
            t.to(device) for t in hard_negatives(data, negative_tokens, idx))
        set_lr(opt, args.clip_lr * lr_at(step, total, warmup=min(100, total // 10 + 1)))
        model.train()
        with autocast(device):
            losses = model(pictures.to(device), ids.to(device), ids_2.to(device), fits.to(device), negatives)
            loss = losses["loss"] + text_side_loss(args, model.text_encoder, reference, data, clauses, idx,
                                                   ids.to(device))
        optimizer_step(opt, loss, model)
        return loss.item()

    def checkpoint(step: int, running: float, last: bool) -> None:
        save_checkpoint(folder / "checkpoint.pt", dict(model=model.state_dict(), opt=opt.state_dict(), step=step,
                                                       running=running))

    binding = lambda: binding_accuracy(model, test, test_tokens, test_negatives, test_idx, device)  # noqa: E731

    def evaluate(step: int, running: float, last: bool) -> None:
        model.eval()
        acc = model.retrieval_accuracy(*(t.to(device) for t in test_batch))
        print(f"\nclip step {step}: loss {running:.3f}, test retrieval accuracy "
              f"(a fitting caption among {len(test_idx)}) {acc[0]:.3f} / {acc[1]:.3f}; own caption above the "
              f"swapped one {binding()}", flush=True)

    step, running = resumable_loop(step, total, train_step, desc="clip", running=running,
                                   every=[(args.checkpoint_every, checkpoint), (args.sample_every, evaluate)])

    model.eval()
    acc = model.retrieval_accuracy(*(t.to(device) for t in test_batch))
    parts = {"text_encoder": model.text_encoder, "text_encoder_2": model.text_encoder_2}
    if args.clip_train == "text_encoder":
        parts.pop("text_encoder_2")
    ship_part(args, "clip", parts)
    info = clip_record(args, model, step, running, acc, binding(), len(test_idx))
    mark_done(args, "clip", info)
    return info


def text_side_loss(args, text_encoder, reference, data: cf.ColourFashion, clauses: dict | None, idx: np.ndarray,
                   ids: torch.Tensor) -> torch.Tensor:
    """``--clip-anchor`` x ``anchor_loss`` on the batch's one-item captions plus ``--clip-clause`` x
    ``clause_loss`` on its two-item ones (0 when both weights are 0)."""
    loss = torch.zeros((), device=ids.device)
    if args.clip_anchor:
        one_item = data.second.labels[idx] < 0 if data.second is not None else np.ones(len(idx), bool)
        loss = loss + args.clip_anchor * anchor_loss(text_encoder, reference, ids[torch.as_tensor(one_item)])
    if clauses is not None:
        loss = loss + args.clip_clause * clause_loss(text_encoder, reference, clauses, idx, ids)
    return loss


def clip_record(args, model, step: int, running: float, acc: tuple, binding: dict, pool: int) -> dict:
    """The clip stage's facts for training.json and the model card (``acc``: retrieval among ``pool`` test
    captions), with the starting encoder's record (``previous``) when it was a fine-tune."""
    info = dict(steps=step, batch=args.clip_batch, lr=args.clip_lr, loss=round(running, 4),
                trained=args.clip_train, initialised_from=args.clip_init and f"{Path(args.clip_init).name}'s encoders",
                hard_negatives=args.clip_hard_negatives, anchor_weight=args.clip_anchor, clause_weight=args.clip_clause,
                binding_swap_accuracy=binding,
                two_item_share=args.two_item_share,
                retrieval_accuracy_text_encoder=round(acc[0], 4), retrieval_accuracy_text_encoder_2=round(acc[1], 4),
                retrieval_pool=pool, params_text_encoder=ms.count_parameters(model.text_encoder),
                params_text_encoder_2=ms.count_parameters(model.text_encoder_2),
                params_image_tower=ms.count_parameters(model.image_tower))
    started_from = Path(args.clip_init or "") / "training.json"
    if args.clip_init and started_from.exists():  # keep the history: how the starting encoder had been trained
        info["previous"] = json.loads(started_from.read_text()).get("clip")
    return info


def share_first_encoder(args) -> dict:
    """mini-SDXL's first text encoder := mini-SD's, which was retrained on positioned captions and tells places
    apart; the second (the refiner reads it) stays. mini-SDXL's UNet then has to be fine-tuned on it
    (``unet-sdxl --unet-init DIR``, DIR holding the UNet to start from): its old UNet is dropped here."""
    if not is_done(args, "clip"):
        raise SystemExit("share-encoder needs both pipelines' text encoders: run `clip` first.")
    shutil.copytree(args.assets / "mini-sd" / "text_encoder", args.assets / "mini-sdxl" / "text_encoder",
                    dirs_exist_ok=True)
    clip = training_record(args, "mini-sdxl")["clip"]
    clip["text_encoder_from"] = {"folder": "mini-sd", **training_record(args, "mini-sd")["clip"]}
    mark_done(args, "clip", clip, folders=("mini-sdxl",))
    return clip["text_encoder_from"]


def load_text_encoders(args, device: str, sdxl: bool = True):
    """The frozen shipped text encoders a UNet stage trains against: mini-SDXL's pair, or for mini-SD
    (``sdxl=False``) its own ``text_encoder`` (the two folders' first encoders may differ: mini-SD's was
    retrained on positioned captions, mini-SDXL's was not) and no second one."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    shipped = args.assets / ("mini-sdxl" if sdxl else "mini-sd")
    te = CLIPTextModel.from_pretrained(shipped / "text_encoder", dtype=torch.float32).to(device).eval()
    if not sdxl:
        return te.requires_grad_(False), None
    te_2 = CLIPTextModelWithProjection.from_pretrained(shipped / "text_encoder_2", dtype=torch.float32).to(device).eval()
    return te.requires_grad_(False), te_2.requires_grad_(False)


# ----------------------------------------------------------------------------
# 2. VAE


def vae_batch(data: cf.ColourFashion, rng: np.random.Generator, batch: int) -> torch.Tensor:
    """Pictures [B, 3, 64, 64] in [-1, 1]; a quarter blurred and a quarter cropped, as mini-SDXL will see."""
    idx = rng.integers(0, len(data), batch)
    pictures, _, _ = micro.micro_condition(data.pictures(idx), rng, size_share=0.25, crop_share=0.25,
                                        croppable=data.places[idx] == cf.UNPLACED)
    return cf.to_vae_input(pictures)


def item_weights(x: torch.Tensor, item_weight: float) -> torch.Tensor:
    """Per-pixel loss weights [B, 1, H, W] for pictures x [B, 3, H, W] in [-1, 1]: 1 + ``item_weight`` on the
    items' pixels (off the background colour, grown by 1 px), normalised to mean 1 per picture, so a small
    item's details count as much as the empty canvas around it."""
    background = cf.to_vae_input(cf.rgb_tensor(cf.BACKGROUND)).to(x)
    ink = ((x - background).abs().amax(1, keepdim=True) > 0.1).float()
    w = 1 + item_weight * F.max_pool2d(ink, 3, stride=1, padding=1)
    return w / w.mean((2, 3), keepdim=True)


def vae_loss(vae, x: torch.Tensor, kl_weight: float = 1e-6, item_weight: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 + MSE reconstruction of a posterior sample (each pixel weighted by ``item_weights``), plus
    ``kl_weight`` x KL(q(z|x) || N(0, I)) per picture."""
    posterior = vae.encode(x).latent_dist
    reconstruction = vae.decode(posterior.sample()).sample
    diff = reconstruction.float() - x
    w = item_weights(x, item_weight) if item_weight else torch.ones_like(diff[:, :1])
    rec = (w * diff.abs()).mean() + (w * diff ** 2).mean()
    return rec + kl_weight * posterior.kl().mean(), reconstruction


def patch_discriminator(channels: int = 32) -> torch.nn.Module:
    """PatchGAN (Isola et al. 2017; taming's NLayerDiscriminator, which trained SD's VAE, Rombach et al. 2022,
    §3 and App. G): pictures [B, 3, 64, 64] in [-1, 1] -> real/fake logits [B, 1, 14, 14], one per ~30 px patch."""
    nn = torch.nn

    def block(c_in, c_out, stride):
        return [nn.Conv2d(c_in, c_out, 4, stride, 1), nn.GroupNorm(8, c_out), nn.LeakyReLU(0.2)]
    return nn.Sequential(nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2), *block(channels, 2 * channels, 2),
                         *block(2 * channels, 4 * channels, 1), nn.Conv2d(4 * channels, 1, 4, 1, 1))


def adaptive_gan_weight(rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """taming's ``calculate_adaptive_weight``: ||d rec / d w|| / ||d gan / d w|| at the decoder's last layer,
    so the adversarial term pulls as hard as the reconstruction, whatever their scales."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()


class VaeGan:
    """The VAE's adversarial part: a patch discriminator with its optimizer and hinge losses (``weight`` 0: off)."""

    def __init__(self, args, device: str):
        self.weight, self.start = args.vae_gan_weight, args.vae_gan_start
        self.disc = patch_discriminator().to(device) if self.weight else None
        self.opt = torch.optim.AdamW(self.disc.parameters(), lr=args.vae_lr, betas=(0.5, 0.9)) if self.disc else None

    def generator_loss(self, vae, rec_loss, reconstruction, step: int) -> tuple[torch.Tensor, dict]:
        if self.disc is None or step < self.start:
            return rec_loss, {}
        gan = -self.disc(reconstruction).mean()
        weight = adaptive_gan_weight(rec_loss, gan, vae.decoder.conv_out.weight) * self.weight
        return rec_loss + weight * gan, {"gan": gan.item(), "gan_weight": weight.item()}

    def discriminator_step(self, x: torch.Tensor, reconstruction: torch.Tensor) -> float:
        if self.disc is None:
            return 0.0
        loss = F.relu(1 - self.disc(x)).mean() + F.relu(1 + self.disc(reconstruction.detach().float())).mean()
        optimizer_step(self.opt, loss, self.disc)
        return loss.item()

    def state(self) -> dict:
        return {"disc": self.disc.state_dict(), "disc_opt": self.opt.state_dict()} if self.disc else {}

    def load(self, state: dict) -> None:
        if self.disc is not None and "disc" in state:
            self.disc.load_state_dict(state["disc"])
            self.opt.load_state_dict(state["disc_opt"])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB (``engine.metrics.psnr``) of two batches in [-1, 1], over their 8-bit [0, 255] values."""
    def to8(x):
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    return metrics.psnr(to8(a), to8(b))


@torch.no_grad()
def latent_std(vae, data: cf.ColourFashion, device: str, count: int = 2048) -> float:
    """The std of posterior samples of ``count`` training pictures (unscaled): 1 / scaling_factor."""
    rng = np.random.default_rng(12345)
    zs = [vae.encode(vae_batch(data, rng, 256).to(device)).latent_dist.sample() for _ in range(max(1, count // 256))]
    return float(torch.cat(zs).float().std())


VAE_POSITIONED_SHARE = 0.75  # the VAE sees more placed (small) items than the UNets: they are what it loses


def make_trainable_vae(args, device: str):
    """A fresh VAE, or (``--vae-init``) the shipped one to fine-tune; with ``--vae-train decoder`` only the
    decoder and ``post_quant_conv`` learn. Returns (vae, its trainable parameters)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(args.seed)
    if args.vae_init:
        vae = AutoencoderKL.from_pretrained(Path(args.vae_init) / "mini-sd" / "vae", dtype=torch.float32)
    else:
        vae = ms.make_vae(args.size)
    if args.vae_layers:
        vae = ms.deepen_vae(vae, args.vae_layers)
    vae = vae.to(device)
    if args.vae_train == "decoder":
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    return vae, [p for p in vae.parameters() if p.requires_grad]


def train_vae(args) -> dict:
    folder = stage_dir(args, "vae")
    device = args.device
    data, test = dataset(args, positioned_share=VAE_POSITIONED_SHARE), dataset(args, "test")
    test_x = cf.to_vae_input(test.pictures(range(256)))
    judge_check = vae_judge_check(args)

    vae, trainable = make_trainable_vae(args, device)
    opt = torch.optim.AdamW(trainable, lr=args.vae_lr, weight_decay=0.0)
    step, running = resume(folder, device, vae, opt)
    gan = VaeGan(args, device)
    gan.load(load_checkpoint(folder / "checkpoint.pt", device) or {})
    total, started = args.vae_steps, time.time()

    def train_step(step: int) -> float:
        x = vae_batch(data, batch_rng(args.seed, "vae", step), args.vae_batch).to(device)
        set_lr(opt, args.vae_lr * lr_at(step, total, warmup=min(200, total // 10 + 1)))
        vae.train()
        with autocast(device, args.bf16):
            loss, reconstruction = vae_loss(vae, x, item_weight=args.vae_item_weight)
            loss, _ = gan.generator_loss(vae, loss, reconstruction, step)
        optimizer_step(opt, loss, vae)
        with autocast(device, args.bf16):
            gan.discriminator_step(x, reconstruction)
        return loss.item()

    def checkpoint(step: int, running: float, last: bool) -> None:
        save_checkpoint(folder / "checkpoint.pt", dict(model=vae.state_dict(), opt=opt.state_dict(), step=step,
                                                       running=running, **gan.state()))

    def evaluate(step: int, running: float, last: bool) -> None:
        vae.eval()
        with torch.no_grad():
            rec = vae.decode(vae.encode(test_x[:8].to(device)).latent_dist.mode()).sample.float().cpu()
        save_grid(torch.cat([test_x[:8], rec]) / 2 + 0.5, 2, folder / "samples" / f"step{step:06d}.png")
        print(f"\nvae step {step}: loss {running:.4f}, test PSNR (8 pictures) {psnr(rec, test_x[:8]):.2f} dB, "
              f"judge on placed round trips {judge_check(vae)}", flush=True)

    step, running = resumable_loop(step, total, train_step, desc="vae", running=running, stop=deadline(args),
                                   every=[(args.checkpoint_every, checkpoint), (args.sample_every, evaluate)])
    return ship_vae(args, vae, data, test_x, judge_check,
                    dict(steps=step, batch=args.vae_batch, lr=args.vae_lr, loss=round(running, 5),
                         wall_seconds_last_run=round(time.time() - started)))


def vae_judge_check(args, count: int = 500) -> callable:
    """``check(vae) -> {side: judge accuracy after the round trip}`` on placed real test items (the issue's
    measure of what the VAE keeps), or a no-op when there is no judge (smoke runs)."""
    from engine.fashion.data import load_split
    from engine.fashion.judge import judge_images

    if args.smoke:
        return lambda vae: {}
    try:
        from engine import loader
        from engine.presets import presets_for

        judge = loader.load([p.name for p in presets_for("classifier")][0], "classifier", device="cpu")
    except (IndexError, OSError, ValueError):
        return lambda vae: {}
    items, labels = load_split("test")

    def classes(pictures, boxes):
        return judge_images(judge, measure.to_judge_grey(pictures, boxes))[0]

    def check(vae) -> dict:
        result = measure.judge_on_round_trips(vae.float().cpu().eval(), classes, items[:count], labels[:count],
                                              sides=(30, 36))
        vae.to(args.device)
        return {side: r["vae"] for side, r in result.items()}
    return check


def ship_vae(args, vae, data, test_x, judge_check, info: dict) -> dict:
    """Measure and ship the VAE; a decoder-only fine-tune keeps the scaling factor (the latents are the same)."""
    device = args.device
    vae.eval()
    with torch.no_grad():
        rec = torch.cat([vae.decode(vae.encode(chunk.to(device)).latent_dist.mode()).sample.float().cpu()
                         for chunk in test_x.split(64)])
    decoder_only = args.vae_train == "decoder"
    if not decoder_only:
        std = latent_std(vae, data, device)
        vae.register_to_config(scaling_factor=round(1.0 / std, 5))
        info["latent_std"] = round(std, 5)
    if args.vae_init:  # keep the history: what the starting VAE had been trained with
        info["previous"] = training_record(args, "mini-sd", root=args.vae_init).get("vae")
    ship_part(args, "vae", {"vae": vae})
    info.update(test_psnr_db=round(psnr(rec, test_x), 2), test_pictures=len(test_x),
                scaling_factor=vae.config.scaling_factor, params=ms.count_parameters(vae),
                layers_per_block=vae.config.layers_per_block,
                judge_on_placed_round_trips=judge_check(vae), decoder_only=decoder_only,
                item_loss_weight=args.vae_item_weight, patch_gan_weight=args.vae_gan_weight,
                initialised_from="the previous shipped VAE" if args.vae_init else "scratch",
                data=f"{VAE_POSITIONED_SHARE:.0%} placed pictures ({args.two_item_share:.0%} of them with two items)")
    mark_done(args, "vae", info)
    return info


def load_vae(args, device: str):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(args.assets / "mini-sd" / "vae", dtype=torch.float32).to(device).eval()
    return vae.requires_grad_(False)


# ----------------------------------------------------------------------------
# 3 and 4. UNets


def frozen_parts_key(args, sdxl: bool = True, text: bool = True) -> str:
    """A fingerprint of the text encoders a UNet stage reads (``load_text_encoders``) and the VAE's encoder: UNet
    checkpoints made with other ones are stale. The VAE's decoder is left out: a decoder fine-tune keeps the
    latents. ``text=False``: the VAE's encoder alone, all that a latent cache depends on."""
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    folder = args.assets / ("mini-sdxl" if sdxl else "mini-sd")
    names = ("text_encoder/model.safetensors",) + (("text_encoder_2/model.safetensors",) if sdxl else ())
    for name in names if text else ():
        digest.update((folder / name).read_bytes())
    vae = load_file(folder / "vae" / "diffusion_pytorch_model.safetensors")
    for key in sorted(k for k in vae if k.startswith(("encoder.", "quant_conv."))):
        digest.update(key.encode() + vae[key].float().numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def encode_latents(args, vae, data: cf.ColourFashion, sdxl: bool, device: str) -> dict:
    """Every training picture through the VAE encoder, once: posterior mean and std [N, 4, 8, 8].

    For mini-SDXL each picture first gets its micro-conditioning augmentation
    (drawn from the seed), and its original_size and crop [N, 2] are kept.
    Cached in ``OUT/latents-{sd,sdxl}.pt``, keyed by the VAE's encoder, the seed and the data's make-up.
    """
    path = args.out / f"latents-{'sdxl' if sdxl else 'sd'}.pt"
    key = (f"{frozen_parts_key(args, sdxl, text=False)} seed={args.seed} items={len(data)} two={args.two_item_share} "
           f"placed={args.positioned_share}")
    if path.exists():
        cached = torch.load(path, weights_only=False)
        if cached.get("key") == key:
            return cached
    rng = np.random.default_rng([args.seed, 99, int(sdxl)])
    means, stds, originals, crops = [], [], [], []
    for start in tqdm(range(0, len(data), 500), desc=f"encode {'sdxl' if sdxl else 'sd'} latents", mininterval=10,
                      file=sys.stdout):
        rows = np.arange(start, min(start + 500, len(data)))
        pictures = data.pictures(rows)
        if sdxl:
            pictures, original, crop = micro.micro_condition(pictures, rng, croppable=data.places[rows] == cf.UNPLACED)
            originals.append(original)
            crops.append(crop)
        dist = vae.encode(cf.to_vae_input(pictures).to(device)).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    latents = {"mean": torch.cat(means), "std": torch.cat(stds), "key": key}
    if sdxl:
        latents.update(original_size=torch.cat(originals), crops_coords_top_left=torch.cat(crops))
    torch.save(latents, path)
    return latents


@torch.no_grad()
def encode_caption_table(captions: list[str], tokenizers: dict, te, te_2, sdxl: bool) -> dict:
    """Each distinct caption through the frozen encoder(s), once, exactly as the pipeline encodes a prompt.

    Returns {"index": int64 [N] (row of each item's caption), "hidden": [U, 77, D],
    and for SDXL "pooled": [U, P]}. For SDXL the empty caption is all zeros
    (``force_zeros_for_empty_prompt``), as SDXL base's unconditional input.
    """
    unique = sorted(set(captions))
    row = {c: i for i, c in enumerate(unique)}
    hidden, pooled = [], []
    for start in range(0, len(unique), 256):
        chunk = unique[start: start + 256]
        if sdxl:
            h, p = te_.encode_sdxl(tokenizers, te, te_2, chunk)
            pooled.append(p.float().cpu())
        else:
            h = te_.encode_sd(tokenizers["tokenizer"], te, chunk)
        hidden.append(h.float().cpu())
    table = {"index": torch.tensor([row[c] for c in captions]), "hidden": torch.cat(hidden)}
    if sdxl:
        table["pooled"] = torch.cat(pooled)
        if "" in row:
            table["hidden"][row[""]] = 0
            table["pooled"][row[""]] = 0
    return table


def caption_words(data: cf.ColourFashion, table: dict, tokenizer) -> torch.Tensor:
    """``engine.mini.grounding.word_positions`` of each distinct caption of ``table``: int64 [U, 77], read
    from the first item with that caption (the same caption always names the same classes and colours)."""
    from engine.mini.grounding import word_positions

    first = {}
    for i, r in enumerate(table["index"].tolist()):
        first.setdefault(r, i)
    words = torch.full((len(table["hidden"]), 77), -1, dtype=torch.int64)
    second = data.second
    for r, i in first.items():
        labels, colours = [int(data.labels[i])], [int(data.colours[i]) if data.names_colour[i] else -1]
        if second is not None and second.labels[i] >= 0:
            labels.append(int(second.labels[i]))
            colours.append(int(second.colours[i]))
        words[r] = torch.from_numpy(word_positions(tokenizer, data.captions[i], tuple(labels), tuple(colours)))
    return words


def unet_batch(latents: dict, table: dict, rng: np.random.Generator, batch: int, scaling_factor: float,
               sdxl: bool, data: cf.ColourFashion | None = None) -> dict:
    """One batch: scaled latents z0 [B, 4, 8, 8] (a posterior sample), hidden states, SDXL's added inputs;
    with ``data`` and a table with "words", the grounding targets too: "words" [B, 77] and the items'
    "shading" [B, 2, 64, 64], moved as the SDXL crop moved the picture."""
    idx = torch.from_numpy(rng.integers(0, len(latents["mean"]), batch))
    eps = torch.from_numpy(rng.standard_normal(latents["mean"][idx].shape).astype(np.float32))
    z0 = (latents["mean"][idx] + latents["std"][idx] * eps) * scaling_factor
    rows = table["index"][idx]
    out = {"z0": z0, "encoder_hidden_states": table["hidden"][rows]}
    if sdxl:
        out["added_cond_kwargs"] = {
            "text_embeds": table["pooled"][rows],
            "time_ids": add_time_ids(latents["original_size"][idx], latents["crops_coords_top_left"][idx],
                                          (cf.IMAGE_SIZE, cf.IMAGE_SIZE)),
        }
    if data is not None and "words" in table:
        shading = data.shading(idx.numpy())
        if sdxl:
            shading = torch.cat([micro.crop_canvas(shading[i: i + 1], *map(int, latents["crops_coords_top_left"][j]),
                                                fill=0.0) for i, j in enumerate(idx.tolist())])
        out.update(words=table["words"][rows], shading=shading)
    return out


def min_snr_weights(noise_scheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """min(SNR(t), gamma) / SNR(t) per sample [B], SNR = a / (1 - a) (Hang et al. 2023, "Efficient Diffusion
    Training via Min-SNR Weighting Strategy", eq. for epsilon-prediction); all ones when gamma is 0."""
    if not gamma:
        return torch.ones(len(t), device=t.device)
    a = noise_scheduler.alphas_cumprod.to(t.device)[t]
    snr = a / (1 - a)
    return snr.clamp(max=gamma) / snr


def unet_loss(unet, noise_scheduler, b: dict, rng: np.random.Generator, device: str, snr_gamma: float = 0.0,
              bf16: bool = False, grounding: tuple[float, float] = (0.0, 0.0),
              grounding_mask: str = "any") -> dict[str, torch.Tensor]:
    """DDPM's simple loss || eps - eps_theta(sqrt(a) z0 + sqrt(1 - a) eps, t, text) ||^2, t uniform
    (Ho et al. 2020, Algorithm 1), each sample weighted by ``min_snr_weights``; plus, with ``grounding`` =
    (token weight, pixel weight) and a batch with "words", TokenCompose's two losses on the cross-attention
    maps of the 8x8 and 4x4 layers, recorded by the app's recorder, with ``grounding_mask`` masks
    (``engine.mini.grounding``).
    Returns {"loss": the total, "mse", and "token_loss", "pixel_loss" when grounded}."""
    from engine.mini.grounding import GROUNDED_SIDES, grounding_losses
    from engine.unet.attention import record_cross_attention

    z0 = b["z0"].to(device)
    t = torch.from_numpy(rng.integers(0, noise_scheduler.config.num_train_timesteps, len(z0))).to(device)
    noise = torch.from_numpy(rng.standard_normal(z0.shape).astype(np.float32)).to(device)
    noisy = noise_scheduler.add_noise(z0, noise, t)
    added = None
    if "added_cond_kwargs" in b:
        added = {k: v.to(device) for k, v in b["added_cond_kwargs"].items()}
    grounded = any(grounding) and "words" in b
    recording = (record_cross_attention(unet, layers=list(GROUNDED_SIDES), num_images=len(z0), keep_maps=True)
                 if grounded else contextlib.nullcontext())
    with autocast(device, bf16), recording as recorder:
        pred = unet(noisy, t, encoder_hidden_states=b["encoder_hidden_states"].to(device),
                    added_cond_kwargs=added).sample
    per_sample = F.mse_loss(pred.float(), noise, reduction="none").mean(dim=(1, 2, 3))
    out = {"mse": (per_sample * min_snr_weights(noise_scheduler, t, snr_gamma)).mean()}
    out["loss"] = out["mse"]
    if grounded:
        out.update(grounding_losses(recorder.layer_maps, b["words"].to(device), b["shading"].to(device),
                                    grounding_mask))
        out["loss"] = out["loss"] + grounding[0] * out["token_loss"] + grounding[1] * out["pixel_loss"]
    return out


def build_pipeline(args, unet, sdxl: bool, device: str):
    te, te_2 = load_text_encoders(args, device, sdxl)
    vae = load_vae(args, device)
    if sdxl:
        pipe = ms.build_sdxl_pipeline(unet, vae, te, te_2)
    else:
        pipe = ms.build_sd_pipeline(unet, vae, te)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_unet_weights(folder: Path) -> dict:
    """The fp32 state dict of a shipped mini UNet (``--unet-init``): a fine-tune starts from it."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(folder, dtype=torch.float32).state_dict()


def train_unet(args, sdxl: bool) -> dict:
    stage = "unet-sdxl" if sdxl else "unet-sd"
    folder = stage_dir(args, stage)
    device = args.device
    data = dataset(args)
    te, te_2 = load_text_encoders(args, device, sdxl)
    vae = load_vae(args, device)
    latents = encode_latents(args, vae, data, sdxl, device)
    tokenizers = ms.load_tokenizers()
    table = encode_caption_table(data.captions, tokenizers, te, te_2, sdxl)
    grounding = (args.token_loss, args.pixel_loss)
    if any(grounding):
        table["words"] = caption_words(data, table, tokenizers["tokenizer"])
    scaling_factor = vae.config.scaling_factor
    noise_scheduler = noise_schedule.noise_scheduler()

    torch.manual_seed(args.seed)
    unet = ms.make_unet(args.size, sdxl).to(device)
    if args.unet_init:
        unet.load_state_dict(load_unet_weights(Path(args.unet_init) / ("mini-sdxl" if sdxl else "mini-sd") / "unet"))
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.unet_lr, weight_decay=0.01)
    key = frozen_parts_key(args, sdxl)
    step, running = resume(folder, device, unet, opt, ema, key)
    total = args.unet_steps
    started = time.time()
    terms: dict[str, float] = {}  # running means of the loss terms, for the log

    def train_step(step: int) -> float:
        rng = batch_rng(args.seed, stage, step)
        b = unet_batch(latents, table, rng, args.unet_batch, scaling_factor, sdxl, data)
        set_lr(opt, args.unet_lr * lr_at(step, total, warmup=min(200, total // 10 + 1)))
        unet.train()
        losses = unet_loss(unet, noise_scheduler, b, rng, device, args.snr_gamma, args.bf16, grounding,
                           args.grounding_mask)
        optimizer_step(opt, losses["loss"], unet)
        ema_update(ema, unet, step, args.ema_decay)
        for name, value in losses.items():
            value = value.item()
            terms[name] = 0.98 * terms.get(name, value) + 0.02 * value
        return losses["loss"].item()

    def checkpoint(step: int, running: float, last: bool) -> None:
        save_checkpoint(folder / "checkpoint.pt", dict(model=unet.state_dict(), ema=ema.state_dict(),
                                                       opt=opt.state_dict(), step=step, running=running,
                                                       frozen_parts=key))

    def grid(step: int, running: float, last: bool) -> None:
        pipe = ms.build_sdxl_pipeline(ema, vae, te, te_2) if sdxl else ms.build_sd_pipeline(ema, vae, te)
        pipe.set_progress_bar_config(disable=True)
        sample_grid(pipe, sdxl, folder / "samples" / f"step{step:06d}.png", steps=args.grid_steps)
        print(f"\n{stage} step {step}: loss {running:.4f} "
              f"({', '.join(f'{k} {v:.4f}' for k, v in terms.items())}), grid saved", flush=True)

    step, running = resumable_loop(step, total, train_step, desc=stage, running=running, stop=deadline(args),
                                   every=[(args.checkpoint_every, checkpoint), (args.sample_every, grid)])

    info = dict(steps=step, batch=args.unet_batch, lr=args.unet_lr, ema_decay=args.ema_decay, snr_gamma=args.snr_gamma,
                token_loss_weight=args.token_loss, pixel_loss_weight=args.pixel_loss,
                **({"grounding_mask": args.grounding_mask} if any(grounding) else {}),
                positioned_share=args.positioned_share,
                two_item_share=args.two_item_share, loss_terms={k: round(v, 5) for k, v in terms.items()},
                initialised_from="the previous shipped UNet" if args.unet_init else "scratch",
                loss=round(running, 5), params=ms.count_parameters(ema), train_items=len(data),
                distinct_captions=int(len(table["hidden"])), wall_seconds_last_run=round(time.time() - started))
    if args.unet_init:  # keep the history: what the starting UNet had been trained with
        info["previous"] = training_record(args, "mini-sdxl" if sdxl else "mini-sd", root=args.unet_init).get(stage)
    ship(args, ema, sdxl)
    mark_done(args, stage, info)
    return info


# ----------------------------------------------------------------------------
# Shipping


def ship(args, unet, sdxl: bool) -> Path:
    """Write the whole pipeline into ``ASSETS/mini-sd`` or ``ASSETS/mini-sdxl`` (fp16), with a sample grid."""
    pipe = build_pipeline(args, unet, sdxl, "cpu")
    path = ms.save_pipeline(pipe, args.assets / ("mini-sdxl" if sdxl else "mini-sd"))
    sample_grid(pipe, sdxl, path / "samples.png", steps=args.grid_steps)
    return path


# ----------------------------------------------------------------------------
# Bench: time a few steps of each stage at the chosen size, estimate the whole run


def bench(args) -> dict:
    """Seconds per step of each stage (after one warm-up step) and the estimated total for the chosen steps."""
    device = args.device
    data = dataset(args)
    tokenizers = ms.load_tokenizers()
    tokens = token_table(data.captions, tokenizers)
    captioned = np.flatnonzero([bool(c) for c in data.captions])
    n = args.bench_steps

    cpu_per_step = {}

    def timed(name, step_fn) -> float:
        """Wall seconds per step; CPU seconds per step (all threads) go to ``cpu_per_step``."""
        step_fn(0)
        start, cpu_start = time.perf_counter(), time.process_time()
        for i in range(1, n + 1):
            step_fn(i)
        cpu_per_step[name] = (time.process_time() - cpu_start) / n
        return (time.perf_counter() - start) / n

    clip = ms.MiniCLIP(args.size).to(device)
    clip_opt = torch.optim.AdamW(clip.parameters(), lr=1e-4)

    def clip_step(i):
        loss = clip(*(t.to(device) for t in clip_batch(data, tokens, batch_rng(0, "clip", i), args.clip_batch,
                                                      captioned)))["loss"]
        clip_opt.zero_grad()
        loss.backward()
        clip_opt.step()

    vae = ms.make_vae(args.size).to(device)
    vae_opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)

    def vae_step(i):
        loss, _ = vae_loss(vae, vae_batch(data, batch_rng(0, "vae", i), args.vae_batch).to(device))
        vae_opt.zero_grad()
        loss.backward()
        vae_opt.step()

    def encode_step(i):
        with torch.no_grad():
            pictures, _, _ = micro.micro_condition(data.pictures(np.arange(500)), np.random.default_rng(i))
            vae.encode(cf.to_vae_input(pictures).to(device))

    noise_scheduler = noise_schedule.noise_scheduler()
    table_sd = encode_caption_table(data.captions, tokenizers, clip.text_encoder, clip.text_encoder_2, False)
    table_xl = encode_caption_table(data.captions, tokenizers, clip.text_encoder, clip.text_encoder_2, True)
    fake = {"mean": torch.randn(len(data), 4, 8, 8), "std": torch.full((len(data), 4, 8, 8), 0.1),
            "original_size": torch.full((len(data), 2), 64), "crops_coords_top_left": torch.zeros(len(data), 2).long()}

    def unet_step_fn(sdxl):
        unet = ms.make_unet(args.size, sdxl).to(device)
        opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
        table = table_xl if sdxl else table_sd

        def step(i):
            rng = batch_rng(0, "unet-sd", i)
            loss = unet_loss(unet, noise_scheduler, unet_batch(fake, table, rng, args.unet_batch, 1.0, sdxl), rng,
                             device, bf16=args.bf16)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        return step

    steps = {"clip": clip_step, "vae": vae_step, "encode 500 pictures": encode_step,
             "unet-sd": unet_step_fn(False), "unet-sdxl": unet_step_fn(True)}
    per_step = {name: timed(name, fn) for name, fn in steps.items()}
    items = len(data) if args.num_items is None else args.num_items
    counts = {"clip": args.clip_steps, "vae": args.vae_steps, "encode 500 pictures": 2 * items / 500,
              "unet-sd": args.unet_steps, "unet-sdxl": args.unet_steps}
    seconds = {k: per_step[k] * counts[k] for k in counts}
    report = {"device": device, "threads": torch.get_num_threads(), "size": args.size,
              "load_average_1min": round(os.getloadavg()[0], 2),
              "seconds_per_step": {k: round(v, 4) for k, v in per_step.items()},
              "cpu_seconds_per_step": {k: round(v, 4) for k, v in cpu_per_step.items()},
              "cpu_hours_total": round(sum(cpu_per_step[k] * counts[k] for k in counts) / 3600, 2),
              "batch": {"clip": args.clip_batch, "vae": args.vae_batch, "unet": args.unet_batch},
              "steps": {"clip": args.clip_steps, "vae": args.vae_steps, "unet": args.unet_steps},
              "estimated_minutes": {k: round(v / 60, 1) for k, v in seconds.items()},
              "estimated_total_minutes": round(sum(seconds.values()) / 60, 1)}
    print(json.dumps(report, indent=2), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def quiet_libraries() -> None:
    """Only errors from diffusers and transformers (their load/save chatter hides the progress bars)."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv=None) -> None:
    args = parse_args(argv)
    from engine.fashion.data import require_dataset

    require_dataset()  # one line saying how to install it, when it is missing
    quiet_libraries()
    torch.set_num_threads(args.threads)
    if args.device == "cpu":
        torch.set_flush_denormal(True)  # denormals make CPU convolutions 10-20x slower
    if args.stage == "bench":
        bench(args)
        return
    if args.stage == "share-encoder":
        print(json.dumps({"share-encoder": share_first_encoder(args)}), flush=True)
        return
    stages = STAGES if args.stage == "all" else (args.stage,)
    runners = {"clip": train_clip, "vae": train_vae, "unet-sd": lambda a: train_unet(a, False),
               "unet-sdxl": lambda a: train_unet(a, True)}
    for stage in stages:
        if args.stage == "all" and is_done(args, stage):
            print(f"{stage}: done already (see {args.assets}/{ships_to(args, stage)[-1]}/training.json)", flush=True)
            continue
        for needed in STAGES[: STAGES.index(stage)][:2]:  # the UNets need the encoders and the VAE
            if stage.startswith("unet") and not is_done(args, needed):
                raise SystemExit(f"{stage} needs the {needed} stage first: run `{needed}` (or `all`).")
        print(json.dumps({stage: runners[stage](args)}), flush=True)
    if args.stage == "all" and not args.no_eval and not args.smoke:
        import subprocess

        subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "eval_mini_sd.py"), "--assets", str(args.assets),
                        "--threads", str(args.threads), "--write-cards"], check=False)


if __name__ == "__main__":
    main()
