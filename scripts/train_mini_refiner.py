#!/usr/bin/env python
"""Train the mini SDXL refiner (issue 23): mini-SDXL's UNet fine-tuned as SDXL's second stage, and ship it.

SDXL's refiner (Podell et al. 2023, §2.5) is a second latent diffusion model in
the base's latent space, trained only on the low-noise end of the schedule, on
high-quality pictures; an expert denoiser in eDiff-I's sense (Balaji et al.
2022). This script makes the mini one the same way:

* **Start from mini-SDXL's UNet** (``BASE/unet``, ``--base``), with the
  refiner's config changes, as diffusers' ``stable-diffusion-xl-refiner-1.0``
  has them: five added time ids (original size, crop, and an aesthetic score in
  place of the target size), so ``projection_class_embeddings_input_dim`` =
  5 x ``addition_time_embed_dim`` + the pooled width; the second text encoder
  only, so ``cross_attention_dim`` = text_encoder_2's hidden size (96, against
  the base's 64 + 96 = 160). Every weight of the same shape is copied. The
  cross-attention key and value projections, which read the context, change
  width: by default they keep the base's columns for text_encoder_2's part of
  the concatenated context (``--cross-attention-init slice``), or start fresh
  (``fresh``, diffusers' default initialisation). The added embedding keeps the
  pooled-text, size and crop columns and starts the aesthetic score's at zero,
  so the refiner begins as the base, blind to the score.
* **Train only on t below the switch point**: t uniform in [0, ``--max-timestep``)
  (200 of 1000: the last 20% of the schedule, ``denoising_end`` 0.8).
* **On crisp pictures**: the full 64 px picture, ``original_size`` = the canvas,
  crop (0, 0), aesthetic score ``--aesthetic-score`` (6.0). A share
  ``--blurry-share`` (0.1) is blurred (``engine.mini.micro.degrade_resolution``)
  and scored ``--negative-aesthetic-score`` (2.5), with its smaller original
  size: without some low-scored pictures the score, and so the negative score
  that classifier-free guidance's unconditional half gets, would mean nothing.
* Captions through text_encoder_2 only; the empty caption (~10%, for
  classifier-free guidance) is zeros, as the base (``force_zeros_for_empty_prompt``).

Ships ``ASSETS/mini-sdxl-refiner/`` in the diffusers layout: ``model_index.json``
(a ``StableDiffusionXLImg2ImgPipeline``, ``requires_aesthetics_score`` true),
``unet/`` (fp16), ``scheduler/``, ``training.json`` and a model card. It shares
``text_encoder_2``, ``tokenizer_2`` and the VAE with mini-SDXL, as the app's
loader does: load it with those passed in (see the card). Resumable:
``OUT/checkpoint.pt`` (``engine.training.resumable_loop``); batches from
``numpy.random.default_rng([seed, step])``.

Examples::

    python scripts/train_mini_refiner.py                       # into assets/mini-sdxl-refiner, 1 thread
    python scripts/train_mini_refiner.py --smoke --assets /tmp/a   # a few toy steps (tests)
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from engine import text_encoding as te_  # noqa: E402
from engine.mini import data as cf  # noqa: E402
from engine.mini import micro  # noqa: E402
from engine.mini import models as ms  # noqa: E402
from engine.mini.cards import save_grid  # noqa: E402
from engine import noise_schedule  # noqa: E402
from engine.txt2img.time_ids import aesthetic_time_ids  # noqa: E402
from engine.training import (autocast, ema_update, load_checkpoint, lr_at, optimizer_step,  # noqa: E402
                             resumable_loop, save_checkpoint, set_lr)

FOLDER = "mini-sdxl-refiner"
SHARED = ("text_encoder_2", "tokenizer_2", "vae")  # the base's parts the refiner uses as they are
DEFAULTS = {
    "full": dict(steps=3000, batch=64, num_items=None, checkpoint_every=100, sample_every=500, grid_steps=20),
    "smoke": dict(steps=4, batch=4, num_items=64, checkpoint_every=2, sample_every=4, grid_steps=2),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a few steps on a few pictures (tests, quick checks)")
    p.add_argument("--assets", default=None, help=f"where {FOLDER}/ is written (default assets/)")
    p.add_argument("--base", default=None, help="the mini-SDXL folder to start from (default ASSETS/mini-sdxl, "
                                                "else the shipped assets/mini-sdxl)")
    p.add_argument("--out", default=None, help="run folder (default runs/mini_refiner, or runs/mini_refiner_smoke)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    for name in DEFAULTS["full"]:
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--max-timestep", type=int, default=200, help="train on t in [0, this): the refiner's stretch")
    p.add_argument("--aesthetic-score", type=float, default=6.0, help="the crisp pictures' score")
    p.add_argument("--negative-aesthetic-score", type=float, default=2.5, help="the blurred pictures' score")
    p.add_argument("--blurry-share", type=float, default=0.1, help="share of blurred, low-scored pictures")
    p.add_argument("--cross-attention-init", choices=("slice", "fresh"), default="slice",
                   help="the key/value projections of cross-attention: the base's text_encoder_2 columns, or fresh")
    p.add_argument("--deadline-minutes", type=float, default=None, help="stop after this many minutes (ships)")
    args = p.parse_args(argv)
    args.size = "smoke" if args.smoke else "full"
    for key, value in DEFAULTS[args.size].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = Path(args.out or ("runs/mini_refiner_smoke" if args.smoke else "runs/mini_refiner"))
    args.assets = Path(args.assets or REPO_ROOT / "assets")
    if args.base is None:
        args.base = args.assets / "mini-sdxl"
        if not (args.base / "unet").is_dir():
            args.base = REPO_ROOT / "assets" / "mini-sdxl"
    args.base = Path(args.base)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return args


# ----------------------------------------------------------------------------
# The refiner's UNet, from the base's


def refiner_unet_config(base_config: dict, text_hidden_size: int, projection_dim: int) -> dict:
    """The base UNet's config with the refiner's changes: context = text_encoder_2's hidden states, five time
    ids (diffusers' refiner: ``projection_class_embeddings_input_dim`` = 5 x ``addition_time_embed_dim`` +
    the pooled width)."""
    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    config["cross_attention_dim"] = text_hidden_size
    config["projection_class_embeddings_input_dim"] = 5 * config["addition_time_embed_dim"] + projection_dim
    return config


def refiner_unet_from_base(base_unet, text_hidden_size: int, projection_dim: int, init: str = "slice"):
    """The refiner UNet with the base's weights where they fit; returns (unet, notes on what changed).

    The base's context is [text_encoder (D1), text_encoder_2 (D2)] concatenated, so "slice" keeps the last D2
    input columns of each cross-attention key and value projection. The added embedding's input is [pooled (P),
    6 x E time ids] in the base and [pooled, 5 x E] here: pooled, original size and crop columns are kept, the
    aesthetic score's E columns start at zero.
    """
    from diffusers import UNet2DConditionModel

    config = refiner_unet_config(dict(base_unet.config), text_hidden_size, projection_dim)
    unet = UNet2DConditionModel(**config)
    base, state, notes = base_unet.state_dict(), unet.state_dict(), {"fresh": [], "sliced": [], "copied": 0}
    width = 4 * config["addition_time_embed_dim"] + projection_dim  # pooled + original size + crop
    for name, value in state.items():
        old = base.get(name)
        if old is not None and old.shape == value.shape:
            state[name], notes["copied"] = old.clone(), notes["copied"] + 1
        elif name == "add_embedding.linear_1.weight":
            state[name] = torch.cat([old[:, :width], torch.zeros_like(value[:, width:])], dim=1)
            notes["sliced"].append(name)
        elif init == "slice" and name.endswith(("attn2.to_k.weight", "attn2.to_v.weight")):
            state[name] = old[:, -text_hidden_size:].clone()
            notes["sliced"].append(name)
        else:
            notes["fresh"].append(name)
    unet.load_state_dict(state)
    return unet, notes


# ----------------------------------------------------------------------------
# Data: crisp pictures (a few blurred ones, scored low), captions through text_encoder_2


@torch.no_grad()
def encode_pictures(args, vae, data: cf.ColourFashion, device: str) -> dict:
    """Every picture through the VAE encoder once: posterior mean and std [N, 4, 8, 8], original_size [N, 2] and
    aesthetic score [N]. Crisp: 64 px, scored ``aesthetic_score``; ``blurry_share`` degraded, scored low."""
    rng = np.random.default_rng([args.seed, 7])
    means, stds, originals, scores = [], [], [], []
    for start in range(0, len(data), 500):
        rows = np.arange(start, min(start + 500, len(data)))
        pictures = data.pictures(rows)
        size = np.full(len(rows), cf.IMAGE_SIZE)
        blurry = rng.random(len(rows)) < args.blurry_share
        for i in np.flatnonzero(blurry):
            size[i] = int(rng.choice(micro.SIZE_CHOICES))
            pictures[i: i + 1] = micro.degrade_resolution(pictures[i: i + 1], int(size[i]))
        dist = vae.encode(cf.to_vae_input(pictures).to(device)).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
        originals.append(torch.from_numpy(np.stack([size, size], axis=1)))
        scores.append(torch.from_numpy(np.where(blurry, args.negative_aesthetic_score, args.aesthetic_score)))
    return {"mean": torch.cat(means), "std": torch.cat(stds), "original_size": torch.cat(originals),
            "aesthetic_score": torch.cat(scores).float()}


@torch.no_grad()
def encode_captions(tokenizer_2, text_encoder_2, captions: list[str]) -> dict:
    """Each distinct caption through text_encoder_2 once, as the refiner's pipeline encodes a prompt:
    {"index": [N], "hidden": [U, 77, D2], "pooled": [U, P]}; the empty caption is zeros."""
    unique = sorted(set(captions))
    row = {c: i for i, c in enumerate(unique)}
    hidden, pooled = [], []
    for start in range(0, len(unique), 256):
        h, p = te_.encode_sdxl_refiner(tokenizer_2, text_encoder_2, unique[start: start + 256])
        hidden.append(h.float().cpu())
        pooled.append(p.float().cpu())
    table = {"index": torch.tensor([row[c] for c in captions]), "hidden": torch.cat(hidden),
             "pooled": torch.cat(pooled)}
    if "" in row:
        table["hidden"][row[""]] = 0
        table["pooled"][row[""]] = 0
    return table


def refiner_batch(latents: dict, table: dict, rng: np.random.Generator, batch: int, scaling_factor: float) -> dict:
    """One batch: z0 [B, 4, 8, 8] (a posterior sample, scaled), the context [B, 77, D2], pooled [B, P] and the
    five time ids [B, 5] (original size, crop (0, 0), aesthetic score)."""
    idx = torch.from_numpy(rng.integers(0, len(latents["mean"]), batch))
    eps = torch.from_numpy(rng.standard_normal(latents["mean"][idx].shape).astype(np.float32))
    rows = table["index"][idx]
    time_ids = aesthetic_time_ids(latents["original_size"][idx], (0, 0), latents["aesthetic_score"][idx])
    return {"z0": (latents["mean"][idx] + latents["std"][idx] * eps) * scaling_factor,
            "encoder_hidden_states": table["hidden"][rows],
            "added_cond_kwargs": {"text_embeds": table["pooled"][rows], "time_ids": time_ids}}


def refiner_loss(unet, noise_scheduler, b: dict, rng: np.random.Generator, device: str, max_timestep: int,
                 bf16: bool = False) -> torch.Tensor:
    """DDPM's simple loss (Ho et al. 2020, Algorithm 1) with t uniform in [0, ``max_timestep``) only: the
    refiner's stretch of the schedule (eDiff-I's expert denoisers; SDXL §2.5)."""
    z0 = b["z0"].to(device)
    t = torch.from_numpy(rng.integers(0, max_timestep, len(z0))).to(device)
    noise = torch.from_numpy(rng.standard_normal(z0.shape).astype(np.float32)).to(device)
    added = {k: v.to(device) for k, v in b["added_cond_kwargs"].items()}
    with autocast(device, bf16):
        noisy = noise_scheduler.add_noise(z0, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=b["encoder_hidden_states"].to(device),
                    added_cond_kwargs=added).sample
    return F.mse_loss(pred.float(), noise)


# ----------------------------------------------------------------------------
# The pipeline, samples, shipping


def load_base(args, device: str):
    """mini-SDXL (``--base``) in fp32, frozen: the UNet to start from, and the parts the refiner shares."""
    pipe = ms.load_pipeline(args.base, dtype=torch.float32).to(device)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        part.requires_grad_(False).eval()
    return pipe


def refiner_pipeline(unet, base):
    """A ``StableDiffusionXLImg2ImgPipeline`` refiner: ``unet``, the base's scheduler config, its
    ``text_encoder_2``, ``tokenizer_2`` and VAE; no first encoder; aesthetic-score time ids."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline

    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=base.vae, text_encoder=None, text_encoder_2=base.text_encoder_2, tokenizer=None,
        tokenizer_2=base.tokenizer_2, unet=unet, scheduler=EulerDiscreteScheduler.from_config(base.scheduler.config),
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def sample_pair(base, refiner, path: Path, steps: int, denoising_end: float = 0.8) -> None:
    """Two rows, same seeds: base alone, then base to ``denoising_end`` + the refiner (one item per colour)."""
    prompts = [cf.prompt_for(7, c) for c in cf.COLOUR_NAMES]
    kwargs = dict(num_inference_steps=steps, guidance_scale=2.0)
    alone = base(prompts, generator=torch.Generator("cpu").manual_seed(0), height=64, width=64, output_type="pt",
                 **kwargs).images.cpu()
    latents = base(prompts, generator=torch.Generator("cpu").manual_seed(0), height=64, width=64,
                   denoising_end=denoising_end, output_type="latent", **kwargs).images
    refined = refiner(prompts, image=latents, generator=torch.Generator("cpu").manual_seed(0),
                      denoising_start=denoising_end, output_type="pt", **kwargs).images.cpu()
    save_grid(torch.cat([alone, refined]), 2, path)


def ship(args, ema, base, info: dict) -> Path:
    """Write ``ASSETS/mini-sdxl-refiner``: model_index.json, unet/ (fp16), scheduler/, training.json, README.md,
    samples.png; the shared parts are left out (they are mini-SDXL's)."""
    refiner = refiner_pipeline(copy.deepcopy(ema).cpu(), base.to("cpu"))
    path = ms.save_pipeline(refiner, args.assets / FOLDER)
    for name in SHARED:
        shutil.rmtree(path / name, ignore_errors=True)
    (path / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    sample_pair(base, refiner, path / "samples.png", args.grid_steps)
    (path / "README.md").write_text(model_card(info), encoding="utf-8")
    return path


def model_card(info: dict) -> str:
    """The mini refiner's model card, from its training facts."""
    smoke = ["**Smoke test**: a few steps (`--smoke`); this model has learnt nothing.", ""] if info["smoke"] else []
    changes = info["unet_changes"]
    return "\n".join([
        f"# {FOLDER}: a miniature SDXL refiner for mini-SDXL", "", *smoke,
        "SDXL's second stage (Podell et al. 2023, §2.5), an expert denoiser for the end of the schedule (eDiff-I, "
        "Balaji et al. 2022): mini-SDXL's UNet fine-tuned only on t < "
        f"{info['max_timestep']} of 1000 (`denoising_end` {1 - info['max_timestep'] / 1000:g}), on crisp 64 px "
        f"pictures (original_size 64x64, crop 0,0, aesthetic score {info['aesthetic_score']:g}; "
        f"{info['blurry_share']:.0%} blurred and scored {info['negative_aesthetic_score']:g}).", "",
        "## Use", "",
        "It shares `text_encoder_2`, `tokenizer_2` and the VAE with `mini-sdxl` (they are not in this folder):", "",
        "```python", "from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline",
        "base = StableDiffusionXLPipeline.from_pretrained('assets/mini-sdxl')",
        f"refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained('assets/{FOLDER}',",
        "    text_encoder_2=base.text_encoder_2, tokenizer_2=base.tokenizer_2, vae=base.vae)",
        "latents = base('a red bag', denoising_end=0.8, output_type='latent').images",
        "image = refiner('a red bag', image=latents, denoising_start=0.8).images[0]", "```", "",
        "## UNet", "",
        f"The refiner's config: `cross_attention_dim` {info['cross_attention_dim']} (text_encoder_2 only; the base "
        f"reads {info['base_cross_attention_dim']}), five time ids "
        f"(`projection_class_embeddings_input_dim` {info['projection_dim_in']}), "
        f"`requires_aesthetics_score` true. {changes['copied']} tensors copied from mini-SDXL; "
        f"{len(changes['sliced'])} sliced (cross-attention key/value: `{info['cross_attention_init']}`; the added "
        f"embedding, aesthetic-score columns at zero); {len(changes['fresh'])} fresh. "
        f"{info['params']:,} parameters.", "",
        "## Training", "",
        f"{info['steps']} steps, batch {info['batch']}, AdamW lr {info['lr']:g}, EMA {info['ema_decay']}, "
        f"{info['train_items']} pictures; final loss {info['loss']}; on {info['device']}. "
        "`samples.png`: mini-SDXL alone (top) and handing over to the refiner at 0.8 (bottom), same seeds.", "",
        "<!-- eval:start -->", "Not measured yet: run `python scripts/eval_mini_refiner.py --write-card`.",
        "<!-- eval:end -->", ""])


# ----------------------------------------------------------------------------


def train(args) -> dict:
    device, started = args.device, time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    base = load_base(args, device)
    te2 = base.text_encoder_2.config
    torch.manual_seed(args.seed)
    unet, changes = refiner_unet_from_base(base.unet, te2.hidden_size, te2.projection_dim, args.cross_attention_init)
    unet = unet.to(device)
    data = cf.make_dataset("train", seed=args.seed, num_items=args.num_items)
    latents = encode_pictures(args, base.vae, data, device)
    table = encode_captions(base.tokenizer_2, base.text_encoder_2, data.captions)
    scaling_factor, noise_scheduler = base.vae.config.scaling_factor, noise_schedule.noise_scheduler()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.01)
    step, running = resume(args, device, unet, ema, opt)

    def train_step(step: int) -> float:
        rng = np.random.default_rng([args.seed, step])
        set_lr(opt, args.lr * lr_at(step, args.steps, warmup=min(100, args.steps // 10 + 1)))
        unet.train()
        loss = refiner_loss(unet, noise_scheduler, refiner_batch(latents, table, rng, args.batch, scaling_factor),
                            rng, device, args.max_timestep)
        optimizer_step(opt, loss, unet)
        ema_update(ema, unet, step, args.ema_decay)
        return loss.item()

    def checkpoint(step: int, running: float, last: bool) -> None:
        save_checkpoint(args.out / "checkpoint.pt", dict(model=unet.state_dict(), ema=ema.state_dict(),
                                                         opt=opt.state_dict(), step=step, running=running))

    def samples(step: int, running: float, last: bool) -> None:
        (args.out / "samples").mkdir(exist_ok=True)
        sample_pair(base, refiner_pipeline(ema, base), args.out / "samples" / f"step{step:06d}.png", args.grid_steps)

    end = None if args.deadline_minutes is None else time.time() + 60 * args.deadline_minutes
    step, running = resumable_loop(step, args.steps, train_step, desc="refiner", running=running,
                                   stop=lambda: end is not None and time.time() > end,
                                   every=[(args.checkpoint_every, checkpoint), (args.sample_every, samples)])
    info = dict(smoke=args.smoke, steps=step, batch=args.batch, lr=args.lr, ema_decay=args.ema_decay,
                max_timestep=args.max_timestep, aesthetic_score=args.aesthetic_score,
                negative_aesthetic_score=args.negative_aesthetic_score, blurry_share=args.blurry_share,
                cross_attention_init=args.cross_attention_init, cross_attention_dim=unet.config.cross_attention_dim,
                base_cross_attention_dim=base.unet.config.cross_attention_dim,
                projection_dim_in=unet.config.projection_class_embeddings_input_dim, unet_changes=changes,
                loss=None if running is None else round(running, 5), params=ms.count_parameters(ema),
                train_items=len(data), base=str(args.base.name), wall_seconds_last_run=round(time.time() - started),
                device=f"{device}, {args.threads} threads" if device == "cpu" else device)
    ship(args, ema, base, info)
    return info


def resume(args, device: str, unet, ema, opt) -> tuple[int, float | None]:
    """Load ``OUT/checkpoint.pt`` into the UNet, EMA and optimiser if there is one; (step, running loss)."""
    state = load_checkpoint(args.out / "checkpoint.pt", device)
    if not state:
        return 0, None
    unet.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["opt"])
    print(f"resumed at step {state['step']}", flush=True)
    return state["step"], state["running"]


def main(argv=None) -> None:
    args = parse_args(argv)
    from engine.fashion.data import require_dataset

    require_dataset()
    import diffusers
    import transformers

    for library in (diffusers, transformers):  # their load/save chatter hides the progress bar
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    if args.device == "cpu":
        torch.set_flush_denormal(True)  # denormals make CPU convolutions 10-20x slower
    info = train(args)
    print(json.dumps({k: v for k, v in info.items() if k != "unet_changes"}), flush=True)


if __name__ == "__main__":
    main()
