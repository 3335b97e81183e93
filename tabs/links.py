"""Links that reproduce a result: the query string of a page address, checked like any other input.

``?tab=txt2img&prompt=a+blue+sneaker&model=mini-SD+(offline)&seed=7&num_inference_steps=12&run=1``
opens the text-to-image tab with those settings and, with ``run=1``, runs them.
``parse_link`` reads such a query into a ``Link``: the tab, the values that passed
the engine's own checks (the ones a run would make), whether to run, and a short
note for every key or value it ignored. A value is only ever compared with the
app's own names and ranges: it never becomes a path or a model id. No gradio
here (``tabs.settings`` wires it), so the checks are unit-tested on their own.

``copy_link_js`` writes the browser side: a function that builds the address
from the controls' current values and copies it to the clipboard.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from engine.errors import UserError, check_seed, number_in_range, whole_number_in_range
from engine.fashion import configs
from engine.fashion.configs import CLASS_NAMES
from engine.imports import lazy
from engine.presets import presets_for
from engine.txt2img import request as t2i

sampling = lazy("engine.fashion.sampling")  # class_index; imported on first use (engine.imports)

TAB_IDS = ("class", "txt2img", "vae", "tokenizer", "unet", "guidance", "guidance_t2i", "guidance_neg")
#: Links to a section of a tab: the tab the page opens (the others are tabs themselves).
SECTION_OF = {"guidance_t2i": "guidance", "guidance_neg": "guidance"}
#: The settings a link can carry, per tab, in the order they are checked (a model or sampler first:
#: the ranges of the others depend on it). The same keys name the controls of the tab's form and a history
#: entry's settings. They are diffusers' argument names (``negative_prompt``, ``guidance_scale``,
#: ``num_inference_steps``, ``num_images_per_prompt``); a setting diffusers has no argument for keeps the name
#: of our handler's parameter (``model``, ``sampler``, ``count``, ``randomize_seed``, ``clip_guidance_scale``, ...).
KEYS = {
    "txt2img": ("model", "prompt", "negative_prompt", "guidance_scale", "num_inference_steps", "scheduler", "seed",
                "width", "height", "num_images_per_prompt"),
    "class": ("sampler", "class", "count", "num_inference_steps", "guidance_scale", "classifier_scale", "seed",
              "model"),
    "guidance": ("sampler", "class", "count", "num_inference_steps", "guidance_scale", "classifier_scale", "seed"),
    "guidance_t2i": ("model", "prompt", "guidance_scale", "clip_guidance_scale", "colour", "colour_scale",
                     "colour_every", "num_inference_steps", "seed"),
    "guidance_neg": ("model", "prompt", "negative_prompt", "guidance_scale", "num_inference_steps", "seed"),
}
#: The short keys of links copied before the keys became diffusers' names: read as the new ones, so old links
#: keep working (a new key given too wins).
OLD_KEYS = {"negative": "negative_prompt", "guidance": "guidance_scale", "steps": "num_inference_steps",
            "images": "num_images_per_prompt", "clip_scale": "clip_guidance_scale"}
MAX_TEXT = 500  # characters of a prompt in a link (77 tokens is ~300 characters)
MAX_RAW = 2000  # any longer value is refused before it is read
MAX_KEYS = 40
#: Gradio's (and Hugging Face Spaces') own query parameters, and any starting with "__": no note.
GRADIO_KEYS = frozenset({"view", "deep_link", "lang", "logs"})


@dataclass
class Link:
    """What a page address asks for: ``tab`` (None: leave the page as it is), checked ``values`` by key,
    ``run`` (run them on opening) and ``notes`` (one short sentence per ignored key or value)."""

    tab: str | None = None
    values: dict = field(default_factory=dict)
    run: bool = False
    notes: list[str] = field(default_factory=list)


def parse_link(query: Mapping[str, str]) -> Link:
    """Read a page's query parameters (a mapping of str to str) into a ``Link``.

    Unknown keys, unknown tabs and values that fail the engine's checks are dropped with a note;
    what is left is safe to put into the controls as it is.
    """
    link = Link()
    items = [(str(k), str(v)) for k, v in list(query.items())[:MAX_KEYS]
             if str(k) not in GRADIO_KEYS and not str(k).startswith("__")]
    if len(query) > MAX_KEYS:
        link.notes.append(f"Only the first {MAX_KEYS} parameters were read.")
    raw = _current_keys(dict(items))
    tab = raw.pop("tab", None)
    if tab is not None and tab not in TAB_IDS:
        link.notes.append(f"`tab` ignored: {_safe(tab)} is not a tab here ({', '.join(TAB_IDS)}).")
        tab = None
    link.tab = tab
    run = raw.pop("run", None)
    if run not in (None, "", "0", "1"):
        link.notes.append("`run` ignored: use run=1 to run the settings on opening.")
    keys = KEYS.get(tab, ())
    unknown = [k for k in raw if k not in keys]
    if unknown:
        where = f" on the {tab} tab" if tab else " without a tab"
        link.notes.append(f"Unknown {'key' if len(unknown) == 1 else 'keys'}{where} ignored: "
                          f"{', '.join(_safe(k, 30) for k in unknown[:5])}{' …' if len(unknown) > 5 else ''}.")
    if tab in CHECKERS:
        link.values = _check_values(CHECKERS[tab], {k: raw[k] for k in keys if k in raw}, link.notes)
    link.run = run == "1" and tab in CHECKERS and not link.notes
    return link


def _current_keys(raw: dict) -> dict:
    """``raw`` with the old short keys (``OLD_KEYS``) renamed; a new key given too keeps its own value."""
    renamed = {OLD_KEYS.get(k, k): v for k, v in raw.items() if k in OLD_KEYS}
    return {**renamed, **{k: v for k, v in raw.items() if k not in OLD_KEYS}}


def _check_values(checker: Callable, raw: dict, notes: list[str]) -> dict:
    values = {}
    for key, value in raw.items():
        if len(value) > MAX_RAW:
            notes.append(f"`{key}` ignored: too long.")
            continue
        try:
            values[key] = checker(key, value, values)
        except UserError as e:
            notes.append(f"`{key}` ignored: {_safe(str(e))}")
    return values


def _text(value: str, name: str) -> str:
    if len(value) > MAX_TEXT:
        raise UserError(f"{name} is longer than {MAX_TEXT} characters.")
    return value


def check_txt2img(key: str, value: str, checked: dict):
    """One text-to-image setting from a link, by the checks of ``engine.txt2img.request``.

    ``checked`` holds the values already accepted: the model's limits apply to steps, size and guidance
    (the tab's first model, the one the page opens with, when the link names none).
    """
    names = [p.name for p in t2i.pipeline_presets()]
    if key == "model":
        if value not in names:
            raise UserError("not a model of this app.")
        return value
    if key in ("prompt", "negative_prompt"):
        return _text(value, key)
    if key == "scheduler":
        return t2i.check_scheduler(value)
    if key == "seed":
        return check_seed(value)
    if key == "num_images_per_prompt":
        return t2i.check_num_images(value)
    if not names:
        raise UserError("no text-to-image model is installed.")
    preset = t2i.get_pipeline_preset(checked.get("model", names[0]))
    if key == "guidance_scale":
        return t2i.check_guidance(preset, value)
    if key == "num_inference_steps":
        return t2i.check_steps(preset, value)
    return t2i.check_side(preset, value, key)  # width, height


def check_class(key: str, value: str, checked: dict):
    """One class-conditional setting from a link (the Fashion tab's, or the Guidance tab's panels), by the
    checks of ``engine.fashion.sampling``.

    The steps must suit the link's sampler (DPM-Solver++, the tab's default, when it names none).
    """
    if key == "sampler":
        if value not in configs.SAMPLERS:
            raise UserError(f"not a sampler ({', '.join(configs.SAMPLERS)}).")
        return value
    if key == "class":
        return CLASS_NAMES[sampling.class_index(value)]
    if key == "count":
        return whole_number_in_range(value, "count", 1, configs.MAX_COUNT)
    if key == "num_inference_steps":
        sampler = checked.get("sampler", "DPM-Solver++")
        low, high, _ = configs.SAMPLER_STEPS[sampler]
        return whole_number_in_range(value, "num_inference_steps", low, high, f" for {sampler}")
    if key == "guidance_scale":
        return number_in_range(value, "guidance_scale", 0, configs.MAX_GUIDANCE)
    if key == "classifier_scale":
        return number_in_range(value, "classifier_scale", 0, configs.MAX_CLASSIFIER_SCALE)
    if key == "seed":
        return check_seed(value)
    if value not in [p.name for p in presets_for("class-unet")]:  # model
        raise UserError("not a class-conditional model of this app.")
    return value


def check_guidance_t2i(key: str, value: str, checked: dict):
    """One setting of the Guidance tab's text-to-image panels from a link: CLIP and colour guidance's by the
    checks of ``engine.txt2img.request`` (the colour as #rrggbb text: no torch here), the rest as text to image's."""
    if key == "clip_guidance_scale":
        return t2i.check_clip_guidance(value)
    if key == "colour":
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", value):
            raise UserError("not a colour like #1f4fd1.")
        return value
    if key == "colour_scale":
        return number_in_range(value, "colour_scale", 0, t2i.MAX_COLOUR_SCALE)
    if key == "colour_every":
        return whole_number_in_range(value, "colour_every", 1, 10)
    return check_txt2img(key, value, checked)


def tab_of(link_tab: str | None) -> str | None:
    """The page's tab id for a link's ``tab`` (a section's link opens its tab)."""
    return SECTION_OF.get(link_tab, link_tab)


CHECKERS = {"txt2img": check_txt2img, "class": check_class, "guidance": check_class,
            "guidance_t2i": check_guidance_t2i, "guidance_neg": check_txt2img}


def _safe(text: str, limit: int = 160) -> str:
    """Text from a link, cut and escaped so that Markdown shows it as it is (no links, no HTML)."""
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return re.sub(r"([\\`*_{}\[\]()#+!|~<>&-])", r"\\\1", text)  # a backslash: Markdown shows it as it is


def note_markdown(notes: list[str]) -> str:
    """The page's note about a link: empty when the whole link was used."""
    if not notes:
        return ""
    return "**Part of this link was not used.** " + " ".join(notes)


def copy_link_js(tab: str, keys: list[str] | tuple[str, ...]) -> str:
    """A browser function of the controls' values (in ``keys`` order) that returns this page's address with
    ``tab``, those values and ``run=1``, and copies it to the clipboard where the browser allows it."""
    return f"""(...values) => {{
  const keys = {json.dumps(list(keys))};
  const params = new URLSearchParams({{tab: {json.dumps(tab)}}});
  keys.forEach((key, i) => {{
    const v = values[i];
    if (v !== null && v !== undefined && v !== "") params.set(key, String(v));
  }});
  params.set("run", "1");
  const url = window.location.origin + window.location.pathname + "?" + params.toString();
  try {{ navigator.clipboard.writeText(url).catch(() => {{}}); }} catch (e) {{}}
  return url;
}}"""
