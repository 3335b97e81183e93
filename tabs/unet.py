"""Tab 5: inside the UNet: where each word lands, why the UNet needs the time, and what latent diffusion saves.

Three views of the one component that does the work (the book's exercises 2,
3 and 4):

* cross-attention maps recorded inside the very text-to-image loop
  (``engine.unet.attention``; API ``/attention_maps``);
* the timestep embedding, and the Fashion-MNIST UNet told the wrong time
  (``engine.unet.timestep``; API ``/timestep_experiment``);
* the UNet's anatomy and FLOPs from its config alone, latent against pixel space
  (``engine.unet.anatomy``, its tables ``tabs.anatomy_tables``; API ``/unet_anatomy``).
"""

from __future__ import annotations

import gradio as gr
import pandas as pd
from PIL import ImageOps

from engine import txt2img
from engine.errors import UserError
from engine.fashion.data import CLASS_NAMES, example_images, to_unit_range
from engine.imports import lazy
from engine.presets import presets_for
from engine.unet.steps import STEP_RANGES
from tabs.anatomy_tables import anatomy_table
from tabs.common import COMPUTE, model_job, seed_from_box, show_on_arrival, user_errors

# Imported on first use, after the page is served (engine.imports): the layout reads torch-free modules only.
loader = lazy("engine.loader")
figures = lazy("engine.figures")
sampling = lazy("engine.fashion.sampling")
anatomy = lazy("engine.unet.anatomy")
attention = lazy("engine.unet.attention")
timestep = lazy("engine.unet.timestep")

#: The first example is a positioned prompt, so the item word's map points somewhere on the first click; the
#: two-item one shows each word landing on its own item.
EXAMPLES = [
    ["a red sneaker on the left", ""],
    ["a red sneaker on the left and a blue bag on the right", ""],
    ["a blue bag in the top right corner", ""],
    ["a small yellow dress at the bottom", ""],
    ["a green ankle boot", ""],
    ["a (red:1.5) sneaker", ""],
]
STEP_CHOICES = list(STEP_RANGES)
LAYER_CHOICES = ["all", "down", "mid", "up"]

INTRO = """### Inside the UNet
The UNet does the denoising. Three things the book says about it, shown on the real thing:
**cross-attention** lets every latent pixel read every prompt token; the **timestep** is embedded and added in
every block, so one network serves every noise level; and working on the VAE's **latents** instead of pixels
saves most of the compute, because attention grows with the square of the number of pixels."""

ATTENTION_HELP = """**Where each word lands.** While the loop runs, every cross-attention layer (`attn2`) records
softmax(QKᵀ/√d): for each latent pixel, how much it reads from each token. Averaged over heads, layers and steps,
one map per token (DAAM, Tang et al. 2023). Bright = the token steered those pixels. The start token (grey) soaks
up most attention, as in CLIP. The same seed gives the same image as the text-to-image tab. A weighted word,
`(red:1.5)` or `(red:0.5)` (the Guidance tab's prompt weights), takes a visibly larger or smaller share."""

#: Under the maps: how the mini models learned to look where they draw (their model cards have the recipe).
GROUNDING_NOTE = """*How our toy learned to look where it draws:* while training, the mini models' item, colour and
place words were told where their item is (TokenCompose's grounding losses, Wang et al. 2024, on each item's exact
mask), so their maps land on the item; the hub models learned it from billions of captions instead. Two items in
one prompt are beyond both toys so far."""

TIME_HELP = """**Why the UNet needs the time.** Left: the sinusoidal embedding of t = 0…999 (rows) over its channels.
Middle: how alike two timesteps' embeddings are (cosine similarity). Then we noise a test image to a true t and ask
the Fashion-MNIST UNet for the noise while telling it t′: the error is lowest at the true t. Told a smaller t, the
UNet removes too little noise; told a larger one, too much."""

ANATOMY_HELP = """**The anatomy, from the config alone.** The UNet is built on PyTorch's `meta` device (shapes, no
weights), so SD 1.5 and SDXL work offline; FLOPs are counted on one call. The second table runs the same UNet on
pixels instead of latents: 8× the side is 64× the tokens and 4096× the attention matrix."""


def model_choices() -> list[str]:
    return [p.name for p in txt2img.pipeline_presets()]


def _heatmap_gallery(result: dict) -> list:
    """(heatmap, caption) per token: the token as the tokenizer shows it and its share; special tokens greyed."""
    items = []
    mass = result["json"]["mass"]
    for heat, token, special, share in zip(result["heatmaps"], result["tokens"], result["special"], mass):
        picture = ImageOps.grayscale(heat).convert("RGB") if special else heat
        items.append((picture, f"{token}{' (special)' if special else ''} · {100 * share:.1f}%"))
    return items


@model_job
def attention_maps(prompt, negative_prompt, model, guidance_scale, num_inference_steps, seed, width, height,
                   steps="all", layers="all", progress=gr.Progress()):
    """Event handler (API ``/attention_maps``): the image, a gallery of per-token heatmaps, and the JSON
    (tokens, maps that sum to 1, mass, steps and layers aggregated)."""
    preset = txt2img.get_pipeline_preset(model)
    request = dict(prompt=prompt, negative_prompt=negative_prompt or "", guidance_scale=guidance_scale,
                   num_inference_steps=num_inference_steps, seed=seed_from_box(seed), width=width, height=height)
    txt2img.make_request(preset, **request)
    progress(0, desc="Loading the model")
    pipe = loader.load(preset)
    progress(0.1, desc="Denoising, recording cross-attention")
    result = attention.attention_maps(pipe, preset, **request, steps=steps, layers=layers)
    for note in result["json"]["notes"]:
        gr.Info(note)
    state = {"image": result["image"], "tokens": result["tokens"], "special": result["special"],
             "per_step": result["json"]["per_step"]}
    last = len(state["per_step"]["steps"]) - 1
    return (result["image"], _heatmap_gallery(result), result["json"], state,
            gr.update(maximum=max(last, 0), value=max(last, 0), interactive=last > 0))


@user_errors
def maps_at_step(state, index):
    """The heatmaps of one recorded step (no model: the maps were kept, downsampled, by the recording)."""
    if not state:
        raise UserError("Run the attention maps first.")
    steps = state["per_step"]["steps"]
    i = min(max(int(index), 0), len(steps) - 1)
    items = []
    for token_map, token, special in zip(state["per_step"]["maps"][i], state["tokens"], state["special"]):
        heat = figures.heatmap_overlay(state["image"], token_map)
        items.append((ImageOps.grayscale(heat).convert("RGB") if special else heat, token))
    return items, f"The maps of step {steps[i] + 1} alone."


def _fashion_unet():
    presets = presets_for("class-unet")
    if not presets:
        raise UserError("No class-conditional model is installed (assets/presets.json has no 'class-unet' preset).")
    return loader.load(presets[0])


def example_choices() -> list[tuple[str, int]]:
    _, labels = example_images()
    return [(f"{i}: {CLASS_NAMES[int(label)]}", i) for i, label in enumerate(labels)]


@model_job
def timestep_experiment(example, true_t, seed):
    """Event handler (API ``/timestep_experiment``): the gallery, the error curve, and the JSON
    (told_t, mse, best_told_t)."""
    unet = _fashion_unet()
    r = timestep.wrong_time_experiment(unet, example, true_t, seed_from_box(seed))
    shown = timestep.gallery_timesteps(r["told_t"], r["true_t"])
    pictures = sampling.to_pil(to_unit_range(r["x0"])) + sampling.to_pil(to_unit_range(r["x_t"]))
    captions = [f"x0: {CLASS_NAMES[r['label']]}", f"x_t at the true t = {r['true_t']}"]
    for t in shown:
        pictures += sampling.to_pil(to_unit_range(r["pred_x0"][r["told_t"].index(t): r["told_t"].index(t) + 1]))
        captions.append(f"x̂0 told t′ = {t}" + (" (true)" if t == r["true_t"] else ""))
    curve = pd.DataFrame({"told t′": r["told_t"], "noise-prediction error (MSE)": r["mse"]})
    info = {k: r[k] for k in ("told_t", "mse", "best_told_t", "true_t")}
    info["class"] = CLASS_NAMES[r["label"]]
    return list(zip(pictures, captions)), curve, info


@model_job
def embedding_pictures():
    """The timestep embedding and its cosine similarity, from the Fashion-MNIST UNet's own ``time_proj``."""
    return timestep.embedding_figures(_fashion_unet().time_proj)


def anatomy_choices() -> list[str]:
    return [p.name for p in txt2img.pipeline_presets()]


@user_errors
def unet_anatomy(model, width, height):
    """Event handler (API ``/unet_anatomy``): the markdown tables and the JSON (total_parameters,
    flops_per_call, blocks, pixel_space)."""
    result = anatomy.anatomy_for_preset(model, width, height)
    return anatomy_table(result), result


def _attention_section() -> None:
    gr.Markdown(ATTENTION_HELP, elem_classes=["explain"])
    choices = model_choices()
    first = txt2img.get_pipeline_preset(choices[0]) if choices else None
    size = txt2img.start_size(first) if first else 512
    low, high = txt2img.size_limits(first) if first else (64, 1024)
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(value=EXAMPLES[0][0], label="Prompt", elem_id="unet-prompt", max_length=2000)
            negative = gr.Textbox(value="", label="Negative prompt", max_length=2000)
            model = gr.Dropdown(choices, value=choices[0] if choices else None, label="Model")
            with gr.Row():
                guidance = gr.Slider(0, 20, value=txt2img.default_guidance(first) if first else 7.5, step=0.5,
                                     label="Guidance scale")
                steps = gr.Slider(1, 100, value=txt2img.default_steps(first) if first else 30, step=1,
                                  label="Steps")
            with gr.Row():
                seed = gr.Number(value=0, precision=0, label="Seed")
                width = gr.Slider(low, high, value=size, step=8, label="Width")
                height = gr.Slider(low, high, value=size, step=8, label="Height")
            with gr.Row():
                step_range = gr.Dropdown(STEP_CHOICES, value="all", label="Steps to average")
                layer_choice = gr.Dropdown(LAYER_CHOICES, value="all", label="Layers to average")
            run = gr.Button("Show where each word lands", variant="primary", elem_id="unet-attention-run")
        with gr.Column(scale=3):
            image = gr.Image(label="Image", type="pil", format="png", height=256, elem_id="unet-image",
                             elem_classes=["pixelated"])
            gallery = gr.Gallery(label="Per-token attention (share of attention in the caption)", columns=4, format="png",
                                 height="auto", elem_id="unet-heatmaps", elem_classes=["pixelated"])
            gr.Markdown(GROUNDING_NOTE, elem_classes=["explain"])
            step_slider = gr.Slider(0, 5, value=0, step=1, label="Recorded step (maps kept at a few steps)",
                                    interactive=False)
            step_note = gr.Markdown()
            info = gr.JSON(label="Maps, mass, steps and layers")
    gr.Examples(EXAMPLES, inputs=[prompt, negative], label="Examples (the mini models know these words)")
    state = gr.State()
    inputs = [prompt, negative, model, guidance, steps, seed, width, height, step_range, layer_choice]
    outputs = [image, gallery, info, state, step_slider]
    # A click and Enter in the prompt box are one event (one API endpoint).
    gr.on([run.click, prompt.submit], attention_maps, inputs, outputs, api_name="attention_maps", **COMPUTE)
    if choices:
        names = ("prompt", "negative_prompt", "model", "guidance_scale", "num_inference_steps", "seed", "width",
                 "height", "steps", "layers")
        show_on_arrival(attention_maps, {n: c.value for n, c in zip(names, inputs)}, outputs)
    step_slider.release(maps_at_step, [state, step_slider], [gallery, step_note], api_visibility="private",
                        queue=False)


def _time_section() -> None:
    gr.Markdown(TIME_HELP, elem_classes=["explain"])
    with gr.Row():
        embedding = gr.Image(label="Timestep embedding: t = 0…999 (rows) × channels", type="pil", height=280)
        cosine = gr.Image(label="Cosine similarity of two timesteps' embeddings", type="pil", height=280)
    with gr.Row():
        example = gr.Dropdown(example_choices(), value=0, label="Test image")
        true_t = gr.Slider(1, 999, value=400, step=1, label="True timestep t")
        seed = gr.Number(value=0, precision=0, label="Noise seed")
        run = gr.Button("Tell the UNet the wrong time", variant="primary", elem_id="unet-time-run")
    with gr.Row():
        gallery = gr.Gallery(label="The noisy image, and the UNet's x̂0 when told t′", columns=8, height="auto")
    with gr.Row():
        plot = gr.LinePlot(x="told t′", y="noise-prediction error (MSE)", label="Error against the told t′",
                           height=280)
        info = gr.JSON(label="told_t, mse, best_told_t")
    run.click(timestep_experiment, [example, true_t, seed], [gallery, plot, info], api_name="timestep_experiment",
              **COMPUTE)
    show = gr.Button("Show the embedding", size="sm")
    show.click(embedding_pictures, None, [embedding, cosine], api_visibility="private", **COMPUTE)


def _anatomy_section() -> None:
    gr.Markdown(ANATOMY_HELP, elem_classes=["explain"])
    choices = anatomy_choices()
    with gr.Row():
        model = gr.Dropdown(choices, value="SD 1.5" if "SD 1.5" in choices else (choices[0] if choices else None),
                            label="Model (its UNet config)")
        width = gr.Slider(64, 2048, value=512, step=64, label="Image width")
        height = gr.Slider(64, 2048, value=512, step=64, label="Image height")
        run = gr.Button("Take the UNet apart", variant="primary", elem_id="unet-anatomy-run")
    table = gr.Markdown(elem_id="unet-anatomy-table")
    info = gr.JSON(label="total_parameters, flops_per_call, blocks, pixel_space")
    # Built on the meta device: no weights, no accelerator, so it does not wait in the compute queue.
    # preprocess=False, as the compute events: the engine checks the model and sizes, naming the input.
    run.click(unet_anatomy, [model, width, height], [table, info], api_name="unet_anatomy", concurrency_limit=2,
              preprocess=False)


def build() -> None:
    gr.Markdown(INTRO, elem_classes=["explain"])
    with gr.Tabs():
        with gr.Tab("Where each word lands", id="unet-attention"):
            _attention_section()
        with gr.Tab("Why the UNet needs the time", id="unet-time"):
            _time_section()
        with gr.Tab("Anatomy: latent vs pixel", id="unet-anatomy"):
            _anatomy_section()
