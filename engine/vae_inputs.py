"""What the VAE viewer accepts: the sizes and fits an image is brought to before it is encoded, the gain.

Apart from ``engine.vae`` because the VAE tab lays out its size choices before
torch is imported (``engine.imports``): nothing here imports torch.
"""

SIZES = (64, 128, 256, 512, 768, 1024)  # short side of the preprocessed image, in pixels (64: the mini VAE)
FITS = ("crop", "pad")
GAIN_RANGE = (1, 32)  # how much the difference picture amplifies |input - reconstruction|
MAX_ASPECT = 2.0  # longer side at most twice the shorter one, so memory stays bounded
