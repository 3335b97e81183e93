"""/sample_fashion through gradio_client, with the shipped CPU model (small requests: a few seconds each)."""

from pathlib import Path

import pytest
from gradio_client.exceptions import AppError
from PIL import Image


def _sample(client, **kw):
    args = dict(label="Trouser", count=3, sampler="DPM-Solver++", num_inference_steps=5, guidance_scale=2.0, seed=7)
    args.update(kw)
    return client.predict(**args, api_name="/sample_fashion")


def _path(picture) -> str:
    return picture if isinstance(picture, str) else picture["path"]


def test_sample_fashion_returns_a_grey_grid_of_the_samples_and_the_trajectory(client):
    samples, trajectory, info = _sample(client)
    with Image.open(_path(samples)) as img:
        # 3 samples of 32x32, each shown at 128x128, in one row with 4 px between them
        assert img.size == (3 * 128 + 2 * 4, 128)
        rgb = img.convert("RGB")
        r, g, b = rgb.split()
        assert r.tobytes() == g.tobytes() == b.tobytes()  # grey
        tiles = [rgb.crop((k * 132, 0, k * 132 + 128, 128)) for k in range(3)]
        assert len({t.tobytes() for t in tiles}) == 3  # three different samples
    assert info["seed"] == 7 and info["sampler"] == "DPM-Solver++" and info["steps"] == 5
    assert info["count"] == 3 and info["class"] == "Trouser"
    assert info["wall_time_s"] > 0 and info["images_per_s"] > 0
    # trajectory: a column for each of steps 1-4 and one for the final sample (5 steps keep all 5), x_t above
    # the predicted x0, 96 px each with 2 px between them, the labels under them
    with Image.open(_path(trajectory)) as img:
        width, height = img.size
        assert width == 5 * 96 + 4 * 2, img.size
        assert 2 * 96 + 2 < height < 2 * 96 + 2 + 40, img.size


def test_same_seed_same_images_and_label_by_index(client):
    a, _, _ = _sample(client, seed=11)
    b, _, _ = _sample(client, label=1, seed=11)  # "Trouser" by index
    c, _, _ = _sample(client, seed=12)
    assert Path(_path(a)).read_bytes() == Path(_path(b)).read_bytes()
    assert Path(_path(a)).read_bytes() != Path(_path(c)).read_bytes()


def test_seeds_follow_the_one_rule_of_every_tab(client):
    """0 .. 2**32 - 1 is used as it is; a seed outside is refused with a message, as in text to image and VAE."""
    *_, info = _sample(client, count=1, seed=2**32 - 1)
    assert info["seed"] == 2**32 - 1
    for bad in (2**32 + 5, -1):
        with pytest.raises(AppError, match="seed must be between 0 and 4294967295"):
            _sample(client, count=1, seed=bad)


@pytest.mark.parametrize("kw,message", [
    (dict(count=65), "64"),  # gradio's slider or the engine: either names the limit
    (dict(count=0), "1"),
    (dict(sampler="DDPM", num_inference_steps=5), "between 10 and 1000 for DDPM"),
    (dict(num_inference_steps=500), "between 2 and 100"),
    (dict(label="Hat"), "Unknown class"),
    (dict(seed=1.5), "whole number"),
])
def test_bad_input_gets_a_clear_message(client, kw, message):
    with pytest.raises(AppError, match=message):
        _sample(client, **kw)


def test_forward_process_api(client):
    gallery, caption = client.predict(source="Test image", example=3, seed=0, api_name="/forward_fashion")
    assert len(gallery) == 8
    assert [item["caption"].split(" ")[0] for item in gallery] == [f"t={t}" for t in (0, 50, 100, 200, 400, 600, 800, 999)]
    assert "Trouser" in caption
