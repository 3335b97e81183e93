"""Why the UNet needs the time (the book's exercise 2): the timestep embedding, and telling the UNet a wrong t.

The UNet learns one denoiser for every noise level. It knows which one by the
timestep embedding: t goes through a sinusoidal projection (``time_proj``, the
transformer's positional encoding, Vaswani et al. 2017 §3.5, used for diffusion
by Ho et al. 2020, appendix B), then an MLP, and is added into every ResNet
block. ``timestep_embeddings`` shows the projection for t = 0..999 and how
alike the embeddings of two timesteps are (cosine similarity).

``wrong_time_experiment`` then asks the class-conditional Fashion-MNIST UNet
(instant on a CPU) for the noise in an image noised to a true t while telling
it t′ for many values of t′. The noise-prediction error is lowest near the
true t: told a smaller t, the UNet removes too little noise; told a larger t,
it removes too much (its x0 estimate x̂0 = (x_t − √(1−ᾱ_t′) ε̂) / √ᾱ_t′ is
made for the wrong noise level).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import check_seed, whole_number_in_range
from engine.fashion.configs import SCHEDULER_CONFIG
from engine.fashion.data import example_image
from engine.noise_schedule import alphas_cumprod, noise_scheduler, predict_x0, q_sample

FASHION_TRAIN_TIMESTEPS = SCHEDULER_CONFIG["num_train_timesteps"]  # 1000: the Fashion UNet's schedule
TOLD_STEP = 25  # the grid of told timesteps: 0, 25, ..., 975 and 999
NOISE_DRAWS = 4  # the error curve is averaged over this many noise draws of the same image


def sinusoidal_embedding(time_proj, timesteps: torch.Tensor) -> torch.Tensor:
    """The UNet's own ``time_proj`` of ``timesteps`` [T]: [T, C] in [-1, 1] (sines and cosines)."""
    with torch.no_grad():
        return time_proj(timesteps).float()


def timestep_embeddings(time_proj, every: int = 1) -> dict:
    """The embedding of t = 0..999 (every ``every``-th t) and the cosine similarity of every pair.

    Returns {"t": [T], "embedding": [T, C] float32, "cosine": [T, T] float32 in [-1, 1]}.
    """
    t = torch.arange(0, FASHION_TRAIN_TIMESTEPS, every)
    emb = sinusoidal_embedding(time_proj, t)
    unit = F.normalize(emb, dim=1)
    return {"t": t, "embedding": emb, "cosine": unit @ unit.t()}


def told_timesteps(true_t: int, step: int = TOLD_STEP) -> list[int]:
    """The grid of t′ the UNet is told: every ``step`` from 0, plus 999 and the true t itself."""
    return sorted(set(range(0, FASHION_TRAIN_TIMESTEPS, step)) | {FASHION_TRAIN_TIMESTEPS - 1, int(true_t)})


def check_true_t(true_t) -> int:
    return whole_number_in_range(true_t, "The true timestep (true_t)", 1, FASHION_TRAIN_TIMESTEPS - 1)


@torch.no_grad()
def wrong_time_experiment(unet, example=0, true_t=400, seed: int = 0, draws: int = NOISE_DRAWS) -> dict:
    """Noise a test image to ``true_t``; ask the UNet for the noise, telling it each t′ of ``told_timesteps``.

    The UNet gets the image's true class (no guidance). Returns
    {"told_t": [K], "mse": [K] (mean over ``draws`` noise draws of ||ε̂ − ε||²/D),
    "best_told_t", "true_t", "label", "x0": [1, 1, 32, 32], "x_t": [1, 1, 32, 32] (first draw),
    "pred_x0": [K, 1, 32, 32] (first draw, each with its told ᾱ_t′)}, images in [-1, 1].
    """
    true_t, seed = check_true_t(true_t), check_seed(seed)
    x0, label = example_image(example)
    told = told_timesteps(true_t)
    scheduler = noise_scheduler(SCHEDULER_CONFIG)
    abar = alphas_cumprod(scheduler)
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn((draws, *x0.shape[1:]), generator=generator)
    x_t = q_sample(scheduler, x0.expand_as(noise), noise, torch.full((draws,), true_t))  # [draws, 1, 32, 32]
    k = len(told)
    inputs = x_t.repeat_interleave(k, dim=0)  # draw-major: [draws * K]
    t_batch = torch.tensor(told * draws)
    labels = torch.full((draws * k,), label, dtype=torch.long)
    param = next(unet.parameters())
    eps = unet(inputs.to(param.device, param.dtype), t_batch.to(param.device),
               class_labels=labels.to(param.device)).sample.float().cpu()
    target = noise.repeat_interleave(k, dim=0)
    mse = ((eps - target) ** 2).flatten(1).mean(1).view(draws, k).mean(0)
    pred = predict_x0(inputs[:k], eps[:k], abar[torch.tensor(told)].view(-1, 1, 1, 1)).clamp(-1, 1)
    best = told[int(mse.argmin())]
    return {"told_t": told, "mse": [float(v) for v in mse], "best_told_t": best, "true_t": true_t, "label": label,
            "x0": x0, "x_t": x_t[:1], "pred_x0": pred}


def gallery_timesteps(told: list[int], true_t: int, count: int = 6) -> list[int]:
    """A few told t′ to show as pictures: spread over the grid, always with the true t."""
    picks = {told[int(round(i))] for i in np.linspace(0, len(told) - 1, count - 1)} | {true_t}
    return sorted(picks)


def embedding_figures(time_proj, every: int = 4, width: int = 480) -> tuple:
    """Two pictures of ``timestep_embeddings``: the embedding as a heatmap (rows t = 0..999 top to bottom,
    columns = channels; blue -1, white 0, red +1) and the cosine-similarity matrix (t by t, same colours)."""
    from PIL import Image

    from engine.figures import colormap

    e = timestep_embeddings(time_proj, every)
    pictures = []
    for values in (e["embedding"], e["cosine"]):
        rgb = colormap(((values.numpy() + 1) / 2).clip(0, 1))
        rows = round(width * values.shape[0] / values.shape[1]) if values is e["embedding"] else width
        pictures.append(Image.fromarray(rgb).resize((width, min(rows, width)), Image.Resampling.NEAREST))
    return pictures[0], pictures[1]
