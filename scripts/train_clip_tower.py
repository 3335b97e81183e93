#!/usr/bin/env python
"""Train a CLIP image tower against the *frozen* mini-SD text encoder, for CLIP guidance, and ship it.

The mini CLIP's own image tower was never shipped, and retraining the whole
mini CLIP would change the text encoder and with it every UNet. So the text
side is locked and only the image side learns: LiT (Zhai et al. 2022, "LiT:
Zero-Shot Transfer with Locked-image text Tuning") with the roles swapped. The
loss is CLIP's symmetric InfoNCE (Radford et al. 2021), with every caption of
the batch that fits a picture counted as a positive (``contrastive_loss``).
The mini CLIP's text projection was dropped after its training, so a 64x64
linear ``text_projection`` on the locked encoder's pooled output learns too.

CLIP guidance reads the decoded *predicted x0* at every noise level, which at
high noise is blurred, washed out and noisy. So most training pictures are
degraded (``degrade``): a Gaussian blur, a pull towards the background and
Gaussian noise, all of one random strength ``level`` in [0, 1] (a quarter are
clean). Decode-free: no VAE or UNet in the training loop.

Data: "Fashion-MNIST in colour" (``engine.mini.data``), centred and placed
items, captioned ones only. Retrieval accuracy (a fitting caption is the best
match among 512 test captions) is measured by degradation level and on real
predicted x0 of the mini-SD UNet (unconditional, so the prompt cannot help) at
several timesteps, and written into the model card.

Resumable: ``OUT/checkpoint.pt`` (``OUT`` = runs/clip_tower, git-ignored).
Ships ``ASSETS/mini-sd/image_encoder/`` (fp16 safetensors, config.json, README.md).

Examples::

    python scripts/train_clip_tower.py --threads 1 --deadline-minutes 15
    python scripts/train_clip_tower.py --smoke          # a few toy steps into runs/clip_tower_smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from engine.clip_image import MiniImageEncoder  # noqa: E402
from engine.mini import data as cf  # noqa: E402
from engine.mini.models import contrastive_loss  # noqa: E402
from engine.text_encoding import tokenize  # noqa: E402
from engine.training import (load_checkpoint, lr_at, optimizer_step, resumable_loop, save_checkpoint,  # noqa: E402
                             set_lr)

TOKENS = 20  # captions are at most ~17 tokens; the causal mask makes the pooled (EOS) output the same at 77
LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
X0_TIMESTEPS = (100, 300, 500, 700, 900)
MAX_BLUR = 3.0  # px, the blur's sigma at level 1
MAX_NOISE = 0.5  # the noise's std at level 1, in [-1, 1] pixel units
MAX_FADE = 0.6  # the share of the picture's contrast lost towards the background at level 1
DEFAULTS = {"full": dict(steps=2500, batch=128, width=32, num_items=None, test_items=512),
            "smoke": dict(steps=4, batch=16, width=8, num_items=256, test_items=32)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a toy tower, a few steps, into runs/clip_tower_smoke")
    p.add_argument("--out", default=None)
    p.add_argument("--assets", default=None, help="where mini-sd/ is (its text encoder; the tower ships there)")
    p.add_argument("--ship-to", default=None, help="the folder to ship into (default ASSETS/mini-sd/image_encoder, "
                                                    "or OUT/image_encoder with --smoke)")
    for name in ("steps", "batch", "width", "num_items", "test_items"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--deadline-minutes", type=float, default=None, help="stop early, checkpoint and ship")
    p.add_argument("--checkpoint-every", type=int, default=100)
    args = p.parse_args(argv)
    size = "smoke" if args.smoke else "full"
    for key, value in DEFAULTS[size].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = Path(args.out or ("runs/clip_tower_smoke" if args.smoke else "runs/clip_tower"))
    args.assets = Path(args.assets or REPO_ROOT / "assets")
    args.ship_to = Path(args.ship_to or (args.out / "image_encoder" if args.smoke
                                         else args.assets / "mini-sd" / "image_encoder"))
    return args


# ----------------------------------------------------------------------------
# Data: pictures, the locked text side, degradation


@torch.no_grad()
def pooled_table(captions: list[str], assets: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The locked encoder's pooled output for each distinct caption: (row of each item [N], pooled [U, 64])."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(assets / "mini-sd" / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(assets / "mini-sd" / "text_encoder", dtype=torch.float32).eval()
    unique = sorted(set(captions))
    row = {c: i for i, c in enumerate(unique)}
    pooled = torch.cat([encoder(tokenize(tokenizer, unique[i:i + 512], TOKENS)).pooler_output
                        for i in range(0, len(unique), 512)])
    return torch.tensor([row[c] for c in captions]), pooled


def fits_of(data: cf.ColourFashion, idx) -> torch.Tensor:
    """[B, B] bool: caption j describes picture i (same class; same colour, or none named; same place)."""
    labels, colours = torch.as_tensor(data.labels[idx]), torch.as_tensor(data.colours[idx])
    names_colour, places = torch.as_tensor(data.names_colour[idx]), torch.as_tensor(data.places[idx])
    same_colour = (colours[:, None] == colours[None, :]) | ~names_colour[None, :]
    return (labels[:, None] == labels[None, :]) & same_colour & (places[:, None] == places[None, :])


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = 9) -> torch.Tensor:
    """Blur each picture of x [B, C, H, W] with its own sigma [B] (px; 0 = unchanged), separably."""
    b, c, h, w = x.shape
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)
    s = sigma.clamp(min=1e-3).to(x.dtype)[:, None]
    kernel = torch.exp(-0.5 * (offsets[None] / s) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [B * C, 2r + 1]
    flat = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, kernel.view(b * c, 1, 1, -1), groups=b * c)
    flat = F.conv2d(flat, kernel.view(b * c, 1, -1, 1), groups=b * c)
    return flat.view(b, c, h, w)


def degrade(pixels: torch.Tensor, level: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """What a decoded predicted x0 looks like at noise ``level`` [B] in [0, 1]: pixels [B, 3, 64, 64] in
    [-1, 1] blurred (sigma 3 px at level 1), faded towards the background (60%) and noised (std 0.5)."""
    background = torch.tensor(cf.BACKGROUND).view(1, 3, 1, 1) * 2 - 1
    x = gaussian_blur(pixels, MAX_BLUR * level)
    lv = level.view(-1, 1, 1, 1)
    x = background + (1 - MAX_FADE * lv) * (x - background)
    noise = torch.randn(x.shape, generator=generator)
    return (x + MAX_NOISE * lv * noise).clamp(-1.5, 1.5)


def batch(data: cf.ColourFashion, rows: torch.Tensor, captioned: np.ndarray, size: int, step: int, seed: int):
    """One step's (degraded pictures [B, 3, 64, 64], caption rows [B], fits [B, B]), the same when resumed."""
    rng = np.random.default_rng([seed, step])
    idx = rng.choice(captioned, size=size, replace=False)
    generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
    level = torch.rand(size, generator=generator)
    level[torch.rand(size, generator=generator) < 0.25] = 0.0
    pixels = degrade(cf.to_vae_input(data.pictures(idx)), level, generator)
    return pixels, rows[idx], fits_of(data, idx)


# ----------------------------------------------------------------------------
# Measures


@torch.no_grad()
def retrieval(tower: MiniImageEncoder, pixels: torch.Tensor, pooled: torch.Tensor, fits: torch.Tensor) -> float:
    """Share of pictures [N, 3, 64, 64] in [-1, 1] whose best-matching caption (of the N, pooled [N, D]) fits."""
    image, text = tower.embed_pixels(pixels), tower.embed_pooled(pooled)
    best = (image @ text.t()).argmax(1)
    return float(fits[torch.arange(len(fits)), best].float().mean())


def by_level(tower, test_pixels, test_pooled, test_fits) -> dict:
    """Retrieval accuracy at each degradation level in ``LEVELS`` (fixed noise)."""
    out = {}
    for level in LEVELS:
        generator = torch.Generator().manual_seed(1)
        pixels = degrade(test_pixels, torch.full((len(test_pixels),), level), generator)
        out[f"{level:g}"] = round(retrieval(tower, pixels, test_pooled, test_fits), 4)
    return out


@torch.no_grad()
def predicted_x0_pictures(assets: Path, pixels: torch.Tensor, timesteps=X0_TIMESTEPS) -> dict:
    """{t: decoded predicted x0 [N, 3, 64, 64] in [-1, 1]} of the mini-SD UNet, unconditional (empty prompt),
    from the test pictures noised to t (Ho et al. 2020, eq. 4 and 15): what CLIP guidance reads at t."""
    from engine.noise_schedule import predict_x0
    from engine.mini.models import load_pipeline

    pipe = load_pipeline(assets / "mini-sd")
    vae, unet, sf = pipe.vae, pipe.unet, pipe.vae.config.scaling_factor
    empty = pipe.text_encoder(tokenize(pipe.tokenizer, [""]))[0]
    alphas = pipe.scheduler.alphas_cumprod
    generator = torch.Generator().manual_seed(2)
    out = {}
    latents = torch.cat([vae.encode(pixels[i:i + 128]).latent_dist.mean for i in range(0, len(pixels), 128)]) * sf
    for t in timesteps:
        a = float(alphas[t])
        eps = torch.randn(latents.shape, generator=generator)
        x_t = a ** 0.5 * latents + (1 - a) ** 0.5 * eps
        pred = unet(x_t, t, encoder_hidden_states=empty.expand(len(x_t), -1, -1)).sample
        x0 = predict_x0(x_t, pred, a)
        out[t] = torch.cat([vae.decode(x0[i:i + 128] / sf).sample for i in range(0, len(x0), 128)]).clamp(-1, 1)
    return out


# ----------------------------------------------------------------------------
# Training, the card


def train(args, data, rows, pooled, captioned, test) -> tuple[MiniImageEncoder, int, float]:
    """The resumable InfoNCE loop (AdamW, warm-up then cosine decay); returns (tower, steps, running loss)."""
    torch.manual_seed(args.seed)
    tower = MiniImageEncoder(width=args.width, embed_dim=64, text_dim=pooled.shape[1])
    opt = torch.optim.AdamW(tower.parameters(), lr=args.lr, weight_decay=0.01)
    state = load_checkpoint(args.out / "checkpoint.pt", "cpu")
    step, running = 0, None
    if state:
        tower.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, running = state["step"], state["running"]
        print(f"resumed at step {step}", flush=True)
    end = None if args.deadline_minutes is None else time.time() + 60 * args.deadline_minutes

    def train_step(step: int) -> float:
        pixels, caption_rows, fits = batch(data, rows, captioned, args.batch, step, args.seed)
        set_lr(opt, args.lr * lr_at(step, args.steps, warmup=min(100, args.steps // 10 + 1)))
        tower.train()
        loss = contrastive_loss(tower.embed_pixels(pixels), tower.embed_pooled(pooled[caption_rows]),
                                tower.logit_scale, fits)
        optimizer_step(opt, loss, tower)
        return loss.item()

    def checkpoint(step: int, running: float, last: bool) -> None:
        save_checkpoint(args.out / "checkpoint.pt", dict(model=tower.state_dict(), opt=opt.state_dict(), step=step,
                                                         running=running))

    def report(step: int, running: float, last: bool) -> None:
        tower.eval()
        print(f"\nstep {step}: loss {running:.3f}, retrieval by level {by_level(tower, *test)}", flush=True)

    step, running = resumable_loop(step, args.steps, train_step, desc="clip tower", running=running,
                                   every=[(args.checkpoint_every, checkpoint), (500, report)],
                                   stop=lambda: end is not None and time.time() > end)
    return tower.eval(), step, running


def machine(threads: int) -> str:
    """The CPU model, its vector flags that matter for speed, and the thread count."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        text = ""
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = [f for f in fields.get("Flags", "").split() if f.startswith(("avx", "amx", "fma", "f16c"))]
    return (f"{fields.get('Model name', platform.processor() or 'unknown CPU').strip()}, flags {' '.join(flags)}; "
            f"torch {torch.__version__}, {threads} thread(s), fp32 training, fp16 weights shipped")


def model_card(info: dict) -> str:
    """The README.md of the shipped tower: what it is, its data and config, its accuracy, the machine."""
    levels = info["retrieval_by_level"]
    x0 = info.get("retrieval_on_predicted_x0", {})
    rows = "\n".join(f"| degraded, level {k} (blur {MAX_BLUR * float(k):.2f} px, fade {MAX_FADE * float(k):.0%}, "
                     f"noise std {MAX_NOISE * float(k):.3f}) | {v:.1%} |" for k, v in levels.items())
    rows_x0 = "\n".join(f"| decoded predicted x0 of the mini-SD UNet at t = {k} (unconditional) | {v:.1%} |"
                        for k, v in x0.items())
    return f"""# Mini CLIP image tower (for CLIP guidance on mini-SD)

A small CNN ({info['params']:,} parameters, {info['megabytes']:.2f} MB in fp16) that embeds 64x64 pictures
into the space of the **frozen** mini-SD text encoder (`../text_encoder`, its pooled EOS output through a
learned 64x64 `text_projection` kept here). Trained LiT-style (Zhai et al. 2022, text side locked) with CLIP's
symmetric InfoNCE (Radford et al. 2021) by `scripts/train_clip_tower.py`; read by CLIP guidance
(`engine/txt2img/clip_guidance.py`, `clip_guidance_scale` of `/generate`).

## Data
"Fashion-MNIST in colour" (`engine/mini/data.py`, seed {info['seed']}): Fashion-MNIST items tinted in eight
colours, half centred (48 px), half small and placed; only captioned items. Because guidance reads the
decoded *predicted x0* at every noise level, a random share of each batch is degraded (`degrade`): Gaussian
blur (sigma up to {MAX_BLUR} px), a fade towards the background (up to {MAX_FADE:.0%}) and Gaussian noise
(std up to {MAX_NOISE}), all of one random strength; a quarter of the pictures are clean.

## Config
width {info['width']}, embedding 64, {info['steps']} steps of {info['batch']} pictures, AdamW lr {info['lr']}
(warm-up, cosine decay), final loss {info['loss']}; {info['minutes']:.1f} minutes.

## Retrieval accuracy
A fitting caption is the best match among {info['test_items']} test captions (test split; the mini CLIP's own
tower scored 84.4% on clean pictures by this measure).

| pictures | retrieval accuracy |
|---|---|
{rows}
{rows_x0}

What limits CLIP guidance: at high noise the predicted x0 is a washed-out average, and the tower's accuracy
there (the last rows) bounds how much its gradient can know.

## Machine
{info['machine']}
"""


def write_card(readme: Path, text: str) -> None:
    """Write the model card, keeping the measured section ``scripts/eval_clip_guidance.py`` put there."""
    if readme.exists():
        old = re.search(r"<!-- eval:start -->.*<!-- eval:end -->\n?", readme.read_text(encoding="utf-8"), re.S)
        if old:
            text = text.rstrip("\n") + "\n\n" + old.group(0)
    readme.write_text(text, encoding="utf-8")


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from engine.fashion.data import require_dataset

    require_dataset()
    args.out.mkdir(parents=True, exist_ok=True)
    data = cf.make_dataset("train", seed=args.seed, num_items=args.num_items)
    test_data = cf.make_dataset("test", seed=args.seed, num_items=1024)
    captioned = np.flatnonzero([bool(c) for c in data.captions])
    test_idx = np.flatnonzero([bool(c) for c in test_data.captions])[:args.test_items]
    all_rows, pooled = pooled_table(data.captions + [test_data.captions[i] for i in test_idx], args.assets)
    rows, test_rows = all_rows[:len(data)], all_rows[len(data):]
    test = (cf.to_vae_input(test_data.pictures(test_idx)), pooled[test_rows], fits_of(test_data, test_idx))
    start = time.time()
    tower, step, running = train(args, data, rows, pooled, captioned, test)
    minutes = (time.time() - start) / 60
    info = dict(steps=step, batch=args.batch, lr=args.lr, width=args.width, loss=round(running or 0.0, 4),
                seed=args.seed, test_items=len(test_idx), minutes=minutes, machine=machine(args.threads),
                params=sum(p.numel() for p in tower.parameters()), retrieval_by_level=by_level(tower, *test))
    x0 = predicted_x0_pictures(args.assets, test[0], (X0_TIMESTEPS[:2] if args.smoke else X0_TIMESTEPS))
    info["retrieval_on_predicted_x0"] = {str(t): round(retrieval(tower, p, test[1], test[2]), 4) for t, p in x0.items()}
    folder = tower.save(args.ship_to)
    info["megabytes"] = (folder / "model.safetensors").stat().st_size / 2**20
    write_card(folder / "README.md", model_card(info))
    (folder / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2), flush=True)
    return info


if __name__ == "__main__":
    main()
