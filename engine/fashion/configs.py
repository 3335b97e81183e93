"""The class-conditional Fashion-MNIST model's configurations, classes and sampler limits.

Kept apart from ``engine.fashion`` so the training script can import them
without the sampler and loaders, and the tab can lay out its controls before
torch is imported (``engine.imports``): nothing here imports torch. Both
configs take ``num_class_embeds=11``: labels 0-9 are the Fashion-MNIST classes
and 10 is the null class used for classifier-free guidance (Ho & Salimans 2022).
"""

from __future__ import annotations

#: The book's model (block_out_channels=(32, 64, 128, 256), diffusers' default
#: blocks: attention in the three lower-resolution levels, 2 ResNets per level).
#: About 1.45 GFLOP per sample per step: train and serve it on a GPU.
BOOK_UNET = dict(
    sample_size=32,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 64, 128, 256),
    num_class_embeds=11,
)

#: The CPU model: three levels (32x32, 16x16, 8x8), one ResNet per level,
#: self-attention only at 8x8 and in the mid block. ~2.7 M parameters.
CPU_UNET = dict(
    sample_size=32,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 64, 128),
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    num_class_embeds=11,
)

UNET_CONFIGS = {"book": BOOK_UNET, "cpu": CPU_UNET}

#: The book's noise schedule (DDPM, Ho et al. 2020): 1000 steps, linear betas 1e-4 .. 0.02.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    prediction_type="epsilon",
)

#: Class names in label order (index = label).
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
#: The extra class-embedding index used for "no class" (classifier-free guidance).
NULL_CLASS = NUM_CLASSES

SAMPLERS = ("DDPM", "DDIM", "DPM-Solver++")
#: (min, max, default) number of inference steps per sampler.
SAMPLER_STEPS = {
    "DDPM": (10, 1000, 1000),
    "DDIM": (2, 500, 50),
    "DPM-Solver++": (2, 100, 20),
}
MAX_COUNT = 64
MAX_GUIDANCE = 10.0
#: Classifier guidance (Dhariwal & Nichol 2021): the gradient scale s, 0 = off, and the app's default.
MAX_CLASSIFIER_SCALE = 50.0
DEFAULT_CLASSIFIER_SCALE = 5.0
#: Timesteps of the forward-process figure (as in the book).
FORWARD_TIMESTEPS = (0, 50, 100, 200, 400, 600, 800, 999)


def default_unet_preset(device: str, names_and_options: list[tuple[str, dict]]) -> str | None:
    """The class-unet preset that suits ``device``: the first whose "device" option matches, else the first."""
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    for name, options in names_and_options:
        if options.get("device") == kind:
            return name
    return names_and_options[0][0] if names_and_options else None
