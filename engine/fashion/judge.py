"""The judge: a small CNN Fashion-MNIST classifier that measures class fidelity.

Its penultimate features also give the Fréchet distance between sample sets
(``engine.metrics.frechet_distance``, Heusel et al. 2017), as FID does with
Inception features. ``engine.loader`` loads it (kind "classifier") through
``load_classifier``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from engine.fashion.data import NUM_CLASSES



class FashionJudge(nn.Module):
    """A small CNN Fashion-MNIST classifier (~0.2 M parameters at width 16).

    Input: ``(N, 1, 32, 32)`` in model space [-1, 1] (28×28 images padded by
    2 px of -1, as the diffusion model sees them). ``features`` returns the
    penultimate ``(N, 128)`` activations (used for the Fréchet distance);
    ``forward`` returns ``(N, 10)`` logits.
    """

    def __init__(self, width: int = 16, feature_dim: int = 128, dropout: float = 0.3):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.body = nn.Sequential(block(1, width), block(width, 2 * width), block(2 * width, 4 * width))  # -> 4x4
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * width * 16, feature_dim),
                                  nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, NUM_CLASSES))
        self.config = {"width": width, "feature_dim": feature_dim, "dropout": dropout}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@torch.no_grad()
def judge_images(judge: FashionJudge, images01: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Classify ``(N, 1, 32, 32)`` images in [0, 1]; returns (predicted labels ``(N,)``, features ``(N, 128)``)."""
    param = next(judge.parameters())
    preds, feats = [], []
    for chunk in images01.split(batch_size):
        x = (chunk.to(param.device, param.dtype) * 2 - 1)
        f = judge.features(x)
        preds.append(judge.classifier(f).argmax(1).cpu())
        feats.append(f.float().cpu())
    return torch.cat(preds), torch.cat(feats)


def load_classifier(preset, device: str, dtype: torch.dtype, local_only: bool) -> FashionJudge:
    """The judge from ``config.json`` + ``model.safetensors`` in the preset's folder, in eval mode."""
    from safetensors.torch import load_file

    folder = Path(preset.source) / (preset.subfolder or "")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    judge = FashionJudge(**{k: config[k] for k in ("width", "feature_dim", "dropout") if k in config})
    judge.load_state_dict(load_file(str(folder / "model.safetensors")))
    return judge.to(device=device, dtype=dtype).eval()
