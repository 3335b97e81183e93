"""Tab 1: class-conditional diffusion on Fashion-MNIST, a diffusion model at work.

A small UNet trained here turns noise into 32×32 clothes of a chosen class.
The tab shows the samples, the denoising trajectory (x_t and the model's
predicted x_0, streamed while it runs), what classifier-free guidance changes
(checked by the judge classifier), and the forward process the model was
trained to undo, with its noise schedule ᾱ_t.
"""

from __future__ import annotations

import functools
import time

import gradio as gr
import numpy as np
import pandas as pd
from PIL import Image

from engine.device import layout_device
from engine.errors import UserError, one_of
from engine.fashion import configs
from engine.fashion.data import CLASS_NAMES, example_image, example_images, to_unit_range
from engine.imports import lazy
from engine.presets import get_preset, presets_for
from tabs.common import (COMPUTE, model_job, seed_from_box, show_on_arrival, show_used_seed, shows_live_pictures,
                         user_errors)
from tabs.settings import Form

# Imported on first use, after the page is served (engine.imports): the layout below reads configs only.
torch = lazy("torch")
loader = lazy("engine.loader")
sampling = lazy("engine.fashion.sampling")
judge = lazy("engine.fashion.judge")
figures = lazy("engine.figures")

SCALE = 4  # 32x32 samples are shown at 128x128 (nearest neighbour)
TRAJECTORY_SCALE = 3  # and the trajectory's pictures at 96x96
GUIDANCE_COMPARE = (1.0, 2.0, 4.0)
FORWARD_SOURCES = ("Test image", "First generated sample")
STOP_SECONDS = 0.5  # a long run yields at least this often, so Stop cancels it within about this long
# The controls' starting values: the result of these settings is on the page when a visitor arrives.
FIRST = dict(label="Sandal", count=16, sampler="DPM-Solver++",
             num_inference_steps=configs.SAMPLER_STEPS["DPM-Solver++"][2], guidance_scale=2.0, seed=42)

INTRO = """### A diffusion model at work
The book's first step towards Stable Diffusion: a UNet that predicts the noise in a 32×32 image, **given a class
label**. Start from pure noise x_T, ask the model for the noise, remove a bit of it, repeat. The sampler decides
how big each step is: **DDPM** is the book's 1000-step loop (Ho et al. 2020), **DDIM** (Song et al. 2021) and
**DPM-Solver++** (Lu et al. 2022) reach the same kind of images in 10 to 50 steps.
**Guidance scale** 1 means the plain class-conditional model; above 1, classifier-free guidance pushes the
prediction away from the unconditional one (ε = ε_uncond + g · (ε_cond − ε_uncond), Ho & Salimans 2022)."""

FORWARD_INTRO = """### The forward process: what the model learned to undo
Training takes a real image x_0 and a random timestep t, and adds noise in one go:
**x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε**. The model learns to predict ε from x_t, t and the class.
By t = 999 almost nothing of the image is left (√ᾱ_999 ≈ 0.006)."""


# --------------------------------------------------------------------------------------------
# Models


def unet_choices() -> list[str]:
    return [p.name for p in presets_for("class-unet")]


def default_unet() -> str | None:
    """The class-unet preset suiting this device (preset option "device": "cpu" or "cuda")."""
    return configs.default_unet_preset(layout_device(), [(p.name, p.options) for p in presets_for("class-unet")])


def _unet_and_schedule(model: str | None):
    name = model or default_unet()
    if not name:
        raise UserError("No class-conditional model is installed (assets/presets.json has no 'class-unet' preset).")
    preset = get_preset(name, "class-unet")
    unet = loader.load(preset)
    return unet, sampling.scheduler_config_of(None if preset.is_hub else preset.source)


def _judge():
    """The shipped judge classifier, or None when no 'classifier' preset is installed."""
    presets = presets_for("classifier")
    return loader.load(presets[0]) if presets else None


def noisy_classifier():
    """The shipped noise-aware classifier (classifier guidance), or None when no 'noisy-classifier' preset is
    installed."""
    presets = presets_for("noisy-classifier")
    return loader.load(presets[0]) if presets else None


# --------------------------------------------------------------------------------------------
# Pictures


def _gallery(images01: torch.Tensor, captions: list[str] | None = None) -> list:
    pils = sampling.to_pil(images01, scale=SCALE)
    if captions is None:
        return pils
    return list(zip(pils, captions))


def samples_picture(images01: torch.Tensor) -> Image.Image:
    """The samples (N, 1, 32, 32) in [0, 1] as one grid picture, 8 to a row, each shown at 128 px."""
    return figures.image_grid(images01, min(8, len(images01)), scale=SCALE, gap=4)


def trajectory_column(step) -> tuple[str, torch.Tensor]:
    """One column of the trajectory picture: its label and the first sample's x_t above its predicted x_0,
    (2, 1, 32, 32) in [0, 1]. ``step`` is an ``engine.diffusion.StepState``."""
    pair = torch.cat([to_unit_range(step.latents[:1].float()), to_unit_range(step.pred_original[:1].float())])
    return f"t={step.timestep}", pair


def trajectory_picture(columns: list[tuple[str, torch.Tensor]]) -> Image.Image:
    """The denoising trajectory of the first sample as one picture: a column per kept step, x_t on the top
    row and the model's predicted x_0 below it, labelled with the timestep."""
    labels = [label for label, _ in columns]
    rows = torch.cat([torch.cat([pair[0:1] for _, pair in columns]), torch.cat([pair[1:2] for _, pair in columns])])
    return figures.image_grid(rows, len(columns), scale=TRAJECTORY_SCALE, gap=2, column_labels=labels)


# --------------------------------------------------------------------------------------------
# Events


@model_job
def sample_fashion(label, count, sampler, num_inference_steps, guidance_scale, seed,
                   randomize_seed=False, model=None, classifier_scale=0.0, caller: gr.Request = None,
                   progress=gr.Progress()):
    """Event handler (API ``/sample_fashion``): generate ``count`` images of class ``label``.

    A generator: on the page, while it runs, it streams the trajectory picture (x_t
    and predicted x_0 of the first sample at ~8 steps; API callers get progress only,
    see ``shows_live_pictures``); its last output is (the samples as one grid
    picture, the trajectory picture, info JSON, the samples for the forward-process
    view). One picture each, not a gallery of 16 and of 18: each file is a PNG, a
    cache file and a download (issue 11). ``classifier_scale`` > 0 adds classifier
    guidance (Dhariwal & Nichol 2021) with the shipped noise-aware classifier.
    """
    seed = seed_from_box(seed, randomize_seed)
    request = sampling.validate_request(label, count, sampler, num_inference_steps, guidance_scale, seed,
                                        classifier_scale)
    progress(0, desc="Loading the model")
    unet, schedule = _unet_and_schedule(model)
    classifier = noisy_classifier() if request.classifier_scale > 0 else None
    keep = set(sampling.trajectory_indices(request.num_inference_steps))
    live = shows_live_pictures(caller)
    columns = []
    result, last_yield = None, time.monotonic()
    for state in sampling.sample(unet, request.label, request.count, request.sampler, request.num_inference_steps,
                                request.guidance_scale, request.seed, scheduler_config=schedule,
                                classifier_scale=request.classifier_scale, classifier=classifier):
        if isinstance(state, sampling.SampleResult):
            result = state
            break
        progress((state.index + 1, state.num_steps), desc=f"{request.sampler}: denoising", unit="steps")
        if state.index in keep and state.index != state.num_steps - 1:
            columns.append(trajectory_column(state))
            if live:  # the trajectory grows on the page, one picture per kept step
                yield gr.skip(), trajectory_picture(columns), gr.skip(), gr.skip()
                last_yield = time.monotonic()
        elif time.monotonic() - last_yield > STOP_SECONDS:
            # nothing to show, but a Stop (which takes effect at a yield) must not wait for the next kept step
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
            last_yield = time.monotonic()
    # The last column: the final image (x_0) itself.
    columns.append(("final", torch.cat([result.images[:1], result.images[:1]])))
    info = {**result.info, "model": model or default_unet()}
    yield samples_picture(result.images), trajectory_picture(columns), info, result.images[:8].numpy()


def steps_for_sampler(sampler: str):
    low, high, default = configs.SAMPLER_STEPS.get(sampler, configs.SAMPLER_STEPS["DPM-Solver++"])
    return gr.update(minimum=low, maximum=high, value=default, step=1)


@model_job
def compare_guidance(label, sampler, num_inference_steps, seed, model=None, progress=gr.Progress()):
    """Event handler (API ``/compare_guidance_fashion``): 8 samples at guidance 1, 2 and 4, same seed.

    Returns a gallery (one row per scale) and a Markdown table of the judge's verdicts.
    """
    rows, lines = [], ["| guidance scale | judged as the class asked | wall time |", "|---|---|---|"]
    unet, schedule = _unet_and_schedule(model)
    classifier = _judge()
    for k, g in enumerate(GUIDANCE_COMPARE):
        progress((k, len(GUIDANCE_COMPARE)), desc=f"guidance {g:g}")
        result = sampling.sample_to_end(unet, label, 8, sampler, num_inference_steps, g, seed,
                                        scheduler_config=schedule)
        rows += _gallery(result.images, [f"g={g:g}"] * 8)
        verdict = "no judge installed"
        if classifier is not None:
            preds, _ = judge.judge_images(classifier, result.images)
            hits = int((preds == result.request.label).sum())
            verdict = f"{hits}/8"
        lines.append(f"| {g:g}{' (no guidance)' if g <= 1 else ''} | {verdict} | {result.seconds:.2f} s |")
    return rows, "\n".join(lines)


@user_errors
def forward_view(source: str, example: int, generated, seed: int = 0):
    """Event handler (API ``/forward_fashion``): one image noised to t = 0, 50, ..., 999 (cheap, no model)."""
    if one_of(source, "source", FORWARD_SOURCES) == "First generated sample":
        if generated is None or len(generated) == 0:
            raise UserError("Generate some samples first, or pick a test image.")
        x0 = torch.as_tensor(np.asarray(generated[0]), dtype=torch.float32) * 2 - 1
        title = "your first generated sample"
    else:
        x0, label = example_image(example)
        title = f"test image {int(float(example))} ({CLASS_NAMES[label]})"
    noisy = sampling.forward_process(x0, configs.FORWARD_TIMESTEPS, seed=seed)
    schedule = sampling.alpha_bar_schedule()
    captions = [f"t={t} · √ᾱ={schedule['signal'][t]:.3f}" for t in configs.FORWARD_TIMESTEPS]
    return _gallery(to_unit_range(noisy), captions), f"Forward process of {title}."


def schedule_frame(every: int = 5) -> pd.DataFrame:
    """ᾱ_t, the signal level √ᾱ_t and the noise level √(1−ᾱ_t) against t, long format for gr.LinePlot."""
    s = sampling.alpha_bar_schedule()
    t = s["t"][::every].tolist() + [int(s["t"][-1])]
    frames = []
    for key, series in (("alpha_bar", "ᾱ_t"), ("signal", "signal √ᾱ_t"), ("noise", "noise √(1−ᾱ_t)")):
        values = s[key][::every].tolist() + [float(s[key][-1])]
        frames.append(pd.DataFrame({"t": t, "value": values, "series": series}))
    return pd.concat(frames, ignore_index=True)


@functools.cache
def forward_on_arrival() -> tuple[list, str, pd.DataFrame]:
    """The forward process of the last test image and the noise schedule, for every visitor's first view.
    Filled once the page is open (torch and diffusers load after it is served), computed once per process."""
    gallery, caption = forward_view("Test image", len(example_images()[1]) - 1, None)
    return gallery, caption, schedule_frame()


# --------------------------------------------------------------------------------------------
# Layout


def build() -> Form:
    """The tab's layout and events; returns its form (the named controls that history and links fill)."""
    gr.Markdown(INTRO, elem_classes=["explain"])
    choices = unet_choices()
    generated = gr.State(None)  # the first samples of this user's last run, (N, 1, 32, 32) in [0, 1]
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            label = gr.Dropdown(list(CLASS_NAMES), value=FIRST["label"], label="Class", allow_custom_value=True,
                                info="A class name, or its index 0-9 (API).", elem_id="fashion-class")
            count = gr.Slider(1, configs.MAX_COUNT, value=FIRST["count"], step=1, label="Number of images",
                              elem_id="fashion-count")
            sampler = gr.Radio(list(configs.SAMPLERS), value=FIRST["sampler"], label="Sampler",
                               info="DDPM: the book's 1000-step loop. DDIM, DPM-Solver++: fewer steps.")
            # The full range here (the API accepts any sampler's steps); choosing a sampler narrows it.
            steps = gr.Slider(2, 1000, value=FIRST["num_inference_steps"], step=1,
                              label="Steps (num_inference_steps)", elem_id="fashion-steps",
                              info="DDPM 10-1000, DDIM 2-500, DPM-Solver++ 2-100.")
            guidance = gr.Slider(0, configs.MAX_GUIDANCE, value=FIRST["guidance_scale"], step=0.5,
                                 label="Guidance scale",
                                 info="1 = no guidance (one model call per step); above 1, two calls per step.")
            classifier_scale = gr.Slider(0, configs.MAX_CLASSIFIER_SCALE, value=0, step=0.5,
                                         label="Classifier guidance scale (s)", elem_id="fashion-classifier-scale",
                                         info="0 = off. Above 0, a noise-aware classifier steers each step "
                                              "(Dhariwal & Nichol 2021); see the Guidance tab.")
            with gr.Row():
                seed = gr.Number(value=FIRST["seed"], label="Seed", info="A whole number from 0 to 4294967295.")
                randomize = gr.Checkbox(value=False, label="Randomize seed")
            model = gr.Dropdown(choices, value=default_unet(), label="Model",
                                info="Defaults to the model that suits this device.")
            with gr.Row():
                run = gr.Button("Generate", variant="primary", elem_id="fashion-generate", scale=3)
                stop = gr.Button("Stop", variant="stop", elem_id="fashion-stop", scale=1)
            form = Form("class", dict(sampler=sampler, num_inference_steps=steps, count=count, guidance_scale=guidance,
                                      seed=seed, randomize_seed=randomize, model=model,
                                      classifier_scale=classifier_scale, **{"class": label}),
                        run_id="fashion-generate", follow=("sampler", steps_for_sampler, [steps]))
            form.add_link_button("fashion")
        with gr.Column(scale=2):
            samples = gr.Image(label="Samples (8 to a row)", format="png", type="filepath", interactive=False,
                               elem_id="fashion-samples")
            # a short label: gradio lays it over the picture's top left corner
            trajectory = gr.Image(label="Trajectory of the first sample: x_t (top), predicted x₀ (bottom)",
                                  format="png", interactive=False, elem_id="fashion-trajectory")
            info = gr.JSON(label="Run", elem_id="fashion-info")
            form.add_history("fashion-history")

    inputs = [label, count, sampler, steps, guidance, seed, randomize, model, classifier_scale]
    event = run.click(sample_fashion, inputs, [samples, trajectory, info, generated], api_name="sample_fashion",
                      **COMPUTE)
    event.success(show_used_seed, info, seed, api_visibility="private", queue=False)
    form.record([event], samples, info, lambda s: f"{s['class']} · seed {s['seed']}")
    stop.click(None, None, None, cancels=[event], api_visibility="private", queue=False)
    show_on_arrival(sample_fashion, dict(FIRST, model=default_unet()), [samples, trajectory, info, generated])
    # .input (the user's choice), not .change: a sampler restored from the history or a link comes with its steps.
    sampler.input(steps_for_sampler, sampler, steps, api_visibility="private", queue=False)
    gr.Examples(
        examples=[[FIRST[k] for k in ("label", "count", "sampler", "num_inference_steps", "guidance_scale", "seed")],
                  ["Trouser", 16, "DDIM", 50, 2.0, 7],
                  ["Bag", 8, "DPM-Solver++", 10, 3.0, 1234]],
        inputs=[label, count, sampler, steps, guidance, seed],
        label="Examples",
    )

    _compare_section(label, sampler, steps, seed, model)
    _forward_section(generated)
    return form


def _compare_section(label, sampler, steps, seed, model) -> None:
    """The "What guidance changes" accordion: one seed at guidance 1, 2 and 4 (API ``/compare_guidance_fashion``)."""
    with gr.Accordion("What guidance changes", open=False):
        gr.Markdown("Same seed, same noise: 8 samples at guidance 1 (no guidance), 2 and 4. "
                    "The judge (a small classifier trained on Fashion-MNIST) says how many look like the class asked.")
        compare = gr.Button("Compare guidance 1 / 2 / 4")
        compare_gallery = gr.Gallery(label="One row per guidance scale", columns=8, height="auto", format="png")
        compare_table = gr.Markdown()
        compare.click(compare_guidance, [label, sampler, steps, seed, model], [compare_gallery, compare_table],
                      api_name="compare_guidance_fashion", **COMPUTE)


def _forward_section(generated: gr.State) -> None:
    """The forward process: x_t of a test image or of the last samples (``generated``), and the noise schedule."""
    gr.Markdown(FORWARD_INTRO)
    images, labels = example_images()
    example_choices = [(f"{CLASS_NAMES[int(y)]} ({i})", i) for i, y in enumerate(labels)]
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            source = gr.Radio(list(FORWARD_SOURCES), value=FORWARD_SOURCES[0], label="Image")
            example = gr.Dropdown(example_choices, value=len(labels) - 1, label="Test image")
            noise_seed = gr.Number(value=0, precision=0, label="Noise seed")
            show = gr.Button("Add noise")
        with gr.Column(scale=2):
            forward = gr.Gallery(label="x_t at t = 0, 50, 100, 200, 400, 600, 800, 999", columns=8,
                                 height="auto", object_fit="contain", format="png")
            forward_caption = gr.Markdown()
    # No model: numpy on 8 small pictures, outside the queue. preprocess=False, as the compute events: the
    # engine checks every value, with messages that name the input (gradio's would not).
    show.click(forward_view, [source, example, generated, noise_seed], [forward, forward_caption],
               api_name="forward_fashion", queue=False, preprocess=False)
    plot = gr.LinePlot(x="t", y="value", color="series", title="Noise schedule (DDPM, linear betas 1e-4 to 0.02)",
                       x_title="timestep t", y_title="level", height=300)
    gr.on(None, forward_on_arrival, None, [forward, forward_caption, plot], api_visibility="private", queue=False,
          show_progress="hidden")
