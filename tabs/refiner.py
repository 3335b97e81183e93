"""Text to image, part two: SDXL's refiner hand-off, side by side (issue 23).

Three pictures from one seed: the base model alone over the whole schedule, the latents the base hands over at
the switch point (decoded as they are, noise and all), and base + refiner. A slider moves the switch point
(``denoising_end``, 0.6-0.95). The engine: ``engine.txt2img.handoff``; API ``/refiner_handoff``.
"""

from __future__ import annotations

import gradio as gr

from engine import txt2img
from engine.errors import MAX_SEED
from engine.imports import lazy
from tabs.common import COMPUTE, model_job, seed_from_box, show_on_arrival, show_used_seed

loader = lazy("engine.loader")
handoff = lazy("engine.txt2img.handoff")
latents = lazy("engine.txt2img.latents")

MINI_PROMPT = "a red sneaker"  # the mini refiner reads text_encoder_2 only, which never read a place word
HUB_PROMPT = "An oil painting of a collie in a top hat"

INTRO = """### SDXL's refiner: two expert denoisers, one schedule
SDXL's **refiner** (Podell et al. 2023, §2.5) is a second diffusion model in the same latent space, trained only on
the low-noise end of the schedule and on high-quality pictures. The **base** denoises from pure noise down to
the **switch point** (`denoising_end`, 0.8 = the base runs the first 80% of the steps), then hands its latents,
still slightly noisy, to the refiner, which denoises the rest: an *ensemble of expert denoisers* (eDiff-I). The
refiner reads only the second text encoder, and its micro-conditioning swaps the target size for an
**aesthetic score** (6.0; the negative 2.5). Left: the base alone. Middle: what the refiner receives, decoded.
Right: base + refiner. Same seed, prompt and step count.

**On our mini models the refiner changes almost nothing, and we measured it** (`scripts/eval_mini_refiner.py`,
320 images): sharpness is the same, class and colour are within noise, the time is 1.09x the base alone's. The
refiner's "crisp" pictures were the base's own training data, and most of the detail real pictures have is lost in
the mini VAE anyway. That is the point SDXL's authors make: a refiner needs better pictures than the base's."""


def pairs() -> list[tuple[str, list[str]]]:
    """The SDXL presets that have a refiner, each with its refiners (local presets first)."""
    found = []
    for preset in txt2img.pipeline_presets():
        refiners = txt2img.refiner_choices(preset)[1:]
        if refiners:
            found.append((preset.name, refiners))
    return found


def _picture(array):
    """One [H, W, 3] picture in [0, 1] as PIL (the page enlarges it with nearest neighbours: ``pixelated``)."""
    return latents.numpy_to_pil(array[None])[0]


@model_job
def refiner_handoff(prompt, negative_prompt, model, refiner, denoising_end, guidance_scale, num_inference_steps,
                    seed, randomize_seed=False, progress=gr.Progress()):
    """Event handler (API ``/refiner_handoff``): (base alone, switch point decoded, base + refiner, JSON)."""
    preset = txt2img.get_pipeline_preset(model)
    size = txt2img.start_size(preset)
    kwargs = dict(width=size, height=size, prompt=prompt, negative_prompt=negative_prompt or "",
                  guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
                  seed=seed_from_box(seed, randomize_seed), denoising_end=denoising_end, refiner=refiner,
                  preview_every=0)
    txt2img.make_request(preset, **kwargs)  # every number checked before a model loads
    pipe = loader.load(preset)
    for event in handoff.compare_handoff(pipe, preset, **kwargs):
        if isinstance(event, handoff.HandOff):
            return (_picture(event.base_alone[0]), _picture(event.switch_point[0]), _picture(event.refined[0]),
                    event.info)
        progress((event["step"], event["num_steps"]),
                 desc=f"{event['stage'].capitalize()}: step {event['step']}/{event['num_steps']}")


def refiners_for(model: str):
    """When the base changes: its refiners."""
    choices = dict(pairs()).get(model, [])
    return gr.update(choices=choices, value=choices[0] if choices else None)


def build() -> None:
    """The hand-off view (an accordion under Text to image; its example runs when it is first opened)."""
    found = pairs()
    if not found:
        return
    model, refiners = found[0]
    mini = not txt2img.get_pipeline_preset(model).is_hub
    with gr.Accordion("SDXL refiner: the hand-off, side by side", open=False, elem_id="refiner") as box:
        gr.Markdown(INTRO, elem_classes=["explain"])
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                c = {"model": gr.Dropdown([m for m, _ in found], value=model, label="Base model",
                                          elem_id="ref-model"),
                     "refiner": gr.Dropdown(refiners, value=refiners[0], label="Refiner", elem_id="ref-refiner"),
                     "prompt": gr.Textbox(MINI_PROMPT if mini else HUB_PROMPT, label="Prompt", lines=1,
                                          elem_id="ref-prompt"),
                     "negative_prompt": gr.Textbox("", label="Negative prompt"),
                     "denoising_end": gr.Slider(*txt2img.DENOISING_END_UI, value=txt2img.DEFAULT_DENOISING_END,
                                                step=0.05, label="Switch point (denoising_end)", elem_id="ref-switch",
                                                info="The share of the steps the base runs; the refiner the rest."),
                     "guidance_scale": gr.Slider(0, 20, value=2.0 if mini else 7.5, step=0.5, label="Guidance scale"),
                     "num_inference_steps": gr.Slider(2, txt2img.MAX_STEPS, value=25, step=1, label="Steps"),
                     "seed": gr.Number(value=42, label="Seed", minimum=0, maximum=MAX_SEED, precision=0,
                                       elem_id="ref-seed"),
                     "randomize_seed": gr.Checkbox(False, label="Randomize seed")}
                with gr.Row():
                    run = gr.Button("Compare", variant="primary", elem_id="ref-run", scale=3)
                    stop = gr.Button("Stop", variant="stop", elem_id="ref-stop", scale=1)
            with gr.Column(scale=2):
                with gr.Row():
                    outputs = [gr.Image(label=label, interactive=False, format="png", elem_id=f"ref-{key}",
                                        height=256, elem_classes=["pixelated"])
                               for key, label in (("alone", "Base alone"),
                                                  ("switch", "Handed over at the switch point"),
                                                  ("refined", "Base + refiner"))]
                info = gr.JSON(label="Run details: both models' steps and times", elem_id="ref-info")
    inputs = [c[k] for k in ("prompt", "negative_prompt", "model", "refiner", "denoising_end", "guidance_scale",
                             "num_inference_steps", "seed", "randomize_seed")]  # refiner_handoff's order
    event = gr.on([run.click, c["prompt"].submit], refiner_handoff, inputs, outputs + [info],
                  api_name="refiner_handoff", **COMPUTE)
    event.success(show_used_seed, info, c["seed"], api_visibility="private", queue=False)
    stop.click(None, None, None, cancels=[event], api_visibility="private", queue=False)
    c["model"].input(refiners_for, c["model"], c["refiner"], api_visibility="private", queue=False)
    first = {k: v.value for k, v in c.items()}
    show_on_arrival(refiner_handoff, first, outputs + [info], when=[box.expand])
