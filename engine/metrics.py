"""Image and distribution metrics: PSNR, SSIM and the Fréchet distance.

All three take plain arrays. PSNR and SSIM compare two 8-bit images (or
batches of the same shape); the Fréchet distance compares two sets of feature
vectors, as FID does (here with the Fashion-MNIST judge's features).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
SSIM_METHOD = "mean of the R, G, B channels' SSIM; Gaussian window 11, sigma 1.5, K1=0.01, K2=0.03, L=255 (Wang et al. 2004)"
PSNR_METHOD = "8-bit RGB, peak 255, mean squared error over all pixels and channels"


def to_uint8(image) -> np.ndarray:
    """A PIL image or array as a uint8 array; a ``ValueError`` if it is not 8-bit data."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"Expected 8-bit image data, got {arr.dtype}.")
    return arr


def psnr(reference, test) -> float:
    """Peak signal-to-noise ratio in dB of two 8-bit images (H, W, 3): 10 log10(255^2 / MSE).

    Identical images give ``inf``.
    """
    a, b = to_uint8(reference).astype(np.float64), to_uint8(test).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"PSNR needs images of the same shape, got {a.shape} and {b.shape}.")
    mse = np.mean((a - b) ** 2)
    return math.inf if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of (H, W) with the 1-D window g (as MATLAB's filter2 'valid')."""
    k = len(g)
    x = np.lib.stride_tricks.sliding_window_view(x, k, axis=0) @ g
    return np.lib.stride_tricks.sliding_window_view(x, k, axis=1) @ g


def ssim(reference, test) -> float:
    """Structural similarity (Wang et al. 2004) of two 8-bit images, (H, W) or (H, W, 3).

    Gaussian window 11 x 11 with sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255; the
    SSIM map over the 'valid' region (windows fully inside the image) is averaged,
    per channel, then over R, G and B. Identical images give 1.0.
    """
    a, b = to_uint8(reference).astype(np.float64), to_uint8(test).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"SSIM needs images of the same shape, got {a.shape} and {b.shape}.")
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW} px a side, got {a.shape[1]}x{a.shape[0]}.")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    g = _gaussian_window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    scores = []
    for x, y in zip(np.moveaxis(a, -1, 0), np.moveaxis(b, -1, 0)):
        mu_x, mu_y = _filter_valid(x, g), _filter_valid(y, g)
        var_x = _filter_valid(x * x, g) - mu_x**2
        var_y = _filter_valid(y * y, g) - mu_y**2
        cov = _filter_valid(x * y, g) - mu_x * mu_y
        ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
        scores.append(ssim_map.mean())
    return float(np.mean(scores))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` ``(N, D)`` and ``b`` ``(M, D)``.

    ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^½) (Heusel et al. 2017), computed
    from the eigenvalues of Σ_a^½ Σ_b Σ_a^½ so no scipy is needed.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(cov_a)
    sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = sqrt_a @ cov_b @ sqrt_a
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_sqrt)


def lift(token_map, mask) -> float:
    """How much more of a token's attention lands on an item than its area: (share of the map's mass on
    the item) / (item's share of the image). 1 = no preference, > 1 = looks at the item, 0 = never.

    token_map: [h, w] >= 0 at any scale (e.g. a ``maps`` entry). mask: [H, W]
    in {0, 1} (or coverage in [0, 1]) at the map's resolution or the image's:
    it is area-averaged onto the map's grid, so each cell counts with the
    fraction of it the item covers. Tensors, arrays or nested lists.
    """
    m = torch.as_tensor(np.asarray(token_map, dtype=np.float64))
    cover = torch.as_tensor(np.asarray(mask, dtype=np.float64))
    if m.ndim != 2 or cover.ndim != 2:
        raise ValueError(f"lift takes a 2-D map and a 2-D mask, got shapes {tuple(m.shape)} and "
                         f"{tuple(cover.shape)}.")
    if cover.shape != m.shape:
        cover = F.interpolate(cover[None, None], size=m.shape, mode="area")[0, 0]
    if float(m.sum()) <= 0 or float(cover.mean()) <= 0:
        raise ValueError("lift needs a map with some mass and a mask with some item pixels.")
    return float((m * cover).sum() / m.sum() / cover.mean())
