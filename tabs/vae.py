"""Tab 3: the VAE compression viewer. An image goes into the VAE's 4-channel latent and back.

Shows what latent diffusion (Rombach et al. 2022) compresses away: input and
reconstruction side by side, the amplified difference, the 4 latent channels on
one colour scale, their histogram, the numbers (sizes, 48x compression, PSNR,
SSIM, timings), and what the UNet sees: the latent noised to a timestep, decoded.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from engine.errors import UserError
from engine.imports import lazy
from engine.presets import default_size, get_preset, presets_for
from engine.noise_schedule import SD_NOISE_SCHEDULE
from engine.vae_inputs import GAIN_RANGE, SIZES
from tabs.common import COMPUTE, model_job, seed_from_box, show_on_arrival, upload_path

# Imported on first use, after the page is served (engine.imports): the layout reads torch-free modules only.
loader = lazy("engine.loader")
figures = lazy("engine.figures")
images = lazy("engine.images")
vae_engine = lazy("engine.vae")

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"
EXAMPLES = [[str(EXAMPLES_DIR / name)]
            for name in ("colour_fashion_64.png", "small_item_64.png", "scene.png", "fashion_collage.png",
                         "test_pattern.png")]
EXAMPLE_LABELS = ["Fashion-MNIST in colour, 64 px (the mini VAE's data)", "A small item, 64 px",
                  "Geometric scene with text", "Fashion-MNIST collage", "High-frequency test pattern"]

INTRO = """### How much does the VAE keep?
Stable Diffusion does not denoise pixels. Its VAE encodes an image of 3 × H × W values into a latent of
**4 × H/8 × W/8** values, **48 times fewer**, the UNet denoises that latent, and the VAE decodes the result.
Upload an image (or pick an example) and see what survives the round trip. A *small item* blurs: its 26 pixels
span about three 8-pixel latent cells, and 4 numbers a cell cannot hold its seams and buttons. Latent diffusion
cannot draw what its VAE cannot keep (the book's exercise 3)."""

NO_OFFLINE_VAE = """**No offline VAE is installed.** The mini VAE (`assets/mini-sd/vae`) is missing from this copy.
The presets below come from the Hugging Face Hub: they download about 330 MB on first use and need internet
access (without it you get a short message instead). Operators can add a local VAE through `EXPLORER_MODELS`, e.g.
`[{"name": "My VAE", "kind": "vae", "path": "/models/my-vae"}]`, a folder saved with `AutoencoderKL.save_pretrained`."""

UNET_INTRO = """### What the UNet sees
During training, the latent is noised to a random timestep t with Stable Diffusion's schedule
(DDPM, 1000 steps, "scaled_linear" betas 0.00085 to 0.012): x_t = √ᾱ_t · latent + √(1 − ᾱ_t) · noise.
Left: that noisy latent, decoded. Right: the same noise level added to the pixels. The UNet works on
48× fewer values, and each one stands for an 8 × 8 patch."""


def vae_choices() -> list[str]:
    """VAE preset names: local folders first (they work offline), then hub VAEs, then hub pipelines' VAEs."""
    presets = sorted(presets_for("vae"), key=lambda p: (p.is_hub, p.is_hub and p.parent is not None))
    return [p.name for p in presets]


def size_for(name: str | None) -> int:
    """The size the VAE preset called ``name`` suggests; 512 for an unknown name."""
    try:
        return default_size(get_preset(name, "vae"), allowed=SIZES)
    except UserError:
        return 512


def size_for_vae(name: str):
    """When the VAE changes: its suggested size."""
    return gr.update(value=size_for(name))


def _has_offline_vae() -> bool:
    return any(not p.is_hub and Path(p.path, p.subfolder or "").is_dir() for p in presets_for("vae"))


def summary_markdown(numbers: dict) -> str:
    c, h, w = numbers["latent_shape"]
    psnr = "∞ (identical)" if numbers["psnr"] is None else f"{numbers['psnr']:.2f} dB"
    lines = [
        f"**{numbers['input_values']:,}** input values (3 × {numbers['input_shape'][1]} × {numbers['input_shape'][2]}) → "
        f"**{numbers['latent_values']:,}** latent values ({c} × {h} × {w}): **{numbers['compression_ratio']:g}× fewer**.",
        f"PSNR **{psnr}**, SSIM **{numbers['ssim']:.4f}** · encode {numbers['encode_seconds']:.2f} s, "
        f"decode {numbers['decode_seconds']:.2f} s on {numbers['device']} ({numbers['dtype']}).",
    ]
    lines += [f"ℹ️ {note}" for note in numbers["notes"]]
    return "\n\n".join(lines)


@model_job
def vae_roundtrip(image, vae: str, size: int, fit: str = "crop", sample: bool = False, seed: int = 0,
                  gain: float = 4.0):
    """Event handler (API ``/vae_roundtrip``): upload -> preprocess -> encode -> decode -> pictures and numbers.

    Returns (reconstruction, channel images, numbers, preprocessed input, difference heatmap,
    colour bar, histogram, summary, state for the noise view).
    """
    size, fit, seed, gain = vae_engine.check_inputs(size, fit, seed_from_box(seed), gain)
    opened, notes = images.open_image(upload_path(image))
    if not vae:
        raise UserError("Choose a VAE first.")
    model = loader.load(vae, "vae")
    result = vae_engine.roundtrip(opened, model, size=size, fit=fit, sample=bool(sample), seed=seed)
    numbers = {"vae": vae, **result.numbers, "notes": notes + result.numbers["notes"]}
    state = {"vae": vae, "latent": result.latent, "image": result.image}
    return (
        result.reconstruction,
        vae_engine.channel_images(result.latent),
        numbers,
        result.image,
        figures.difference_heatmap(result.image, result.reconstruction, gain),
        figures.colorbar(figures.latent_range(result.latent)),
        figures.histogram_image(result.latent),
        summary_markdown(numbers),
        state,
    )


@model_job
def what_the_unet_sees(state: dict | None, timestep: int, seed: int = 0):
    """Event handler: noise the last round trip's latent to ``timestep`` and decode it."""
    if not state:
        raise UserError("Run the round trip first: the noise is added to its latent.")
    model = loader.load(state["vae"], "vae")
    return vae_engine.unet_view(state["latent"], state["image"], model, timestep, seed_from_box(seed))


def _output_image(label: str, height: int | None = None, elem_id: str | None = None) -> gr.Image:
    # PNG, not gradio's default WebP: lossless, so PSNR/SSIM can be checked from the downloads.
    return gr.Image(label=label, format="png", interactive=False, buttons=["download", "fullscreen"],
                    height=height, elem_id=elem_id, elem_classes=["pixelated"])


def build() -> None:
    gr.Markdown(INTRO, elem_classes=["explain"])
    choices = vae_choices()
    if not _has_offline_vae():
        gr.Markdown(NO_OFFLINE_VAE)
    with gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(value=EXAMPLES[0][0], label="Image", type="filepath", image_mode=None, sources=["upload", "clipboard"], elem_id="vae-input",
                             height=320, elem_classes=["pixelated"])
            gr.Examples(EXAMPLES, inputs=[image], example_labels=EXAMPLE_LABELS, label="Examples (made for this app)")
        with gr.Column(scale=1):
            vae = gr.Dropdown(choices, value=choices[0] if choices else None, label="VAE",
                              info="Local models first; hub ones download on first use.")
            size = gr.Radio(list(SIZES), value=size_for(choices[0] if choices else None),
                            label="Size (short side, pixels)",
                            info="Choosing a VAE picks the size it was trained at (64 for the mini VAE).")
            fit = gr.Radio([("Centre-crop to a multiple of 8", "crop"), ("Keep the aspect ratio, pad with white", "pad")],
                           value="crop", label="Fit")
            with gr.Accordion("More settings", open=False):
                sample = gr.Checkbox(False, label="Sample the latent from the posterior (instead of its mean)")
                seed = gr.Number(0, precision=0, minimum=0, maximum=2**32 - 1, label="Seed (posterior sample and noise)")
                gain = gr.Slider(*GAIN_RANGE, value=4, step=1, label="Difference amplification (×)")
            run = gr.Button("Encode and decode", variant="primary")
    summary = gr.Markdown()
    with gr.Row():
        shown_input = _output_image("Input (preprocessed)")
        reconstruction = _output_image("Reconstruction")
        heatmap = _output_image("|input − reconstruction|, amplified (black = identical)")
    gr.Markdown("### The latent: 4 channels on one colour scale\nBlue is negative, white zero, red positive. "
                "Each square is one latent value, standing for 8 × 8 pixels.")
    channels = gr.Gallery(label="Latent channels", columns=4, format="png", object_fit="contain", height=300,
                          buttons=["download", "download_all", "fullscreen"], interactive=False, elem_id="vae-channels")
    with gr.Row():
        legend = _output_image("Shared colour scale", height=110)
        histogram = _output_image("Histogram of latent values (after scaling)")
    numbers = gr.JSON(label="Numbers (the /vae_roundtrip API returns this)", height=360, elem_id="vae-numbers")

    gr.Markdown(UNET_INTRO, elem_classes=["explain"])
    timestep = gr.Slider(0, SD_NOISE_SCHEDULE["num_train_timesteps"] - 1, value=250, step=1, label="Timestep t")
    with gr.Row():
        noisy_latent = _output_image("Noisy latent, decoded", elem_id="vae-noisy-latent")
        noisy_pixels = _output_image("Same noise level in pixel space", elem_id="vae-noisy-pixels")
    noise_numbers = gr.JSON(label="Noise schedule at t", elem_id="vae-noise-numbers")
    state = gr.State(None)
    vae.change(size_for_vae, vae, size, api_visibility="private", queue=False)

    outputs = [reconstruction, channels, numbers, shown_input, heatmap, legend, histogram, summary, state]
    # COMPUTE has preprocess=False: gradio would open the upload with PIL before our guard; open_image checks it.
    event = run.click(vae_roundtrip, inputs=[image, vae, size, fit, sample, seed, gain], outputs=outputs,
                      api_name="vae_roundtrip", **COMPUTE)
    if choices:
        show_on_arrival(vae_roundtrip, {"image": EXAMPLES[0][0], "vae": choices[0], "size": size.value}, outputs)
    noise_inputs, noise_outputs = [state, timestep, seed], [noisy_latent, noisy_pixels, noise_numbers]
    event.success(what_the_unet_sees, inputs=noise_inputs, outputs=noise_outputs, api_visibility="private", **COMPUTE)
    # change, not release: release misses keyboard use; always_last keeps a drag to at most two decodes.
    timestep.change(what_the_unet_sees, inputs=noise_inputs, outputs=noise_outputs, api_visibility="private",
                    trigger_mode="always_last", show_progress="minimal", **COMPUTE)
