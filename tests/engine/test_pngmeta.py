"""PNG "parameters" chunk (A1111 style): written, read back, parsed."""

from __future__ import annotations

from PIL import Image

from engine.pngmeta import format_parameters, save_png
from tests.png_parameters import parse_parameters, read_parameters


def test_png_metadata_round_trips(tmp_path):
    settings = {"Steps": 30, "Sampler": "EulerDiscreteScheduler", "CFG scale": "7.5", "Seed": 1234,
                "Size": "512x768", "Model": "SDXL base 1.0", "Original size": "1024x1024", "Crop": "0,64",
                "Colour guidance": "#0000ff x200 every 5"}
    prompt = "An oil painting of a collie in a top hat,\nwith a monocle: very dapper"
    text = format_parameters(prompt, "blurry, low quality", settings)
    path = save_png(Image.new("RGB", (16, 16), (10, 20, 30)), tmp_path / "x.png", text)

    reopened = Image.open(path)
    assert reopened.format == "PNG" and reopened.getpixel((0, 0)) == (10, 20, 30)
    assert read_parameters(path) == text
    params = parse_parameters(read_parameters(reopened))
    assert params["prompt"] == prompt
    assert params["negative_prompt"] == "blurry, low quality"
    for key, value in settings.items():
        assert params[key] == str(value), key


def test_a1111_text_without_negative_prompt():
    text = "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512"
    params = parse_parameters(text)
    assert params["prompt"] == "a cat" and params["negative_prompt"] == ""
    assert params["Sampler"] == "Euler a" and params["Seed"] == "5"
    assert format_parameters("a cat", "", {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7, "Seed": 5,
                                           "Size": "512x512"}) == text


def test_png_without_parameters(tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(path)
    assert read_parameters(path) is None
