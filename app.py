"""Stable Diffusion Explorer: see how Stable Diffusion works, one component at a time.

Composes the tabs, sets up the queue, and exposes ``demo`` for Hugging Face
Spaces and for tests. Models load lazily, on first use, through
``engine.loader``; importing this module loads none.
"""

from __future__ import annotations

import os

import gradio as gr

from engine import loader
from engine.device import setup_cpu
from tabs import class_conditional, status, text_to_image, tokenizer, unet, vae

TITLE = "Stable Diffusion Explorer"
INTRO = """# Stable Diffusion Explorer
See how Stable Diffusion works, one component at a time: a class-conditional diffusion model,
the full text-to-image loop with classifier-free guidance, the VAE that compresses images into latents,
the CLIP tokenizer that turns prompts into token ids, and the UNet inside the loop."""

setup_cpu()
# EXPLORER_PRELOAD="SD 1.5,SDXL base 1.0": load those presets now, in the main thread, onto the best device
# (ZeroGPU's pattern: weights at module level, never inside a spaces.GPU call). Unknown names are logged.
for note in loader.preload(os.environ.get("EXPLORER_PRELOAD")):
    print(note, flush=True)

with gr.Blocks(title=TITLE) as demo:
    gr.Markdown(INTRO)
    with gr.Tabs():
        with gr.Tab("Class-conditional (Fashion-MNIST)", id="class"):
            class_conditional.build()
        with gr.Tab("Text to image", id="txt2img"):
            text_to_image.build()
        with gr.Tab("VAE compression", id="vae"):
            vae.build()
        with gr.Tab("Tokenizer", id="tokenizer"):
            tokenizer.build()
        with gr.Tab("Inside the UNet", id="unet"):
            unet.build()
    status.build()

demo.queue(max_size=int(os.environ.get("EXPLORER_QUEUE_SIZE", "32")))

if __name__ == "__main__":
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    )
