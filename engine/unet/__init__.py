"""Inside the UNet: what the denoising UNet of Stable Diffusion is made of and computes on the way.

One module per view, e.g. ``engine.unet.anatomy`` (parameters, FLOPs and
attention memory, block by block) and ``engine.unet.attention`` (cross-attention
maps recorded while our unchanged text-to-image loop runs: which latent pixels
look at which prompt token; Hertz et al. 2022, "Prompt-to-Prompt Image Editing
with Cross Attention Control", §3.1). No gradio here.
"""
