"""The VAE latent scale, in one place: the UNet works on VAE latents scaled to about unit variance.

As diffusers' pipelines do with ``vae.config.scaling_factor`` (0.18215 for SD 1.x, 0.13025 for SDXL; LDM,
section 4.3.2 and appendix D.1): multiply after ``encode``, divide before ``decode``, and nowhere else.
``shift_factor`` (0 for SD and SDXL) is subtracted first when a VAE's config has one.
"""

from __future__ import annotations


def shift_factor(vae) -> float:
    """The VAE config's ``shift_factor``, 0 when it has none (SD, SDXL)."""
    return getattr(vae.config, "shift_factor", None) or 0.0


def scale_latent(z, vae):
    """Encoder output z -> the latent the UNet sees: ``(z - shift_factor) * scaling_factor``."""
    return (z - shift_factor(vae)) * vae.config.scaling_factor


def unscale_latent(latent, vae):
    """The inverse of ``scale_latent``: ``latent / scaling_factor + shift_factor``, what ``vae.decode`` takes."""
    return latent / vae.config.scaling_factor + shift_factor(vae)
