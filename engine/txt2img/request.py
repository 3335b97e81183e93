"""One text-to-image request: every user input checked once, into one frozen ``Request``.

``make_request(preset, **inputs)`` is the only place the inputs are checked
and their defaults typed. The tab calls it before it loads a model (so a bad
input fails fast, and outside a ZeroGPU worker), and ``text_to_image`` calls it
again on the same plain values. It mirrors the checks of diffusers'
``StableDiffusionPipeline.check_inputs``, with messages written for the user
(``UserError``): each names the bad value and what to do.

Sizes are in pixels, (width, height) in the UI; SDXL's micro-conditioning
pairs are kept as diffusers takes them: (height, width) and (top, left). Typed
as text they read across then down, "W,H" and "x,y" (``parse_pair``); a tuple
is diffusers' own argument, (height, width) and (top, left), taken as it is.

The module imports no torch at its top: the tabs lay out their controls from
its limits at start-up, before the page is served (``engine.imports``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine import prompt_weights
from engine.tokenizer import MAX_PROMPT_CHARS
from engine.errors import UserError, check_seed, number_in_range, whole_number, whole_number_in_range
from engine.presets import default_size, presets_for
from engine.schedulers import DEFAULT, SCHEDULER_NAMES

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

MAX_STEPS = 150
MAX_IMAGES = 4
TXT2IMG_MAX_GUIDANCE = 50.0
TXT2IMG_DEFAULT_GUIDANCE = 7.5
DEFAULT_STEPS = 30
DEFAULT_SIZE_LIMITS = {"sd": (64, 1024), "sdxl": (64, 2048)}
SWEEP_DEFAULT = (1.0, 2.0, 4.0, 12.0)
MAX_COLOUR_SCALE = 1000.0
MAX_CLIP_GUIDANCE = 1000.0
DEFAULT_DENOISING_END = 0.8  # SDXL's refiner takes over for the last 20% of the noise (Podell et al. 2023, §2.5)
DENOISING_END_UI = (0.6, 0.95)  # the tab's slider; the engine takes any fraction strictly between 0 and 1
NO_REFINER = "none"
MICRO_CONDITIONS = ("original_size", "crops_coords_top_left", "target_size", "negative_original_size",
                    "negative_crops_coords_top_left", "negative_target_size")


@dataclass(frozen=True)
class ColourGuidance:
    """Colour guidance (the book's exercise 9): pull the decoded x0 towards ``target_rgb`` [3] in [0, 1],
    with loss weight ``scale``, every ``every`` steps."""

    target_rgb: torch.Tensor
    scale: float
    every: int


@dataclass(frozen=True)
class Request:
    """A checked request. ``guidance_scales`` holds one scale per run of the loop: ``(guidance_scale,)``,
    or the guidance sweep. ``micro_conditioning`` (SDXL only) maps each name of ``MICRO_CONDITIONS`` to a
    pair in diffusers' order or None; ``image`` and ``strength`` make it img2img. Live previews come every
    ``preview_every`` steps (0: none), and at least ``preview_seconds`` of wall-clock time apart (0: no pacing),
    always including the last step. ``clip_guidance_scale`` > 0 turns on CLIP guidance (0: off). ``refiner``
    (an ``sdxl-refiner`` preset's name, or None) takes over at ``denoising_end`` (a fraction of the schedule, in
    (0, 1)), with the aesthetic scores of its time ids (``engine.txt2img.refiner``)."""

    prompt: str
    negative_prompt: str
    guidance_scale: float
    num_inference_steps: int
    width: int
    height: int
    num_images: int
    seed: int
    scheduler: str = DEFAULT
    guidance_scales: tuple[float, ...] = ()
    micro_conditioning: dict | None = None
    image: object | None = None
    strength: float | None = None
    colour: ColourGuidance | None = None
    preview_every: int = 1
    preview_seconds: float = 0.0
    clip_guidance_scale: float = 0.0
    refiner: str | None = None
    denoising_end: float = DEFAULT_DENOISING_END
    aesthetic_score: float = 6.0
    negative_aesthetic_score: float = 2.5


# ----------------------------------------------------------------------------
# What a preset allows, and its defaults


def size_limits(preset) -> tuple[int, int]:
    """(min, max) side in pixels: the preset's ``min_size``/``max_size``, else 64 and 1024 (2048 for SDXL)."""
    low, high = DEFAULT_SIZE_LIMITS.get(preset.kind, (64, 1024))
    return int(preset.options.get("min_size", low)), int(preset.options.get("max_size", high))


def max_steps(preset) -> int:
    return int(preset.options.get("max_steps", MAX_STEPS))


def guidance_allowed(preset) -> bool:
    """False for presets distilled to sample without guidance (SDXL Turbo)."""
    return preset.options.get("guidance", True) is not False


def default_steps(preset) -> int:
    return int(preset.options.get("default_steps", DEFAULT_STEPS))


def default_guidance(preset) -> float:
    """The preset's ``default_guidance`` (the scale its quality figures were measured at), else 7.5; 0 without guidance."""
    if not guidance_allowed(preset):
        return 0.0
    return float(preset.options.get("default_guidance", TXT2IMG_DEFAULT_GUIDANCE))


def start_size(preset) -> int:
    """The side the tab starts with: the preset's ``default_size`` within its ``size_limits``."""
    low, high = size_limits(preset)
    return min(max(default_size(preset), low), high)


def pipeline_presets() -> list:
    """The SD and SDXL presets, local folders first (they work offline), then hub ones, in file order."""
    presets = presets_for("sd") + presets_for("sdxl")
    return [p for p in presets if not p.is_hub] + [p for p in presets if p.is_hub]


def get_pipeline_preset(name: str):
    """The SD or SDXL preset called ``name``; ``UserError`` listing the choices otherwise."""
    presets = pipeline_presets()
    for p in presets:
        if p.name == name:
            return p
    choices = ", ".join(repr(p.name) for p in presets) or "none"
    raise UserError(f"Unknown model {name!r}. Choose one of: {choices}.")


def refiner_presets(preset) -> list:
    """The ``sdxl-refiner`` presets paired with this pipeline preset (their ``base`` names it)."""
    return [p for p in presets_for("sdxl-refiner") if p.options.get("base") == preset.name]


def refiner_choices(preset) -> list[str]:
    """The tab's refiner choices for a model: "none", then the refiners paired with it."""
    return [NO_REFINER] + [p.name for p in refiner_presets(preset)]


def refiner_names() -> list[str]:
    """Every refiner choice of any model: "none", then each ``sdxl-refiner`` preset (``/generate``'s input)."""
    return [NO_REFINER] + [p.name for p in presets_for("sdxl-refiner")]


def get_refiner_preset(preset, name: str):
    """The refiner called ``name`` paired with ``preset``; ``UserError`` listing the choices otherwise."""
    for p in refiner_presets(preset):
        if p.name == name:
            return p
    choices = ", ".join(repr(n) for n in refiner_choices(preset))
    raise UserError(f"Unknown refiner {name!r} for '{preset.name}'. Choose one of: {choices}.")


# ----------------------------------------------------------------------------
# The checks


def check_guidance(preset, guidance_scale) -> float:
    """A guidance scale as a float: finite, from 0 to 50, and at most 1 for presets without guidance."""
    guidance = number_in_range(guidance_scale, "guidance_scale", 0, TXT2IMG_MAX_GUIDANCE, " (7.5 is typical)")
    if guidance > 1 and not guidance_allowed(preset):
        note = preset.options.get("guidance_note", "this model samples without guidance")
        raise UserError(f"'{preset.name}' takes no guidance: {note} Set guidance_scale to 0.")
    return guidance


def check_side(preset, value, name: str) -> int:
    """A width or height: a whole multiple of 8 within the preset's ``size_limits``."""
    low, high = size_limits(preset)
    value = whole_number(value, name, f" of pixels from {low} to {high}")
    if value % 8:
        raise UserError(f"{name} must be a multiple of 8 (the VAE downsamples by 8), got {value}; "
                        f"try {max(8, value // 8 * 8)} or {value // 8 * 8 + 8}.")
    if not low <= value <= high:
        raise UserError(f"{name} {value} is outside {low}-{high} pixels, the range of '{preset.name}'.")
    return value


def check_text(value, name: str) -> str:
    """A prompt's text ("" for None): text, and at most ``MAX_PROMPT_CHARS`` characters (the tokenizer
    inspector's limit; only the first 75 tokens reach the model, ``encode_prompt`` warns past them)."""
    if value is not None and not isinstance(value, str):
        raise UserError(f"{name} must be text, got {type(value).__name__}.")
    if value is not None and len(value) > MAX_PROMPT_CHARS:
        raise UserError(f"{name} has {len(value):,} characters; the limit is {MAX_PROMPT_CHARS:,}. Only the first "
                        f"75 tokens or so reach the model: shorten it.")
    return value or ""


def check_steps(preset, num_inference_steps) -> int:
    return whole_number_in_range(num_inference_steps, "num_inference_steps", 1, max_steps(preset),
                                 f" for '{preset.name}'")


def check_num_images(num_images) -> int:
    return whole_number_in_range(num_images, "num_images", 1, MAX_IMAGES)


def check_strength(strength) -> float:
    return number_in_range(strength, "strength", 0, 1, hint=" (0 keeps the image, 1 ignores it)")


def check_sweep(preset, guidance_scales) -> tuple[float, ...]:
    """The guidance sweep's list: 1 to 8 valid guidance scales ("1, 2, 4" or a list)."""
    if isinstance(guidance_scales, str):
        guidance_scales = [p for p in guidance_scales.replace(";", ",").split(",") if p.strip()]
    values = []
    for g in guidance_scales:
        try:
            values.append(float(g))
        except (TypeError, ValueError):
            raise UserError(f"The guidance list must be numbers separated by commas, like 1, 2, 4, 12; "
                            f"got {g!r}.") from None
    if not 1 <= len(values) <= prompt_weights.MAX_SWEEP:
        raise UserError(f"Give between 1 and {prompt_weights.MAX_SWEEP} guidance scales, got {len(values)}.")
    return tuple(check_guidance(preset, g) for g in values)


def check_scheduler(name) -> str:
    if name not in SCHEDULER_NAMES:
        raise UserError(f"Unknown scheduler {name!r}. Choose one of: {', '.join(SCHEDULER_NAMES)}.")
    return name


def parse_pair(value, name: str, default: tuple[int, int] | None, *, lowest: int = 1) -> tuple[int, int] | None:
    """One of SDXL's pairs in diffusers' order, (height, width) for a size and (top, left) for a crop.

    Text reads across then down, as the UI's boxes, links and history write it: "W,H" or "WxH" for a
    size, "x,y" for a crop; it is turned round here. A tuple or list is diffusers' own argument, already
    (height, width) or (top, left), and is kept as it is. One number n is (n, n); empty -> ``default``.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        parts = [value, value]
    elif isinstance(value, str):  # "W,H" -> (H, W), "x,y" -> (y, x)
        parts = value.replace("x", ",").replace("X", ",").replace(";", ",").split(",")[::-1]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise UserError(f"{name} must be two numbers like \"1024,1024\", got {value!r}.")
    if len(parts) != 2:
        raise UserError(f"{name} must be two numbers like \"1024,1024\", got {value!r}.")
    try:
        pair = tuple(whole_number(str(p).strip(), name) for p in parts)
    except UserError:
        raise UserError(f"{name} must be two whole numbers like \"1024,1024\", got {value!r}.") from None
    if min(pair) < lowest or max(pair) > 16384:
        raise UserError(f"{name} values must be between {lowest} and 16384, got {value!r}.")
    return pair


def check_micro_conditioning(width: int, height: int, inputs: dict) -> dict:
    """SDXL's size and crop conditions, in diffusers' order: ``original_size`` and ``target_size``
    (height, width), ``crops_coords_top_left`` (top, left), i.e. (y, x).

    Text inputs are "W,H" and "x,y", tuples diffusers' order (``parse_pair``). Defaults are
    diffusers': both sizes (height, width) of the image being made, crop (0, 0). Negative ones default
    to None: the same as the positive ones. (diffusers uses the negative ones
    only when both negative sizes are given, with a (0, 0) negative crop by
    default; we fill each empty one from its positive one instead.)
    """
    defaults = {"original_size": (height, width), "crops_coords_top_left": (0, 0), "target_size": (height, width)}
    return {name: parse_pair(inputs.get(name), name, defaults.get(name),
                             lowest=0 if name.endswith("crops_coords_top_left") else 1)
            for name in MICRO_CONDITIONS}


def parse_colour(value) -> torch.Tensor:
    """"#RRGGBB", "#RGB", "rgb(r, g, b)" or an (r, g, b) tuple of 0-255 numbers -> tensor [3] in [0, 1]."""
    import torch  # here, not at the top: the tabs read this module's limits before torch is imported

    message = f"Colour must look like #ff8800, got {value!r}."
    if isinstance(value, (list, tuple)) and len(value) == 3:
        return torch.tensor([float(v) / 255 for v in value], dtype=torch.float32)
    if not isinstance(value, str):
        raise UserError(message)
    text = value.strip()
    if text.startswith("rgb"):
        parts = text[text.index("(") + 1:text.rindex(")")].split(",")[:3]
        return torch.tensor([float(p) / 255 for p in parts], dtype=torch.float32)
    text = text.lstrip("#")
    if len(text) == 3:
        text = "".join(c * 2 for c in text)
    if len(text) != 6:
        raise UserError(message)
    try:
        return torch.tensor([int(text[k:k + 2], 16) / 255 for k in (0, 2, 4)], dtype=torch.float32)
    except ValueError:
        raise UserError(message) from None


def check_colour(colour, colour_scale, colour_every) -> ColourGuidance | None:
    """Colour guidance settings, or None when off (no colour, or scale 0). The numbers are checked either way."""
    scale = number_in_range(colour_scale or 0.0, "colour_scale", 0, MAX_COLOUR_SCALE, " (0 = off)")
    every = whole_number_in_range(colour_every, "colour_every", 1, MAX_STEPS)
    if not colour or scale == 0:
        return None
    return ColourGuidance(target_rgb=parse_colour(colour), scale=scale, every=every)


def check_clip_guidance(clip_guidance_scale) -> float:
    """CLIP guidance's scale as a float from 0 (off) to ``MAX_CLIP_GUIDANCE``; empty means 0."""
    return number_in_range(clip_guidance_scale or 0.0, "clip_guidance_scale", 0, MAX_CLIP_GUIDANCE, " (0 = off)")


def check_refiner(preset, refiner, denoising_end, aesthetic_score, negative_aesthetic_score) -> dict:
    """The refiner's name (None for "none") and its numbers: ``denoising_end`` strictly between 0 and 1, the
    aesthetic scores from 0 to 10. The numbers are checked even without a refiner (an API caller's values)."""
    end = number_in_range(denoising_end, "denoising_end", 0, 1, " (the fraction of the schedule the base model "
                          "runs before the refiner takes over; 0.6-0.95 is typical, 0.8 the default)")
    if not 0 < end < 1:
        raise UserError(f"denoising_end must be between 0 and 1, not equal to either (0.8 is the default), "
                        f"got {denoising_end!r}.")
    scores = {name: number_in_range(value, name, 0, 10, " (LAION aesthetic scores)")
              for name, value in (("aesthetic_score", aesthetic_score),
                                  ("negative_aesthetic_score", negative_aesthetic_score))}
    name = None if refiner in (None, "", NO_REFINER) else get_refiner_preset(preset, refiner).name
    return dict(refiner=name, denoising_end=end, **scores)


def make_request(preset, *, prompt, negative_prompt="", guidance_scale=TXT2IMG_DEFAULT_GUIDANCE,
                 num_inference_steps=DEFAULT_STEPS, scheduler=DEFAULT, seed=0, width=512, height=512, num_images=1,
                 image=None, strength=None, colour=None, colour_scale=0.0, colour_every=5, preview_every=1,
                 preview_seconds=0.0, guidance_scales=None, clip_guidance_scale=0.0, refiner=NO_REFINER,
                 denoising_end=DEFAULT_DENOISING_END, aesthetic_score=6.0, negative_aesthetic_score=2.5,
                 **micro_conditioning) -> Request:
    """Check every input of a text-to-image (or img2img, or sweep) request and return it as a ``Request``.

    Raises ``UserError`` naming the first bad value. ``micro_conditioning``
    takes the names in ``MICRO_CONDITIONS`` (SDXL only; "W,H" and "x,y" text, or diffusers' (height, width)
    and (top, left) tuples).
    A prompt over 77 tokens is not an error: ``encode_prompt`` cuts it and warns.
    """
    unknown = set(micro_conditioning) - set(MICRO_CONDITIONS)
    if unknown:
        raise TypeError(f"make_request() got unexpected arguments {sorted(unknown)}")
    prompt = check_text(prompt, "prompt")
    negative_prompt = check_text(negative_prompt, "negative_prompt")
    for text, name in ((prompt, "prompt"), (negative_prompt, "negative_prompt")):
        prompt_weights.parse(text, name)  # the weights of (word:1.5) within their range
    width, height = check_side(preset, width, "width"), check_side(preset, height, "height")
    steps = check_steps(preset, num_inference_steps)
    guidance = check_guidance(preset, guidance_scale)
    images, seed = check_num_images(num_images), check_seed(seed)
    # strength is checked whenever it is given (an API caller's number), and used only with an image
    strength = check_strength(strength) if image is not None or strength is not None else None
    scheduler = check_scheduler(scheduler)
    scales = (guidance,) if guidance_scales is None else check_sweep(preset, guidance_scales)
    micro = check_micro_conditioning(width, height, micro_conditioning) if preset.kind == "sdxl" else None
    refining = check_refiner(preset, refiner, denoising_end, aesthetic_score, negative_aesthetic_score)
    return Request(prompt=prompt, negative_prompt=negative_prompt, guidance_scale=guidance, num_inference_steps=steps,
                   width=width, height=height, num_images=images, seed=seed, scheduler=scheduler,
                   guidance_scales=scales, micro_conditioning=micro, image=image,
                   strength=strength if image is not None else None,
                   colour=check_colour(colour, colour_scale, colour_every), preview_every=int(preview_every or 0),
                   preview_seconds=max(0.0, float(preview_seconds or 0.0)),
                   clip_guidance_scale=check_clip_guidance(clip_guidance_scale), **refining)
