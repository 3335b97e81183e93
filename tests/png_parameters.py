"""The tests' reader of the PNG "parameters" chunk that ``engine.pngmeta`` writes (A1111 style)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image

from engine.pngmeta import CHUNK, NEGATIVE

# one "Key: value" pair of the last line; the value is a JSON string or runs up to the next comma
_PAIR = re.compile(r'\s*([\w][\w \-/()]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


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


def read_parameters(source: str | Path | Image.Image) -> str | None:
    """The ``parameters`` text of a PNG, or None if it has none."""
    img = source if isinstance(source, Image.Image) else Image.open(source)
    text = getattr(img, "text", None) or img.info
    return text.get(CHUNK)
