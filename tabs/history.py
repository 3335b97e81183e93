"""A visitor's last results under each generating tab: plain lists, no gradio, no engine.

An entry is ``{"image": path, "caption": str, "settings": {key: value}}``; the
list lives in the tab's ``gr.State`` (one per visitor), newest first, at most
``MAX_ENTRIES`` long. The settings use the keys of the tab's form
(``tabs.settings.Form``), the same keys a link carries (``tabs.links``), so a
click on an entry and an opened link restore the controls the same way.
"""

from __future__ import annotations

MAX_ENTRIES = 12
CAPTION_CHARS = 60


def add_entry(history: list | None, image, caption: str, settings: dict, limit: int = MAX_ENTRIES) -> list:
    """A new list with ``{image, caption, settings}`` first and the oldest entries beyond ``limit`` dropped.

    The list passed in is not changed. No image (a run that returned none) adds nothing.
    """
    history = list(history or [])
    if image is None:
        return history[:limit]
    entry = {"image": image, "caption": shorten(caption), "settings": dict(settings)}
    return ([entry] + history)[:limit]


def gallery_items(history: list | None) -> list[tuple]:
    """The entries as (image, caption) pairs for a ``gr.Gallery``, newest first."""
    return [(entry["image"], entry["caption"]) for entry in history or []]


def settings_at(history: list | None, index) -> dict | None:
    """The settings of the entry at ``index`` (a gallery's selected index), or None when there is none."""
    if not history or isinstance(index, bool) or not isinstance(index, int):
        return None
    if not 0 <= index < len(history):
        return None
    return dict(history[index]["settings"])


def first_image(value) -> str | None:
    """The first picture of an output's value as gradio passes it in: a gallery's [(path, caption), ...] or
    one picture's path; None when there is none."""
    if not value:
        return None
    if isinstance(value, str):
        return value
    first = value[0]
    return first[0] if isinstance(first, (tuple, list)) else first


def shorten(text: str, limit: int = CAPTION_CHARS) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
