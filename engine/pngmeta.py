"""Generation parameters in a PNG text chunk, the way AUTOMATIC1111's web UI writes them.

The chunk is a ``tEXt`` entry named ``parameters`` holding three parts::

    An oil painting of a collie in a top hat
    Negative prompt: blurry
    Steps: 30, Sampler: Euler, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: SD 1.5

The prompt may span several lines; the "Negative prompt:" line is left out
when there is none; the last line is ``Key: value`` pairs separated by commas,
with a value quoted as JSON when it contains a comma, colon, quote or newline.
Many tools (A1111, ComfyUI loaders, civitai) read this format, and
``parse_parameters`` reads it back, so an image says how to make it again.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

CHUNK = "parameters"
NEGATIVE = "Negative prompt: "
# one "Key: value" pair of the last line; the value is a JSON string or runs up to the next comma
_PAIR = re.compile(r'\s*([\w][\w \-/()]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


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


def parse_parameters(text: str) -> dict:
    """Read ``format_parameters`` text back: {"prompt", "negative_prompt", and each setting as a string}."""
    lines = text.strip("\n").split("\n")
    settings_line = lines[-1] if len(lines) > 1 and _PAIR.match(lines[-1]) else ""
    body = lines[:-1] if settings_line else lines
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in body:
        if line.startswith(NEGATIVE):
            in_negative = True
            line = line[len(NEGATIVE):]
        (negative_lines if in_negative else prompt_lines).append(line)
    out = {"prompt": "\n".join(prompt_lines), "negative_prompt": "\n".join(negative_lines)}
    for key, value in _PAIR.findall(settings_line):
        value = value.strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = json.loads(value)
        out[key.strip()] = value
    return out


def save_png(image: Image.Image, path: str | Path, parameters: str) -> Path:
    """Save ``image`` as PNG with ``parameters`` in a ``tEXt`` chunk named "parameters"."""
    info = PngInfo()
    info.add_text(CHUNK, parameters)
    path = Path(path)
    image.save(path, format="PNG", pnginfo=info)
    return path


def read_parameters(source: str | Path | Image.Image) -> str | None:
    """The ``parameters`` text of a PNG, or None if it has none."""
    img = source if isinstance(source, Image.Image) else Image.open(source)
    text = getattr(img, "text", None) or img.info
    return text.get(CHUNK)
