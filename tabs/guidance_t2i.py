"""The Guidance tab's text-to-image half (built by ``tabs.guidance.build``).

Three sections, each on the engine's own loop (``engine.txt2img``), same prompt and seed in every picture:

* four panels: none, classifier-free, CLIP guidance and colour guidance (API ``/guidance_t2i_panels``),
  each with its time and the CLIP score of its picture;
* negative prompts, the book's exercises 6 and 7: the prompt without and with a negative prompt
  (API ``/negative_prompt_pair``);
* the guidance sweep, moved here from the Text-to-image tab (API ``/guidance_sweep``, unchanged).
"""

from __future__ import annotations

import time

import gradio as gr

from engine import txt2img
from engine.errors import MAX_SEED, UserError
from engine.imports import lazy
from engine.schedulers import DEFAULT, SCHEDULER_NAMES
from tabs import text_to_image
from tabs.common import COMPUTE, model_job, seed_from_box, show_on_arrival, show_used_seed, shows_live_pictures
from tabs.settings import Form

loader = lazy("engine.loader")
clip_guidance = lazy("engine.txt2img.clip_guidance")

STOP_SECONDS = 0.5  # a run yields at least this often, so Stop cancels it within about this long
MINI = "mini-SD (offline)"
PANELS = ("none", "classifier-free", "CLIP guidance", "colour guidance")
# The panels' starting values on mini-SD: g = 2 for the classifier-free panel, 1 (none) for the others; CLIP
# guidance at about 10 (scripts/eval_clip_guidance.py); colour guidance towards blue, against the prompt's red, so
# that its pull shows: on seed 42 a clean blue sneaker at scale 100 every 5 steps (at 400, or every step, the
# picture breaks up; at 30 every step it stays a dark red).
FIRST = dict(prompt="a red sneaker", guidance_scale=2.0, clip_guidance_scale=10.0, colour="#1f4fd1",
             colour_scale=100.0, colour_every=5, seed=42)
# The negative-prompt pairs: (model, prompt, negative prompt, guidance scale, steps). The hub one runs where the
# hub is reachable (the Space); elsewhere it answers that the model is not available.
NEGATIVE_EXAMPLES = [[MINI, "a sneaker", "red", 2.0, 25],
                     ["SD 1.5", "a dog wearing a white hat", "a white hat", 7.5, 30]]

T2I_INTRO = """### Text to image: four ways to steer the same noise
One prompt, one seed, four runs of the same loop. **None** (g = 1): the conditional noise prediction alone.
**Classifier-free** (Ho & Salimans 2022): `ε = ε(x_t, ∅) + g · (ε(x_t, c) − ε(x_t, ∅))`, a second UNet pass per
step. **CLIP guidance** (Nichol et al. 2021, *GLIDE*; diffusers' community pipeline
`clip_guided_stable_diffusion`): each step decodes the predicted x̂0, a CLIP image model embeds it, and the noise
prediction moves along the gradient of its distance to the prompt's CLIP text embedding,
`ε ← ε + √(1 − ᾱ_t) · s · ∇ d(CLIP(x̂0), text)`: classifier guidance with CLIP as the classifier, one VAE decode and
its backward pass per step. **Colour guidance** (the book's exercise 9, after Whitaker's *Stable Diffusion deep
dive*) changes the loss instead: every k steps, `x_t ← x_t − σ_t² · s · ∇ mean|x̂0 − colour|`, towards any
colour, even against the prompt (blue here). Each panel shows its loop's time and the CLIP score (cosine) of its
picture with the prompt, by the same CLIP image model: on mini-SD a small tower we trained against its frozen text
encoder, so the score is a toy judge too."""

NEGATIVE_INTRO = """### Negative prompts (exercises 6 and 7)
Classifier-free guidance pushes away from its unconditional prediction; a negative prompt *replaces* the empty
prompt there: `ε = ε(x_t, neg) + g · (ε(x_t, c) − ε(x_t, neg))`. So "a sneaker" with the negative "red" steers
away from red, and needs g > 1 to act at all. The book's example, "a dog wearing a white hat" with the negative
"a white hat", is for SD 1.5 and runs where the model hub is reachable."""

SWEEP_INTRO = """### Guidance sweep
The book's figure: the same prompt and seed at several guidance scales g, in one row (the prompt, model, steps
and seed above). The prompt is encoded once and the embeddings are reused for every scale; g ≤ 1 runs only the
conditional half."""


def _first_preset():
    choices = text_to_image.model_choices()
    if not choices:
        return None
    return txt2img.get_pipeline_preset(MINI if MINI in choices else choices[0])


def _pace(last_yield: float) -> bool:
    """Whether it is time to yield (Stop takes effect at a yield)."""
    return time.monotonic() - last_yield > STOP_SECONDS


def check_runs(preset, runs: list[tuple[str, dict]]) -> None:
    """Every panel's settings checked (``make_request``) before the first step of any."""
    for _, settings in runs:
        txt2img.make_request(preset, **settings)


def run_panels(pipe, preset, runs: list[tuple[str, dict]], progress):
    """Each (name, settings) of ``runs`` through ``text_to_image`` in turn, same pipeline; yields None after
    each step and (name, Result) when a panel is done."""
    for k, (name, settings) in enumerate(runs):
        for event in txt2img.text_to_image(pipe, preset, **settings, preview_every=0):
            if isinstance(event, txt2img.Result):
                yield name, event
            else:
                progress((k * event["num_steps"] + event["step"], len(runs) * event["num_steps"]),
                         desc=f"{name}: step {event['step']}/{event['num_steps']}", unit="steps")
                yield None


def panel_runs(base: dict, guidance_scale, clip_guidance_scale, colour, colour_scale, colour_every) -> list:
    """The four panels' settings: ``base`` (prompt, seed, size...) with only their own guidance turned on."""
    off = dict(base, guidance_scale=1.0, clip_guidance_scale=0.0, colour=None, colour_scale=0.0,
               colour_every=colour_every)
    return [("none", off), ("classifier-free", dict(off, guidance_scale=guidance_scale)),
            ("CLIP guidance", dict(off, clip_guidance_scale=clip_guidance_scale)),
            ("colour guidance", dict(off, colour=colour, colour_scale=colour_scale))]


def panel_caption(summary: dict) -> str:
    """"CLIP guidance · g=1, CLIP 10 · 2.1 s · CLIP score 0.312"."""
    knobs = [f"g={summary['guidance_scale']:g}"]
    if summary.get("clip_guidance_scale"):
        knobs.append(f"CLIP {summary['clip_guidance_scale']:g}")
    if summary.get("colour"):
        knobs.append(f"colour {summary['colour']} ×{summary['colour_scale']:g}")
    score = summary.get("clip_score")
    return (f"{summary['panel']} · {', '.join(knobs)} · {summary['loop_seconds']:.1f} s"
            + ("" if score is None else f" · CLIP score {score:.3f}"))


def panels_table(summaries: list[dict]) -> str:
    """The panels as a Markdown table: guidance, the denoising loop's time (against the unguided panel's; the
first run of a fresh server also warms the UNet up), CLIP score, last losses."""
    lines = ["| panel | g | CLIP scale | colour | loop time | vs none | CLIP score | last guidance loss |",
             "|---|---|---|---|---|---|---|---|"]
    base = summaries[0]["loop_seconds"] if summaries else None
    for s in summaries:
        colour = f"{s['colour']} ×{s['colour_scale']:g}" if s.get("colour") else ""
        score = "no CLIP image model" if s.get("clip_score") is None else f"{s['clip_score']:.3f}"
        loss = ", ".join(f"{k.split('_')[0]} {s[k]:.4g}" for k in ("clip_loss", "colour_loss") if k in s)
        lines.append(f"| {s['panel']} | {s['guidance_scale']:g} | {s.get('clip_guidance_scale') or 0:g} | {colour} | "
                     f"{s['loop_seconds']:.1f} s | {s['loop_seconds'] / max(base, 1e-9):.1f}× | {score} | {loss} |")
    return "\n".join(lines)


def summarize_panel(name: str, result, settings: dict, score) -> dict:
    """One panel's JSON: its guidance, the denoising loop's time, UNet calls, CLIP score (``score``: a function of the result, or
    None) and last guidance losses."""
    info = result.info
    summary = {"panel": name, "negative_prompt": settings.get("negative_prompt", ""),
               "guidance_scale": info["guidance_scale"], "clip_guidance_scale": info.get("clip_guidance_scale", 0.0),
               "loop_seconds": info["loop_seconds"], "unet_calls": info["unet_calls"]}
    if settings.get("colour") and settings.get("colour_scale"):
        summary.update(colour=settings["colour"], colour_scale=float(settings["colour_scale"]),
                       colour_every=int(settings["colour_every"]))
    if score is not None:
        summary["clip_score"] = score(result)
    for key in ("clip_loss", "colour_loss"):
        if info.get(key):
            summary[key] = info[key][-1]
    return summary


def clip_scorer(pipe, preset, prompt: str):
    """A function of a panel's result -> its CLIP score with the plain prompt; None without a CLIP image model."""
    try:
        clip_guidance.image_encoder_preset(preset)
    except UserError:
        return None
    return lambda result: round(clip_guidance.clip_scores(pipe, preset, prompt, result.images)[0], 4)


def stream_panels(preset, runs: list[tuple[str, dict]], summaries: list, live: bool, progress, scored: bool):
    """Run the panels; yields the gallery as each one finishes (``gr.skip()`` in between, so Stop gets in, and
    for API callers), appending each panel's summary to ``summaries``; the last yield is the whole gallery."""
    pipe = loader.load(preset)
    score = clip_scorer(pipe, preset, runs[0][1]["prompt"]) if scored else None
    items, last_yield = [], time.monotonic()
    for done in run_panels(pipe, preset, runs, progress):
        if done is not None:
            name, result = done
            summaries.append(summarize_panel(name, result, dict(runs)[name], score))
            items.append((text_to_image._save_pngs(result)[0][0], panel_caption(summaries[-1])))
        if (done is not None and live) or _pace(last_yield):
            yield list(items) if done is not None and live else gr.skip()
            last_yield = time.monotonic()
    yield items


@model_job
def guidance_t2i_panels(prompt, model, guidance_scale, clip_guidance_scale, colour, colour_scale, colour_every,
                        num_inference_steps, seed, randomize_seed=False, caller: gr.Request = None,
                        progress=gr.Progress()):
    """Event handler (API ``/guidance_t2i_panels``): none, classifier-free, CLIP guidance and colour guidance,
    same prompt and seed. ``guidance_scale`` is the classifier-free panel's (the others run at 1).

    A generator: on the page each panel appears when it is done; its last output is (the four pictures as a
    gallery, a Markdown table of time and CLIP score, the run's JSON).
    """
    preset = txt2img.get_pipeline_preset(model)
    size = txt2img.start_size(preset)
    base = dict(prompt=prompt, num_inference_steps=num_inference_steps, seed=seed_from_box(seed, randomize_seed),
                width=size, height=size, num_images=1)
    runs = panel_runs(base, guidance_scale, clip_guidance_scale, colour, colour_scale, colour_every)
    check_runs(preset, runs)
    if runs[2][1]["clip_guidance_scale"]:
        clip_guidance.image_encoder_preset(preset)  # a model without a CLIP image model says so before any step
    progress(0, desc="Loading the model")
    summaries = []
    for items in stream_panels(preset, runs, summaries, shows_live_pictures(caller), progress, scored=True):
        yield items, gr.skip(), gr.skip()
    info = {"model": preset.name, "prompt": prompt, "seed": base["seed"], "num_inference_steps": num_inference_steps,
            "size": size, "panels": summaries}
    yield items, panels_table(summaries), info


@model_job
def negative_prompt_pair(prompt, negative_prompt, model, guidance_scale, num_inference_steps, seed,
                         caller: gr.Request = None, progress=gr.Progress()):
    """Event handler (API ``/negative_prompt_pair``): the prompt without, then with, the negative prompt; same
    seed and guidance. Returns (the two pictures as a gallery, the JSON)."""
    preset = txt2img.get_pipeline_preset(model)
    size = txt2img.start_size(preset)
    base = dict(prompt=prompt, guidance_scale=guidance_scale, num_inference_steps=num_inference_steps,
                seed=seed_from_box(seed), width=size, height=size, num_images=1)
    with_negative = dict(base, negative_prompt=negative_prompt)
    runs = [("without a negative prompt", dict(base, negative_prompt="")),
            ("with the negative prompt", with_negative)]
    request = txt2img.make_request(preset, **with_negative)
    if not request.negative_prompt.strip():
        raise UserError("negative_prompt is empty: give the words to steer away from, like 'red'.")
    if request.guidance_scale <= 1:
        raise UserError("guidance_scale must be above 1 for a negative prompt to act (it takes the empty "
                        f"prompt's place in classifier-free guidance), got {request.guidance_scale:g}.")
    check_runs(preset, runs)
    progress(0, desc="Loading the model")
    summaries = []
    for items in stream_panels(preset, runs, summaries, shows_live_pictures(caller), progress, scored=False):
        yield items, gr.skip()
    yield items, {"model": preset.name, "prompt": prompt, "negative_prompt": negative_prompt, "seed": base["seed"],
                  "guidance_scale": request.guidance_scale, "panels": summaries}


@model_job
def guidance_sweep(prompt, negative_prompt, model, guidance_scales, num_inference_steps, scheduler, seed,
                   randomize_seed, width, height, original_size, crops_coords_top_left, target_size,
                   caller: gr.Request = None, progress=gr.Progress()):
    """Event handler (API ``/guidance_sweep``): one image per guidance scale, same prompt and seed.

    ``guidance_scales`` is a comma-separated list ("1, 2, 4, 12"). SDXL's ``original_size`` and ``target_size``
    are typed width first, "W,H", and ``crops_coords_top_left`` "x,y", as on Text to image (empty: the
    defaults). Returns the gallery, the JSON panel (one entry per scale under "sweep"), then the live preview.
    """
    preset = txt2img.get_pipeline_preset(model)
    kwargs = dict(prompt=prompt, negative_prompt=negative_prompt or "", guidance_scales=guidance_scales,
                  num_inference_steps=num_inference_steps, scheduler=scheduler or DEFAULT,
                  seed=seed_from_box(seed, randomize_seed), width=width, height=height, num_images=1,
                  original_size=original_size, crops_coords_top_left=crops_coords_top_left, target_size=target_size,
                  **text_to_image._previews_for(caller))
    kwargs["guidance_scale"] = 1.0  # checked per scale by the sweep
    txt2img.make_request(preset, **kwargs)
    yield from text_to_image._stream(preset, progress, **kwargs)


def model_defaults(model: str):
    """When a section's model changes: its guidance scale g and its steps (the model's defaults)."""
    try:
        preset = txt2img.get_pipeline_preset(model)
    except UserError:
        return gr.skip(), gr.skip()
    steps_max = txt2img.max_steps(preset)
    return (gr.update(value=txt2img.default_guidance(preset), interactive=txt2img.guidance_allowed(preset)),
            gr.update(maximum=steps_max, value=min(txt2img.default_steps(preset), steps_max)))


def sweep_size(model: str):
    """When the model changes (chosen, restored or linked): the sweep's width and height ranges, its SDXL box."""
    try:
        preset = txt2img.get_pipeline_preset(model)
    except UserError:
        return gr.skip(), gr.skip(), gr.skip()
    low, high = txt2img.size_limits(preset)
    size = txt2img.start_size(preset)
    return (gr.update(minimum=low, maximum=high, value=size), gr.update(minimum=low, maximum=high, value=size),
            gr.update(visible=preset.kind == "sdxl"))


# --------------------------------------------------------------------------------------------
# Layout


def _panel_controls(preset) -> dict:
    """The four panels' controls by form key (the keys of ``tabs.links.KEYS["guidance_t2i"]``)."""
    steps_max = txt2img.max_steps(preset) if preset else txt2img.MAX_STEPS
    c = {"model": gr.Dropdown(text_to_image.model_choices(), value=preset.name if preset else None, label="Model",
                              elem_id="gt2i-model", info="Hub models need internet on first use."),
         "prompt": gr.Textbox(FIRST["prompt"], label="Prompt", lines=1, max_lines=3, elem_id="gt2i-prompt")}
    with gr.Row():
        g = txt2img.default_guidance(preset) if preset else FIRST["guidance_scale"]
        c["guidance_scale"] = gr.Slider(0, 20, value=g, step=0.5, label="Classifier-free g",
                                        info="The classifier-free panel's; the others run at g = 1.",
                                        elem_id="gt2i-guidance")
        c["clip_guidance_scale"] = gr.Slider(0, 100, value=FIRST["clip_guidance_scale"], step=1,
                                             label="CLIP guidance scale", info="About 10 on mini-SD.",
                                             elem_id="gt2i-clip-scale")
    with gr.Row():
        c["colour"] = gr.ColorPicker(value=FIRST["colour"], label="Target colour", elem_id="gt2i-colour")
        c["colour_scale"] = gr.Slider(0, txt2img.MAX_COLOUR_SCALE, value=FIRST["colour_scale"], step=10,
                                      label="Colour loss scale", elem_id="gt2i-colour-scale")
        c["colour_every"] = gr.Slider(1, 10, value=FIRST["colour_every"], step=1, label="Every k steps")
    steps = min(txt2img.default_steps(preset), steps_max) if preset else 25
    c["num_inference_steps"] = gr.Slider(1, steps_max, value=steps, step=1, label="Steps", elem_id="gt2i-steps")
    with gr.Row():
        c["seed"] = gr.Number(value=FIRST["seed"], label="Seed", minimum=0, maximum=MAX_SEED, precision=0,
                              elem_id="gt2i-seed")
        c["randomize_seed"] = gr.Checkbox(value=False, label="Randomize seed")
    return c


def _panels_section(preset, when) -> tuple[Form, dict]:
    """The four text-to-image panels: controls, gallery, table, JSON, history and link; returns the form and
    its controls (the sweep shares the model, prompt, steps and seed)."""
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            c = _panel_controls(preset)
            with gr.Row():
                run = gr.Button("Compare", variant="primary", elem_id="gt2i-run", scale=3)
                stop = gr.Button("Stop", variant="stop", elem_id="gt2i-stop", scale=1)
            form = Form("guidance_t2i", c, run_id="gt2i-run",
                        follow=("model", model_defaults, [c["guidance_scale"], c["num_inference_steps"]]))
            form.add_link_button("gt2i")
        with gr.Column(scale=2):
            gallery = gr.Gallery(label=" · ".join(PANELS), columns=4, height="auto", format="png",
                                 interactive=False, elem_id="gt2i-panels", elem_classes=["pixelated"])
            table = gr.Markdown(elem_id="gt2i-table")
            info = gr.JSON(label="Run", elem_id="gt2i-info")
            form.add_history("gt2i-history")
    inputs = [c[k] for k in ("prompt", "model", "guidance_scale", "clip_guidance_scale", "colour", "colour_scale",
                             "colour_every", "num_inference_steps", "seed", "randomize_seed")]
    event = run.click(guidance_t2i_panels, inputs, [gallery, table, info], api_name="guidance_t2i_panels", **COMPUTE)
    event.success(show_used_seed, info, c["seed"], api_visibility="private", queue=False)
    form.record([event], gallery, info, lambda s: f"{s['prompt']} · seed {s['seed']}")
    stop.click(None, None, None, cancels=[event], api_visibility="private", queue=False)
    c["model"].input(model_defaults, c["model"], [c["guidance_scale"], c["num_inference_steps"]],
                     api_visibility="private", queue=False)
    if preset is not None:
        names = ("prompt", "model", "guidance_scale", "clip_guidance_scale", "colour", "colour_scale",
                 "colour_every", "num_inference_steps", "seed")
        show_on_arrival(guidance_t2i_panels, dict(zip(names, [i.value for i in inputs])), [gallery, table, info],
                        when=when)
    return form, c


def _negative_section(preset, when) -> Form:
    """The negative-prompt pair: controls with the two examples, gallery, JSON, history and link."""
    choices = text_to_image.model_choices()
    mini = NEGATIVE_EXAMPLES[0] if preset is not None and preset.name == MINI else None
    first = mini or [preset.name if preset else None, "a sneaker", "red",
                     txt2img.default_guidance(preset) if preset else 2.0, 25]
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            c = {"model": gr.Dropdown(choices, value=first[0], label="Model", elem_id="neg-model"),
                 "prompt": gr.Textbox(first[1], label="Prompt", elem_id="neg-prompt"),
                 "negative_prompt": gr.Textbox(first[2], label="Negative prompt", elem_id="neg-negative")}
            with gr.Row():
                c["guidance_scale"] = gr.Slider(0, 20, value=first[3], step=0.5, label="Guidance scale g",
                                          info="Above 1: the negative prompt acts through guidance.")
                c["num_inference_steps"] = gr.Slider(1, txt2img.MAX_STEPS, value=first[4], step=1, label="Steps")
            c["seed"] = gr.Number(value=FIRST["seed"], label="Seed", minimum=0, maximum=MAX_SEED, precision=0)
            with gr.Row():
                run = gr.Button("Compare", variant="primary", elem_id="neg-run", scale=3)
                stop = gr.Button("Stop", variant="stop", elem_id="neg-stop", scale=1)
            examples = [e for e in NEGATIVE_EXAMPLES if e[0] in choices]
            if examples:
                gr.Examples(examples, inputs=[c[k] for k in ("model", "prompt", "negative_prompt", "guidance_scale",
                                                            "num_inference_steps")],
                            label="The mini models' pair, and the book's (SD 1.5: needs the model hub)")
            form = Form("guidance_neg", c, run_id="neg-run",
                        follow=("model", model_defaults, [c["guidance_scale"], c["num_inference_steps"]]))
            form.add_link_button("neg")
        with gr.Column(scale=2):
            gallery = gr.Gallery(label="without · with the negative prompt", columns=2, height="auto", format="png",
                                 interactive=False, elem_id="neg-gallery", elem_classes=["pixelated"])
            info = gr.JSON(label="Run", elem_id="neg-info")
            form.add_history("neg-history")
    inputs = [c[k] for k in ("prompt", "negative_prompt", "model", "guidance_scale", "num_inference_steps", "seed")]
    event = run.click(negative_prompt_pair, inputs, [gallery, info], api_name="negative_prompt_pair", **COMPUTE)
    form.record([event], gallery, info, lambda s: f"{s['prompt']} − {s['negative_prompt']} · seed {s['seed']}")
    stop.click(None, None, None, cancels=[event], api_visibility="private", queue=False)
    c["model"].input(model_defaults, c["model"], [c["guidance_scale"], c["num_inference_steps"]],
                     api_visibility="private", queue=False)
    if preset is not None:
        names = ("prompt", "negative_prompt", "model", "guidance_scale", "num_inference_steps", "seed")
        show_on_arrival(negative_prompt_pair, dict(zip(names, [i.value for i in inputs])), [gallery, info], when=when)
    return form


def _sweep_section(preset, shared: dict) -> None:
    """The guidance sweep (moved from the Text-to-image tab, same API): the panels' model, prompt, steps and seed,
    its own scales, negative prompt, scheduler and size."""
    low, high = txt2img.size_limits(preset) if preset else (64, 1024)
    size = txt2img.start_size(preset) if preset else 512
    with gr.Row():
        scales = gr.Textbox(value="1, 2, 4, 12", label="Guidance scales (comma-separated)", scale=3,
                            elem_id="guide-sweep-scales")
        negative = gr.Textbox("", label="Negative prompt", scale=2)
        run = gr.Button("Run the sweep", scale=1, elem_id="guide-sweep")
        stop = gr.Button("Stop", variant="stop", scale=0, min_width=80, elem_id="guide-sweep-stop")
    with gr.Accordion("Scheduler and size", open=False):
        with gr.Row():
            scheduler = gr.Dropdown(SCHEDULER_NAMES, value=DEFAULT, label="Scheduler")
            width = gr.Slider(low, high, value=size, step=8, label="Width")
            height = gr.Slider(low, high, value=size, step=8, label="Height")
        with gr.Row(visible=bool(preset and preset.kind == "sdxl")) as sdxl_box:
            micro = [gr.Textbox("", label=f"{label} · SDXL", placeholder=hint)
                     for _, label, hint in text_to_image.SDXL_SIZE_BOXES]
    gallery = gr.Gallery(label="Guidance sweep", format="png", columns=4, height="auto", interactive=False,
                         elem_id="guide-sweep-gallery", elem_classes=["pixelated"])
    with gr.Row():
        preview = gr.Image(label="Live preview", interactive=False, height=192)
        info = gr.JSON(label="Sweep details", elem_id="guide-sweep-info")
    inputs = [shared["prompt"], negative, shared["model"], scales, shared["num_inference_steps"], scheduler,
              shared["seed"], shared["randomize_seed"], width, height, *micro]
    event = run.click(guidance_sweep, inputs, [gallery, info, preview], api_name="guidance_sweep", **COMPUTE)
    event.success(show_used_seed, info, shared["seed"], api_visibility="private", queue=False)
    stop.click(None, None, None, cancels=[event], api_visibility="private", queue=False)
    shared["model"].change(sweep_size, shared["model"], [width, height, sdxl_box], api_visibility="private",
                           queue=False)


def build_text_to_image(tab=None) -> list[Form]:
    """The text-to-image half of the Guidance tab; returns its forms (panels, negative prompts). Its examples
    (five runs of the text-to-image loop, CLIP guidance among them) are computed when ``tab`` is first selected,
    not on the page's load, so a fresh server's first visitor does not wait behind them in the queue."""
    preset = _first_preset()
    when = [tab.select] if tab is not None else None
    gr.Markdown(T2I_INTRO, elem_classes=["explain"])
    form, controls = _panels_section(preset, when)
    gr.Markdown(SWEEP_INTRO, elem_classes=["explain"])
    _sweep_section(preset, controls)
    gr.Markdown(NEGATIVE_INTRO, elem_classes=["explain"])
    return [form, _negative_section(preset, when)]
