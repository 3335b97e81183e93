"""Stable Diffusion Explorer: see how Stable Diffusion works, one component at a time.

Composes the tabs, sets up the queue, and exposes ``demo`` for Hugging Face
Spaces and for tests. Models load lazily, on first use, through
``engine.loader``; importing this module loads none, and imports neither torch
nor diffusers: the page is served first, then the engine is imported in the
main thread (``engine.imports``), and an event that comes sooner waits for it.
"""

from __future__ import annotations

import os

import gradio as gr

from engine.device import limit_malloc_arenas
from engine.imports import import_engine
from tabs import class_conditional, guidance, refiner, status, text_to_image, tokenizer, unet, vae
from tabs.common import DELETE_CACHE
from tabs.settings import PRESENTER_JS, wire_links

TITLE = "Stable Diffusion Explorer"
INTRO = """See how Stable Diffusion works, one component at a time: a class-conditional diffusion model,
the full text-to-image loop with classifier-free guidance, the VAE that compresses images into latents,
the CLIP tokenizer that turns prompts into token ids, the UNet inside the loop, and the ways to guide it."""

# Presenter view (body.presenter, set in the browser): the long explanations fold away, type and pictures grow.
# Everywhere: the "pixelated" images (the mini models' 64 px pictures and maps) are enlarged with nearest neighbours.
# Phones (under 640 px): nothing wider than the screen; rows wrap, columns shrink.
CSS = """
body.presenter .explain { display: none !important; }
body.presenter { --text-xs: 14px; --text-sm: 16px; --text-md: 20px; --text-lg: 24px; --text-xl: 28px;
  --text-xxl: 34px; --block-label-text-size: 18px; --block-info-text-size: 16px; --block-title-text-size: 20px;
  --input-text-size: 20px; --button-large-text-size: 22px; --button-small-text-size: 18px;
  --section-header-text-size: 20px; }
body.presenter .gradio-container { max-width: 100% !important; }
body.presenter .grid-wrap .grid-container { grid-template-columns: repeat(auto-fill, minmax(160px, 1fr)) !important; }
body.presenter .history .grid-container { grid-template-columns: repeat(auto-fill, minmax(110px, 1fr)) !important; }
body.presenter .image-container img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
.pixelated img { image-rendering: pixelated; }
.pixelated .image-container img { width: 100%; height: 100%; object-fit: contain; }
#app-top { align-items: center; }
#app-top > * { min-width: 0; }
#presenter-view { flex: 0 0 auto !important; width: auto !important; }
@media (max-width: 640px) {
  .gradio-container { padding-left: 0 !important; padding-right: 0 !important; max-width: 100vw; }
  .gradio-container .main.app { padding-left: 8px !important; padding-right: 8px !important; }
  .gradio-container .row { flex-wrap: wrap !important; }
  .gradio-container .row > .column, .gradio-container .row > .block:has(table) { min-width: 100% !important; }
  .gradio-container .row > .block { min-width: min(100%, 150px) !important; }
  .gradio-container .prose table { display: block; overflow-x: auto; max-width: 100%; }
  .gradio-container .prose th, .gradio-container .prose td { word-break: normal; overflow-wrap: normal;
    min-width: 5em; }
  .gradio-container .grid-container { grid-template-columns: repeat(auto-fill, minmax(88px, 1fr)) !important; }
}
"""

limit_malloc_arenas()  # before gradio starts its worker threads: memory stays flat over many requests
# EXPLORER_PRELOAD="SD 1.5,SDXL base 1.0": load those presets now, in the main thread, onto the best device
# (ZeroGPU's pattern: weights at module level, never inside a spaces.GPU call). Unknown names are logged.
if os.environ.get("EXPLORER_PRELOAD"):
    import_engine()
    from engine import loader

    for note in loader.preload(os.environ["EXPLORER_PRELOAD"]):
        print(note, flush=True)

with gr.Blocks(title=TITLE, delete_cache=DELETE_CACHE) as demo:
    gr.HTML(f"<style>{CSS}</style>", padding=False)
    with gr.Row(elem_id="app-top"):
        gr.Markdown(f"# {TITLE}")
        presenter = gr.Checkbox(False, label="Presenter view", scale=0, min_width=150, container=False,
                                elem_id="presenter-view")
    gr.Markdown(INTRO, elem_classes=["explain"])
    link_note = gr.Markdown(visible=False, elem_id="link-note")
    with gr.Tabs(overflow_behavior="wrap") as tabs:  # every tab in sight, on a phone too
        with gr.Tab("Class-conditional (Fashion-MNIST)", id="class"):
            forms = [class_conditional.build()]
        with gr.Tab("Text to image", id="txt2img"):
            forms.append(text_to_image.build())
            refiner.build()
        with gr.Tab("VAE compression", id="vae"):
            vae.build()
        with gr.Tab("Tokenizer", id="tokenizer"):
            tokenizer.build()
        with gr.Tab("Inside the UNet", id="unet"):
            unet.build()
        with gr.Tab("Guidance", id="guidance") as guidance_tab:
            forms += guidance.build(guidance_tab)
    status.build()
    # A link (?tab=txt2img&prompt=...&run=1) fills a tab and may run it; Presenter view is the browser's alone.
    wire_links(demo, tabs, forms, link_note)
    presenter.change(None, presenter, None, js=PRESENTER_JS, api_visibility="private", queue=False)

# No global bound: the compute events bound their own waiting line (tabs.common.compute_has_room), so a queue
# full of image jobs never refuses the tokenizer or the loaded-models panel.
demo.queue(max_size=None)

if __name__ == "__main__":
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        prevent_thread_lock=True,
    )
    # The page is served; now torch, diffusers, transformers and the engine (about 4 s of imports on 2 cores),
    # here in the main thread. An event that comes sooner waits for them instead of racing them.
    import_engine()
    demo.block_thread()
