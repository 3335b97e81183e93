"""Tab: guidance side by side (the book's exercise 5), and prompt weights.

Fashion-MNIST, one class and one seed, four panels: no guidance, classifier-free guidance (Ho & Salimans
2022), classifier guidance with our noise-aware classifier (Dhariwal & Nichol 2021, §4), and both; each
with the judge's class fidelity and its time per image (``engine.fashion.guidance``). Below, a row of one
prompt with one word weighted 0 … 2 (A1111's ``(word:w)``, through compel: ``engine.prompt_weights``).
Between them, the text-to-image half (``tabs.guidance_t2i``): none, classifier-free, CLIP and colour
guidance; negative prompts; the guidance sweep. API: ``/guidance_panels`` and ``/prompt_weight_sweep`` here,
``/guidance_t2i_panels``, ``/negative_prompt_pair`` and ``/guidance_sweep`` there.
"""

from __future__ import annotations

import time

import gradio as gr

from engine import txt2img
from engine.errors import MAX_SEED, UserError
from engine.fashion import configs
from engine.fashion.data import CLASS_NAMES
from engine.imports import lazy
from tabs import guidance_t2i, text_to_image
from tabs.class_conditional import _judge, _unet_and_schedule, noisy_classifier
from tabs.common import COMPUTE, model_job, seed_from_box, show_on_arrival, show_used_seed, shows_live_pictures
from tabs.settings import Form

guidance = lazy("engine.fashion.guidance")
prompt_weights = lazy("engine.prompt_weights")
figures = lazy("engine.figures")

STOP_SECONDS = 0.5  # a run yields at least this often, so Stop cancels it within about this long
PANEL_COLUMNS, PANEL_SCALE = 4, 3
SWEEP_WEIGHTS = "0, 0.5, 1, 1.5, 2"
# The controls' starting values: the result of these settings is on the page when a visitor arrives.
FIRST = dict(label="Shirt", count=8, sampler="DPM-Solver++", num_inference_steps=20, guidance_scale=2.0,
             classifier_scale=configs.DEFAULT_CLASSIFIER_SCALE, seed=42)

INTRO = """### Guidance: four ways to the same class, from the same noise
**Classifier-free guidance** (Ho & Salimans 2022) asks the diffusion model twice per step, with the class and
with the null class, and pushes away from the second: ε = ε_uncond + g · (ε_cond − ε_uncond).
**Classifier guidance** (Dhariwal & Nichol 2021, §4) asks a separate classifier p(y | x_t, t), trained on noisy
images, which way makes x_t look more like the class, and moves the noise prediction against that gradient:
ε ← ε − s · √(1 − ᾱ_t) · ∇ log p(y | x_t). The first needs a model trained with a null class and a second UNet
pass; the second needs a classifier that reads noisy images, and a forward and backward pass of it per step.
The judge (a classifier of clean images, not the guiding one) counts how many samples look like the class."""

WEIGHTS_INTRO = """### Prompt weights
`(word:1.5)` strengthens a word, `(word:0.5)` weakens it (AUTOMATIC1111's syntax, read by compel). Above 1 the
word's output vectors are scaled away from the empty prompt's; below 1 the embeddings blend towards those of the
prompt with the word masked out of CLIP's attention, so the words after it forget it too (CLIP's text encoder is
causal). Weight 1 is exactly the plain prompt. The same seed in every picture."""


def panel_picture(panel):
    """A panel's samples ``(N, 1, 32, 32)`` as one grid picture, 4 to a row."""
    return figures.image_grid(panel.result.images, min(PANEL_COLUMNS, len(panel.result.images)), scale=PANEL_SCALE,
                              gap=2)


def panel_caption(panel) -> str:
    """"classifier (g=1, s=5) · 7/8 as asked · 40 ms/image"."""
    hits = "no judge" if panel.hits is None else f"{panel.hits}/{len(panel.result.images)} as asked"
    return (f"{panel.mode} (g={panel.guidance_scale:g}, s={panel.classifier_scale:g}) · {hits} · "
            f"{panel.seconds_per_image * 1000:.0f} ms/image")


def panels_table(panels: list) -> str:
    """The panels' figures as a Markdown table, with each one's cost against the unguided panel."""
    lines = ["| panel | g | s | judged as the class asked | time per image | vs none |", "|---|---|---|---|---|---|"]
    base = panels[0].seconds_per_image if panels and panels[0].mode == "none" else None
    for p in panels:
        judged = "no judge installed" if p.hits is None else f"{p.hits}/{len(p.result.images)}"
        ratio = f"{p.seconds_per_image / base:.1f}×" if base else ""
        lines.append(f"| {p.mode} | {p.guidance_scale:g} | {p.classifier_scale:g} | {judged} | "
                     f"{p.seconds_per_image * 1000:.0f} ms | {ratio} |")
    return "\n".join(lines)


@model_job
def guidance_panels(label, count, sampler, num_inference_steps, guidance_scale, classifier_scale, seed,
                    randomize_seed=False, caller: gr.Request = None, progress=gr.Progress()):
    """Event handler (API ``/guidance_panels``): none, classifier-free, classifier and both, same class and seed.

    A generator: on the page each panel appears when it is done; its last output is (the four panels as a
    gallery of grid pictures, a Markdown table of fidelity and time per image, the run's JSON).
    """
    seed = seed_from_box(seed, randomize_seed)
    progress(0, desc="Loading the models")
    unet, schedule = _unet_and_schedule(None)
    runs = guidance.compare(unet, noisy_classifier(), _judge(), label, count, sampler, num_inference_steps,
                            guidance_scale, classifier_scale, seed, scheduler_config=schedule)
    panels, live, last_yield = [], shows_live_pictures(caller), time.monotonic()
    for state in runs:
        if isinstance(state, guidance.Panel):
            panels.append(state)
            if live:
                yield [(panel_picture(p), panel_caption(p)) for p in panels], gr.skip(), gr.skip()
                last_yield = time.monotonic()
            continue
        progress((len(panels) * state.num_steps + state.index + 1, len(guidance.MODES) * state.num_steps),
                 desc=f"{guidance.MODES[len(panels)]}: denoising", unit="steps")
        if time.monotonic() - last_yield > STOP_SECONDS:  # Stop takes effect at a yield
            yield gr.skip(), gr.skip(), gr.skip()
            last_yield = time.monotonic()
    request = panels[0].result.request
    info = {"seed": request.seed, "class": CLASS_NAMES[request.label], "sampler": request.sampler,
            "steps": request.num_inference_steps, "panels": [p.summary() for p in panels]}
    yield [(panel_picture(p), panel_caption(p)) for p in panels], panels_table(panels), info


@model_job
def prompt_weight_sweep(prompt, word, weights, negative_prompt, model, guidance_scale, num_inference_steps, seed,
                        caller: gr.Request = None, progress=gr.Progress()):
    """Event handler (API ``/prompt_weight_sweep``): one image per weight of ``word`` in ``prompt``, same seed.

    ``weights`` is a comma-separated list ("0, 0.5, 1, 1.5, 2"). Returns the gallery (captioned with each
    weighted prompt), the JSON panel, then the live preview.
    """
    preset = txt2img.get_pipeline_preset(model)
    prompts = prompt_weights.sweep_prompts(prompt, word, weights)
    kwargs = dict(negative_prompt=negative_prompt or "", guidance_scale=guidance_scale,
                  num_inference_steps=num_inference_steps, seed=seed_from_box(seed), width=txt2img.start_size(preset),
                  height=txt2img.start_size(preset), num_images=1, **text_to_image._previews_for(caller))
    for text in prompts:  # every value checked before the first image
        txt2img.make_request(preset, prompt=text, **kwargs)
    items, runs = [], []
    for text in prompts:
        for gallery, info, preview in text_to_image._stream(preset, progress, prompt=text, **kwargs):
            if isinstance(info, dict):
                items.append((gallery[0][0], text))
                runs.append({"prompt": text, "seconds": info["seconds"]})
            yield (items if isinstance(info, dict) else gr.skip()), gr.skip(), preview
    yield items, {"model": preset.name, "seed": kwargs["seed"], "word": word, "sweep": runs}, gr.skip()


# --------------------------------------------------------------------------------------------
# Layout


def _panels_section(when=None):
    """The Fashion-MNIST panels: controls, gallery, table, JSON, history and link; returns the form."""
    from tabs.class_conditional import steps_for_sampler

    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            label = gr.Dropdown(list(CLASS_NAMES), value=FIRST["label"], label="Class", allow_custom_value=True,
                                elem_id="guide-class")
            count = gr.Slider(1, 32, value=FIRST["count"], step=1, label="Images per panel", elem_id="guide-count")
            sampler = gr.Radio(list(configs.SAMPLERS), value=FIRST["sampler"], label="Sampler")
            steps = gr.Slider(2, 1000, value=FIRST["num_inference_steps"], step=1, label="Steps",
                              elem_id="guide-steps")
            cfg = gr.Slider(0, configs.MAX_GUIDANCE, value=FIRST["guidance_scale"], step=0.5,
                            label="Classifier-free guidance scale g", info="Used by the 'classifier-free' and 'both' "
                            "panels; 1 = none.")
            scale = gr.Slider(0, configs.MAX_CLASSIFIER_SCALE, value=FIRST["classifier_scale"], step=0.5,
                              label="Classifier guidance scale s", elem_id="guide-classifier-scale",
                              info="Used by the 'classifier' and 'both' panels; 0 = none.")
            with gr.Row():
                seed = gr.Number(value=FIRST["seed"], label="Seed", minimum=0, maximum=MAX_SEED, precision=0)
                randomize = gr.Checkbox(value=False, label="Randomize seed")
            with gr.Row():
                run = gr.Button("Compare", variant="primary", elem_id="guide-run", scale=3)
                stop = gr.Button("Stop", variant="stop", elem_id="guide-stop", scale=1)
            form = Form("guidance", dict(sampler=sampler, num_inference_steps=steps, count=count, guidance_scale=cfg,
                                         classifier_scale=scale, seed=seed, randomize_seed=randomize,
                                         **{"class": label}),
                        run_id="guide-run", follow=("sampler", steps_for_sampler, [steps]))
            form.add_link_button("guide")
        with gr.Column(scale=2):
            panels = gr.Gallery(label="none · classifier-free · classifier · both", columns=2, height="auto",
                                format="png", interactive=False, elem_id="guide-panels")
            table = gr.Markdown(elem_id="guide-table")
            info = gr.JSON(label="Run", elem_id="guide-info")
            form.add_history("guide-history")
    event = run.click(guidance_panels, [label, count, sampler, steps, cfg, scale, seed, randomize],
                      [panels, table, info], api_name="guidance_panels", **COMPUTE)
    event.success(show_used_seed, info, seed, api_visibility="private", queue=False)
    form.record([event], panels, info, lambda s: f"{s['class']} · seed {s['seed']}")
    stop.click(None, None, None, cancels=[event], api_visibility="private", queue=False)
    sampler.input(steps_for_sampler, sampler, steps, api_visibility="private", queue=False)
    show_on_arrival(guidance_panels, FIRST, [panels, table, info], when=when)
    return form


def _weights_section() -> None:
    """The prompt-weight row: one word of one prompt at several weights, same seed."""
    choices = text_to_image.model_choices()
    first = choices[0] if choices else None
    preset = txt2img.get_pipeline_preset(first) if first else None
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            model = gr.Dropdown(choices, value=first, label="Model", elem_id="weights-model")
            prompt = gr.Textbox("a red sneaker", label="Prompt", elem_id="weights-prompt")
            with gr.Row():
                word = gr.Textbox("red", label="Word to weigh", elem_id="weights-word")
                weights = gr.Textbox(SWEEP_WEIGHTS, label="Weights (comma-separated)", elem_id="weights-list")
            negative = gr.Textbox("", label="Negative prompt", info="May carry weights too: (blurry:1.5).")
            with gr.Row():
                cfg = gr.Slider(0, 20, value=txt2img.default_guidance(preset) if preset else 7.5, step=0.5,
                                label="Guidance scale")
                steps = gr.Slider(1, txt2img.MAX_STEPS, value=txt2img.default_steps(preset) if preset else 30,
                                  step=1, label="Steps")
            seed = gr.Number(value=1, label="Seed", minimum=0, maximum=MAX_SEED, precision=0)
            with gr.Row():
                run = gr.Button("Run the weights", variant="primary", elem_id="weights-run", scale=3)
                stop = gr.Button("Stop", variant="stop", elem_id="weights-stop", scale=1)
        with gr.Column(scale=2):
            gallery = gr.Gallery(label="One image per weight", columns=5, height="auto", format="png",
                                 interactive=False, elem_id="weights-gallery")
            preview = gr.Image(label="Live preview", interactive=False, height=160)
            info = gr.JSON(label="Sweep details", elem_id="weights-info")
    event = run.click(prompt_weight_sweep, [prompt, word, weights, negative, model, cfg, steps, seed],
                      [gallery, info, preview], api_name="prompt_weight_sweep", **COMPUTE)
    stop.click(None, None, None, cancels=[event], api_visibility="private", queue=False)


def build(tab=None) -> list[Form]:
    """The tab's layout and events: Fashion-MNIST's panels, the text-to-image half (``tabs.guidance_t2i``; all
    the examples shown when ``tab`` is first selected) and the prompt weights; returns the forms (the named controls
    that history and links fill)."""
    gr.Markdown(INTRO, elem_classes=["explain"])
    # Every example of this tab is shown when the tab is first opened, not on the page's load: its four
    # Fashion panels (32 samples, half of them classifier-guided) would otherwise hold the compute queue ahead
    # of a fresh server's first visitor's own run.
    forms = [_panels_section([tab.select] if tab is not None else None)]
    forms += guidance_t2i.build_text_to_image(tab)
    gr.Markdown(WEIGHTS_INTRO, elem_classes=["explain"])
    _weights_section()
    return forms
