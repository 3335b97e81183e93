"""UNet configurations for the class-conditional Fashion-MNIST model.

Kept apart from ``engine.fashion`` so the training script can import them
without the sampler and loaders. Both configs take ``num_class_embeds=11``:
labels 0-9 are the Fashion-MNIST classes and 10 is the null class used for
classifier-free guidance (Ho & Salimans 2022).
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
