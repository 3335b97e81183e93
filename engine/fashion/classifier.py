"""Classifier guidance (Dhariwal & Nichol 2021, §4): a noise-aware classifier p(y | x_t, t) and its gradient.

The classifier is a small CNN with a timestep embedding, trained on noised
Fashion-MNIST (``scripts/train_noisy_classifier.py``): x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε
with the diffusion model's own schedule. Dhariwal & Nichol's Algorithm 2 (DDIM)
writes classifier guidance in the ε form:

    ε̂(x_t) ← ε_θ(x_t) − s · √(1−ᾱ_t) · ∇_{x_t} log p_φ(y | x_t)

(their eq. 14, with the gradient scale s of their §4.3). ``guide_noise`` applies
exactly that, for every sampler, to the ε that goes into ``scheduler.step``.
Nothing here imports gradio; ``engine.loader`` loads the classifier (kind
"noisy-classifier") through ``load_noisy_classifier``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from engine.fashion.configs import NUM_CLASSES


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of the timesteps ``t`` ``(N,)`` (Vaswani et al. 2017; DDPM's embedding): ``(N, dim)``."""
    from diffusers.models.embeddings import get_timestep_embedding

    return get_timestep_embedding(t.reshape(-1).float(), dim, flip_sin_to_cos=True, downscale_freq_shift=0)


class TimeResBlock(nn.Module):
    """GroupNorm → SiLU → conv, a FiLM of the timestep (scale and shift, as improved DDPM's
    ``use_scale_shift_norm``), GroupNorm → SiLU → conv, plus a 1×1 skip.
    ``(N, cin, H, W)`` → ``(N, cout, H, W)``."""

    def __init__(self, cin: int, cout: int, temb_dim: int, groups: int = 8):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(temb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(min(groups, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(temb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class NoisyClassifier(nn.Module):
    """p(y | x_t, t): logits ``(N, 10)`` for noised images ``x_t`` ``(N, 1, 32, 32)`` (model space, not clipped)
    at timesteps ``t`` ``(N,)`` or a scalar, 0 … 999.

    A stem conv, one ``TimeResBlock`` per level (``widths``, at 32, 16, 8 … px, halving by average pooling),
    then GroupNorm → SiLU → global average pool → linear: the encoder half of a UNet, as Dhariwal &
    Nichol's classifier, with mean pooling instead of their attention pooling.
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), temb_dim: int = 128):
        super().__init__()
        self.config = {"widths": list(widths), "temb_dim": temb_dim}
        self.temb_dim = temb_dim
        self.time_mlp = nn.Sequential(nn.Linear(temb_dim, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.stem = nn.Conv2d(1, widths[0], 3, padding=1)
        ins = (widths[0],) + tuple(widths[:-1])
        self.blocks = nn.ModuleList(TimeResBlock(i, o, temb_dim) for i, o in zip(ins, widths))
        self.norm = nn.GroupNorm(min(8, widths[-1]), widths[-1])
        self.head = nn.Linear(widths[-1], NUM_CLASSES)

    def forward(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        temb = self.time_mlp(timestep_features(t, self.temb_dim).to(x.dtype))
        h = self.stem(x)
        for i, block in enumerate(self.blocks):
            if i > 0:
                h = F.avg_pool2d(h, 2)
            h = block(h, temb)
        return self.head(F.silu(self.norm(h)).mean(dim=(2, 3)))


def log_prob_gradient(classifier: NoisyClassifier, x: torch.Tensor, t, labels: torch.Tensor) -> torch.Tensor:
    """∇_{x_t} log p(y | x_t, t) for each image: ``x`` ``(N, 1, 32, 32)``, ``labels`` ``(N,)`` long
    → ``(N, 1, 32, 32)`` float32 (Dhariwal & Nichol 2021, Algorithm 1's g). Each image's log-probability
    depends on that image alone, so the gradient of their sum gives every per-image gradient in one backward
    pass."""
    param = next(classifier.parameters())
    with torch.enable_grad():
        x_in = x.detach().to(param.dtype).requires_grad_(True)
        log_probs = F.log_softmax(classifier(x_in, t).float(), dim=-1)
        chosen = log_probs[torch.arange(len(labels)), labels.to(log_probs.device)]
        return torch.autograd.grad(chosen.sum(), x_in)[0].float()


def guide_noise(eps: torch.Tensor, grad: torch.Tensor, alpha_bar_t: float | torch.Tensor,
                scale: float) -> torch.Tensor:
    """ε̂ − s · √(1−ᾱ_t) · ∇ log p(y | x_t): the classifier-guided noise of Dhariwal & Nichol 2021, eq. 14
    (Algorithm 2). ``eps`` and ``grad`` ``(N, C, H, W)``; ``alpha_bar_t`` ᾱ_t in (0, 1]."""
    sigma = torch.as_tensor(1.0 - alpha_bar_t, dtype=torch.float32).sqrt()
    return eps - scale * sigma.to(eps.device) * grad


class ClassifierGuidance:
    """The step callback of the Fashion sampler for classifier guidance: given the step's input ``x_t``,
    timestep ``t``, ᾱ_t, labels and ε̂ (after classifier-free guidance, if any), returns the guided ε̂."""

    def __init__(self, classifier: NoisyClassifier, scale: float):
        self.classifier = classifier
        self.scale = float(scale)

    def __call__(self, x: torch.Tensor, t, alpha_bar_t, labels: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        grad = log_prob_gradient(self.classifier, x, t, labels)
        return guide_noise(eps, grad, alpha_bar_t, self.scale)


def load_noisy_classifier(preset, device: str, dtype: torch.dtype, local_only: bool) -> NoisyClassifier:
    """The noise-aware classifier from ``config.json`` + ``model.safetensors`` in the preset's folder, in eval mode."""
    from safetensors.torch import load_file

    folder = Path(preset.source) / (preset.subfolder or "")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    model = NoisyClassifier(widths=tuple(config["widths"]), temb_dim=config["temb_dim"])
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.to(device=device, dtype=dtype).eval()
