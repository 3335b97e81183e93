"""Generation parameters in a PNG text chunk, the way AUTOMATIC1111's web UI writes them.

The chunk is a ``tEXt`` entry named ``parameters`` holding three parts::

    An oil painting of a collie in a top hat
    Negative prompt: blurry
    Steps: 30, Sampler: Euler, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: SD 1.5

The prompt may span several lines; the "Negative prompt:" line is left out
when there is none; the last line is ``Key: value`` pairs separated by commas,
with a value quoted as JSON when it contains a comma, colon, quote or newline.
Many tools (A1111, ComfyUI loaders, civitai) read this format, so an image says how to make it
again (the tests read it back with ``tests/png_parameters.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

CHUNK = "parameters"
NEGATIVE = "Negative prompt: "


def _quote(value: object) -> str:
    text = str(value)
    if any(c in text for c in ',:"\n'):
        return json.dumps(text, ensure_ascii=False)
    return text


def format_parameters(prompt: str, negative_prompt: str, settings: dict) -> str:
    """The A1111 ``parameters`` text: prompt, optional negative prompt, then ``Key: value, ...``."""
    lines = [prompt]
    if negative_prompt:
        lines.append(NEGATIVE + negative_prompt)
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in settings.items() if value is not None))
    return "\n".join(lines)


def save_png(image: Image.Image, path: str | Path, parameters: str) -> Path:
    """Save ``image`` as PNG with ``parameters`` in a ``tEXt`` chunk named "parameters"."""
    info = PngInfo()
    info.add_text(CHUNK, parameters)
    path = Path(path)
    image.save(path, format="PNG", pnginfo=info)
    return path
