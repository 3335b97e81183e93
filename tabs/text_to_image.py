"""Tab 2: text to image with our own annotated sampling loop (``engine.txt2img``).

Prompt, negative prompt, guidance, steps, scheduler, seed, size; SDXL's
micro-conditioning; a live preview of every step's predicted x0; PNGs that
carry their generation parameters; image to image. API: ``/generate``, with
diffusers' parameter names. Colour and CLIP guidance and the guidance sweep are
shown in the Guidance tab (``tabs.guidance_t2i``); ``/generate`` keeps their
inputs (``colour``, ``colour_scale``, ``colour_every``, ``clip_guidance_scale``)
for API callers, as hidden controls here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import gradio as gr

from engine import txt2img
from engine.errors import MAX_SEED, UserError
from engine.imports import lazy
from engine.pngmeta import format_parameters, save_png
from engine.schedulers import DEFAULT, SCHEDULER_NAMES
from tabs.common import (COMPUTE, last_output, model_job, prune_folder, seed_from_box, show_on_arrival, show_used_seed,
                         shows_live_pictures, upload_path)
from tabs.settings import Form

# Imported on first use, after the page is served (engine.imports); txt2img's limits need no torch.
loader = lazy("engine.loader")
images = lazy("engine.images")

# Our PNG copies (with the generation parameters inside), one folder per server process, kept small by
# prune_folder; gradio copies each into its own cache, which delete_cache bounds.
OUTPUT_DIR = Path(os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()) / f"explorer-txt2img-{os.getpid()}"
EXAMPLE_DIR = OUTPUT_DIR / "example"  # the result shown on arrival, to every visitor: never pruned
# Live previews at most this often (wall clock): each one is a decode, a PNG and a file the page downloads,
# and on a fast loop one per step cost more than the steps (issue 11).
PREVIEW_SECONDS = 0.3

MINI_EXAMPLES = [
    ["a blue sneaker", ""],
    ["a red sneaker on the left", ""],
    ["a red sneaker on the left and a blue bag on the right", ""],
    ["a small yellow dress at the bottom", ""],
    ["a green bag in the top right corner", ""],
    ["a photo of red trousers", ""],
    ["sneakers in yellow", ""],
    ["a sneaker", "red"],
    ["a green bag", ""],
    ["a purple ankle boot", ""],
]

EXAMPLES = [
    ["An oil painting of a collie in a top hat", ""],
    ["Acrylic palette knife painting of a flower", ""],
    ["A dog wearing a white hat", "a white hat"],
]

INTRO = """### Text to image, one step at a time
The engine runs its own loop, the one the book annotates (no `pipe(...)`): **encode the prompt** with CLIP,
draw **seeded noise** in the VAE's latent space, then at every step **one batched UNet call** predicts the noise
for [negative prompt, prompt], **classifier-free guidance** mixes them,
`noise = uncond + guidance × (cond − uncond)`, and the **scheduler** takes a step. At the end the **VAE decodes**
the latents. The live preview shows each step's predicted clean image: through a fixed linear latent→RGB map
for the hub models (no VAE call per step), decoded by their own tiny VAE for the mini models. The same seed
gives the same image as the diffusers pipeline.

**The mini models work offline.** *mini-SD* and *mini-SDXL* are Stable Diffusion and SDXL at toy scale: the same
diffusers and transformers classes, trained by us on a 2-core CPU on "Fashion-MNIST in colour" (64 × 64 pictures
of 10 kinds of clothing in 8 colours). They only know prompts like *a blue sneaker* or *a photo of red
trousers*; each image takes a fraction of a second. The words they know: the colours *red, orange, yellow, green,
blue, purple, pink, black*; the items *t-shirt (tee, top), trousers (pants), pullover (sweater, jumper), dress,
coat (jacket), sandal, shirt (blouse), sneaker (trainer, running shoe), bag (handbag, purse), ankle boot (boot)*;
and where to put the item: *on the left, on the right, at the top, at the bottom, in the top left (top right,
bottom left, bottom right) corner, in the centre*, optionally *small*; and two items at opposite places joined by
*and* (*a red sneaker on the left and a blue bag on the right*). Without a place word the item is centred and
large."""

SDXL_HELP = """SDXL was trained on images of every size and crop, and was *told* each image's original size and crop
(Podell et al. 2023, §2.2; the book's exercise 8). At sampling time you choose what to tell it:
* **original_size** (W,H): a small size asks for the look of an upscaled low-resolution photo; the default is the
  image size.
* **crops_coords_top_left** (x,y): where the training crop started; (0,0) gives centred subjects, large values
  cut them off.
* **target_size** (W,H): the size SDXL should aim for; the default is the image size.
* The **negative** ones condition the unconditional half of guidance (e.g. a negative original size of 512,512
  pushes away from low-resolution looks). Empty = the same as the positive ones.

Leave a box empty for the diffusers default. diffusers itself takes (height, width) and (top, left); the
JSON panel shows `add_time_ids` in that order."""

GUIDANCE_INFO = "1 = no guidance (one UNet pass per step); 7.5 is typical for SD, 2 for the mini models."


def model_choices() -> list[str]:
    """Pipeline presets, local folders first; the first local one is the default."""
    return [p.name for p in txt2img.pipeline_presets()]


def _save_pngs(result) -> list[tuple[str, str]]:
    """Each image as a PNG with its A1111-style ``parameters`` chunk; (path, caption) pairs for the gallery."""
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    prune_folder(OUTPUT_DIR)
    items = []
    for image, params in zip(result.pil_images, result.parameters):
        text = format_parameters(params["prompt"], params["negative_prompt"], params["settings"])
        path = save_png(image, OUTPUT_DIR / f"seed{params['settings']['Seed']}-{uuid.uuid4().hex[:8]}.png", text)
        caption = f"guidance {params['settings']['CFG scale']} · seed {params['settings']['Seed']}"
        items.append((str(path), caption))
    return items


# generate_images()'s settings that the controls hold (the upload, strength and colour guidance keep their defaults)
GENERATE_ARGS = ("prompt", "negative_prompt", "model", "guidance_scale", "num_inference_steps", "scheduler", "seed",
                 "randomize_seed", "width", "height", "num_images", "original_size", "crops_coords_top_left",
                 "target_size", "negative_original_size", "negative_crops_coords_top_left", "negative_target_size")


def _previews_for(caller) -> dict:
    """The engine's preview settings for this caller: paced by the clock on the page, none for API callers."""
    return dict(preview_seconds=PREVIEW_SECONDS) if shows_live_pictures(caller) else dict(preview_every=0)


def _stream(preset, progress, **kwargs):
    """Run the engine; yield (gallery, JSON, preview) with gallery and JSON skipped until the end."""
    pipe = loader.load(preset)
    last_preview = None
    for event in txt2img.text_to_image(pipe, preset, **kwargs):
        if isinstance(event, txt2img.Result):
            for warning in event.info.get("warnings", []):
                gr.Warning(warning)
            yield _save_pngs(event), event.info, last_preview
            return
        label = f"Run {event['run']}/{event['runs']}, step" if event["runs"] > 1 else "Step"
        progress((event["step"], event["num_steps"]), desc=f"{label} {event['step']}/{event['num_steps']}")
        if event["preview"] is not None:
            last_preview = event["preview"]
            yield gr.skip(), gr.skip(), last_preview


@model_job
def generate_images(prompt, negative_prompt, model, guidance_scale, num_inference_steps, scheduler, seed, randomize_seed,
             width, height, num_images, original_size, crops_coords_top_left, target_size,
             negative_original_size, negative_crops_coords_top_left, negative_target_size, image=None,
             strength=0.6, colour=None, colour_scale=0.0, colour_every=5, clip_guidance_scale=0.0,
             refiner=txt2img.NO_REFINER, denoising_end=txt2img.DEFAULT_DENOISING_END,
             caller: gr.Request = None, progress=gr.Progress()):
    """Event handler (API ``/generate``): returns the gallery of PNGs, the JSON panel, then the live preview
    (on the page; None for API callers, see ``shows_live_pictures``).

    Sizes for SDXL are "W,H" and crops "x,y" strings (or one number). ``image`` + ``strength``
    make it image to image; ``colour`` ("#rrggbb") + ``colour_scale`` > 0 turn on colour guidance;
    ``clip_guidance_scale`` > 0 turns on CLIP guidance; ``refiner`` (a refiner preset paired with the model, or
    "none") takes over at ``denoising_end`` (SDXL's refiner; the last inputs, so older positional callers still fit).
    """
    preset = txt2img.get_pipeline_preset(model)
    init_image, notes = (None, [])
    if upload_path(image):
        init_image, notes = images.open_image(upload_path(image))
    kwargs = dict(prompt=prompt, negative_prompt=negative_prompt or "", guidance_scale=guidance_scale,
                  num_inference_steps=num_inference_steps, scheduler=scheduler or DEFAULT,
                  seed=seed_from_box(seed, randomize_seed), width=width, height=height, num_images=num_images,
                  original_size=original_size, crops_coords_top_left=crops_coords_top_left, target_size=target_size,
                  negative_original_size=negative_original_size,
                  negative_crops_coords_top_left=negative_crops_coords_top_left,
                  negative_target_size=negative_target_size, image=init_image, strength=strength,
                  colour=colour, colour_scale=colour_scale, colour_every=colour_every,
                  clip_guidance_scale=clip_guidance_scale, refiner=refiner, denoising_end=denoising_end,
                  **_previews_for(caller))
    txt2img.make_request(preset, **kwargs)
    for gallery, info, preview in _stream(preset, progress, **kwargs):
        if isinstance(info, dict) and notes:
            info = {**info, "image_notes": notes}
        yield gallery, info, preview


def example_result(**settings):
    """``generate_images`` for the result shown on arrival, its PNGs moved where pruning leaves them alone."""
    gallery, info, preview = last_output(generate_images(**settings))
    EXAMPLE_DIR.mkdir(parents=True, exist_ok=True)
    kept = []
    for path, caption in gallery:
        kept.append((shutil.move(path, EXAMPLE_DIR / Path(path).name), caption))
    return kept, info, preview


def model_settings(model: str):
    """When the model changes: size bounds and default, steps, guidance (off for Turbo), SDXL box, note."""
    try:
        preset = txt2img.get_pipeline_preset(model)
    except UserError as e:
        return (gr.skip(),) * 5 + (f"⚠️ {e}",)
    low, high = txt2img.size_limits(preset)
    size = txt2img.start_size(preset)
    steps_max = txt2img.max_steps(preset)
    steps = min(txt2img.default_steps(preset), steps_max)
    if txt2img.guidance_allowed(preset):
        guidance = gr.update(value=txt2img.default_guidance(preset), interactive=True, info=GUIDANCE_INFO)
    else:
        guidance = gr.update(value=0.0, interactive=False, info=f"Off: {_guidance_note(preset)}")
    return (
        guidance,
        gr.update(maximum=steps_max, value=steps),
        gr.update(minimum=low, maximum=high, value=size),
        gr.update(minimum=low, maximum=high, value=size),
        gr.update(visible=preset.kind == "sdxl"),
        model_note(preset),
    )


def _guidance_note(preset) -> str:
    return preset.options.get("guidance_note", "This model samples without guidance.")


def model_note(preset) -> str:
    """Where the model comes from, and why guidance is off when it is."""
    if preset is None:
        return "**No text-to-image model is configured.** Add one through `EXPLORER_MODELS`."
    where = ("a local folder: works offline" if not preset.is_hub
             else f"the Hugging Face Hub (`{preset.repo}`): downloads several GB on first use, needs internet")
    note = f"**{preset.name}** ({'SDXL' if preset.kind == 'sdxl' else 'SD'}) loads from {where}."
    if not txt2img.guidance_allowed(preset):
        note += f"\n\n**Guidance is off for this model.** {_guidance_note(preset)}"
    return note


# SDXL's micro-conditioning boxes as (name, label, placeholder): typed width first, as the labels say
# (engine.txt2img.request.parse_pair turns them into diffusers' (height, width) and (top, left)).
SDXL_SIZE_BOXES = (("original_size", "original_size (W,H)", "image size"),
                   ("crops_coords_top_left", "crops_coords_top_left (x,y)", "0,0"),
                   ("target_size", "target_size (W,H)", "image size"))


def _sdxl_controls(preset):
    """SDXL's micro-conditioning boxes, in an accordion shown for SDXL: (the accordion, the six boxes by name in
    ``MICRO_CONDITIONS`` order)."""
    with gr.Accordion("SDXL micro-conditioning", open=False,
                      visible=bool(preset and preset.kind == "sdxl")) as sdxl_box:
        gr.Markdown(SDXL_HELP, elem_classes=["explain"])
        boxes = {}
        with gr.Row():
            for name, label, hint in SDXL_SIZE_BOXES:
                boxes[name] = gr.Textbox("", label=label, placeholder=hint)
        with gr.Row():
            for name in ("negative_original_size", "negative_crops_coords_top_left", "negative_target_size"):
                boxes[name] = gr.Textbox("", label=name, placeholder="same")
    return sdxl_box, boxes


def _image_and_hidden_controls() -> dict:
    """Image to image (an accordion), then /generate's colour and CLIP guidance inputs, kept for API callers but
    hidden: the Guidance tab shows them. By ``generate_images``'s parameter names, in its order."""
    with gr.Accordion("Image to image", open=False):
        gr.Markdown("Upload an image: the VAE encodes it, noise is added up to `strength`, and the loop "
                    "starts part-way through the schedule (strength 1 ignores the image, 0 keeps it).")
        controls = {"image": gr.Image(label="Start image", type="filepath", sources=["upload", "clipboard"]),
                    "strength": gr.Slider(0, 1, value=0.6, step=0.05, label="Strength")}
    controls.update(
        colour=gr.ColorPicker(value="#1f4fd1", label="Target colour", visible=False),
        colour_scale=gr.Slider(0, txt2img.MAX_COLOUR_SCALE, value=0, step=10, label="Colour loss scale (0 = off)",
                               visible=False),
        colour_every=gr.Slider(1, 10, value=5, step=1, label="Every k steps", visible=False),
        clip_guidance_scale=gr.Slider(0, txt2img.MAX_CLIP_GUIDANCE, value=0, step=5,
                                      label="CLIP guidance scale (0 = off)", visible=False),
        # SDXL's refiner (issue 23), for API callers until its view comes; the engine checks both values
        refiner=gr.Dropdown(txt2img.refiner_names(), value=txt2img.NO_REFINER, label="Refiner",
                            allow_custom_value=True, visible=False),
        denoising_end=gr.Number(value=txt2img.DEFAULT_DENOISING_END, label="denoising_end", visible=False))
    return controls


def build() -> Form:
    """The tab's layout and events; returns its form (the named controls that history and links fill)."""
    gr.Markdown(INTRO, elem_classes=["explain"], elem_id="t2i-intro")
    choices = model_choices()
    first = choices[0] if choices else None
    preset = txt2img.get_pipeline_preset(first) if first else None
    low, high = txt2img.size_limits(preset) if preset else (64, 1024)
    size, steps_max = (txt2img.start_size(preset), txt2img.max_steps(preset)) if preset else (512, txt2img.MAX_STEPS)
    steps, guidance = (txt2img.default_steps(preset), txt2img.default_guidance(preset)) if preset else (30, 7.5)
    guidance_on = txt2img.guidance_allowed(preset) if preset else True
    mini = bool(preset and not preset.is_hub)
    with gr.Row():
        with gr.Column(scale=1):
            model = gr.Dropdown(choices, value=first, label="Model", elem_id="t2i-model",
                                info="Local presets first; hub presets need internet on first use.")
            note = gr.Markdown(model_note(preset), elem_id="t2i-note")
            # lines=1: gradio submits on Enter only in a one-line box (it grows with long prompts up to max_lines)
            prompt = gr.Textbox(label="Prompt", lines=1, max_lines=4, value=(MINI_EXAMPLES if mini else EXAMPLES)[0][0],
                                elem_id="t2i-prompt")
            negative_prompt = gr.Textbox("", label="Negative prompt", elem_id="t2i-negative",
                                         info="Replaces the empty prompt as the unconditional input of guidance.")
            with gr.Row():
                guidance_scale = gr.Slider(0, 20, value=guidance, step=0.5,
                                           label="Guidance scale", interactive=guidance_on,
                                           info=GUIDANCE_INFO if guidance_on else f"Off: {_guidance_note(preset)}")
                num_inference_steps = gr.Slider(1, steps_max, value=steps, step=1, label="Steps", elem_id="t2i-steps")
            scheduler = gr.Dropdown(SCHEDULER_NAMES, value=DEFAULT, label="Scheduler",
                                    info="default = the model's own; the others are built from its config.")
            with gr.Row():
                seed = gr.Number(value=42, precision=0, label="Seed", elem_id="t2i-seed", minimum=0,
                                 maximum=MAX_SEED)
                randomize_seed = gr.Checkbox(value=False, label="Randomize seed",
                                             info="The seed used is shown here and in the JSON.")
            with gr.Row():
                width = gr.Slider(low, high, value=size, step=8, label="Width")
                height = gr.Slider(low, high, value=size, step=8, label="Height")
            num_images = gr.Slider(1, txt2img.MAX_IMAGES, value=1, step=1, label="Number of images")
            sdxl_box, micro = _sdxl_controls(preset)
            extra = _image_and_hidden_controls()
            with gr.Row():
                run = gr.Button("Generate", variant="primary", elem_id="t2i-generate", scale=3)
                stop = gr.Button("Stop", variant="stop", elem_id="t2i-stop", scale=1)
            form = Form("txt2img", dict(
                model=model, prompt=prompt, negative_prompt=negative_prompt, guidance_scale=guidance_scale,
                num_inference_steps=num_inference_steps, scheduler=scheduler, seed=seed, randomize_seed=randomize_seed,
                width=width, height=height, num_images_per_prompt=num_images, **micro,
                **{k: v for k, v in extra.items() if k != "image"}),
                run_id="t2i-generate",
                follow=("model", model_settings, [guidance_scale, num_inference_steps, width, height, sdxl_box, note]))
            form.add_link_button("t2i")
        with gr.Column(scale=1):
            gallery = gr.Gallery(label="Images (PNG with the generation parameters inside)", format="png",
                                 columns=2, height="auto", interactive=False, elem_id="t2i-gallery",
                                 elem_classes=["pixelated"])
            preview = gr.Image(label="Live preview: each step's predicted x0", interactive=False,
                               height=256, elem_id="t2i-preview", elem_classes=["pixelated"])
            info = gr.JSON(label="Run details", elem_id="t2i-info")
            form.add_history("t2i-history")

    gr.Examples(MINI_EXAMPLES, inputs=[prompt, negative_prompt],
                label="Prompts the mini models know (colour + clothing; try the negative prompt 'red')")
    gr.Examples(EXAMPLES, inputs=[prompt, negative_prompt], label="The book's prompts (for SD 1.5 and SDXL)")

    # .input (the user's choice), not .change: a model restored from the history or a link comes with its settings.
    model.input(model_settings, model, form.follow[2], api_visibility="private", queue=False)

    inputs = [prompt, negative_prompt, model, guidance_scale, num_inference_steps, scheduler, seed, randomize_seed,
              width, height, num_images, *micro.values(), *extra.values()]
    # A click and Enter in the prompt box are one event (one API endpoint); Stop cancels it at the next step
    # and frees the queue.
    event = gr.on([run.click, prompt.submit], generate_images, inputs, [gallery, info, preview], api_name="generate",
                  **COMPUTE)
    event.success(show_used_seed, info, seed, api_visibility="private", queue=False)
    form.record([event], gallery, info, lambda s: f"seed {s['seed']} · {s['prompt']}")

    stop.click(None, None, None, cancels=[event], api_visibility="private", queue=False)
    if first:
        show_on_arrival(example_result, dict(zip(GENERATE_ARGS, [c.value for c in inputs[:len(GENERATE_ARGS)]])),
                        [gallery, info, preview])
    return form
