"""/vae_roundtrip as a service: an example through the tiny VAE, numbers checkable from the images, bad uploads."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from engine import vae as engine
from tests.engine.test_vae import png_header_only

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
SCENE = REPO_ROOT / "assets" / "examples" / "scene.png"
TINY = "tiny-VAE (test)"


def roundtrip(client, path, vae=TINY, size=256, **kwargs):
    return client.predict(image=handle_file(str(path)), vae=vae, size=size, api_name="/vae_roundtrip", **kwargs)


@pytest.fixture(scope="module")
def scene_result(client):
    return roundtrip(client, SCENE)


def test_roundtrip_of_an_example(scene_result):
    reconstruction, channels, numbers, shown_input, *_ = scene_result
    # scene.png is 768x512; short side 256 -> 384x256 -> latent 4 x 32 x 48
    assert numbers["latent_shape"] == [4, 32, 48]
    assert numbers["input_values"] == 3 * 256 * 384 and numbers["latent_values"] == 4 * 32 * 48
    assert numbers["compression_ratio"] == 48
    assert numbers["vae"] == TINY and numbers["device"] == "cpu"
    for key in ("psnr", "ssim", "latent_mean_before_scaling", "latent_std_after_scaling",
                "encode_seconds", "decode_seconds", "scaling_factor"):
        assert key in numbers
    assert Image.open(reconstruction).size == (384, 256)
    assert len(channels) == 4
    assert [c["caption"].split(":")[0] for c in channels] == ["Channel 0", "Channel 1", "Channel 2", "Channel 3"]


def test_psnr_and_ssim_can_be_checked_from_the_two_images(scene_result):
    reconstruction, _, numbers, shown_input, *_ = scene_result
    a = np.asarray(Image.open(shown_input).convert("RGB"))
    b = np.asarray(Image.open(reconstruction).convert("RGB"))
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    assert numbers["psnr"] == pytest.approx(10 * np.log10(255**2 / mse), abs=1e-3)
    assert numbers["ssim"] == pytest.approx(engine.ssim(a, b), abs=1e-4)


def test_a_pipeline_presets_vae_and_pad_mode(client):
    numbers = roundtrip(client, SCENE, vae="tiny-SD (test) · VAE", fit="pad")[2]
    assert numbers["latent_shape"] == [4, 32, 48] and numbers["vae"] == "tiny-SD (test) · VAE"


def test_animated_gif_says_it_used_the_first_frame(client, tmp_path):
    frames = [Image.new("RGB", (64, 48), c) for c in ("red", "green")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    numbers = roundtrip(client, tmp_path / "anim.gif")[2]
    assert any("first of its 2 frames" in note for note in numbers["notes"])


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name, data, message", [
    ("notes.png", b"this is not an image at all", "not an image"),
    ("truncated.png", _png(Image.effect_noise((64, 64), 64).convert("RGB"))[:3000], "damaged or truncated"),
    ("tiny.png", _png(Image.new("RGB", (1, 1))), "at least 8 pixels"),
    ("bomb.png", png_header_only(20000, 20000), "megapixels"),
], ids=["not-an-image", "truncated", "1x1", "20000x20000"])
def test_broken_uploads_get_clean_errors_and_the_server_keeps_answering(client, tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(AppError, match=message) as e:
        roundtrip(client, path)
    assert "Traceback" not in str(e.value)
    assert roundtrip(client, SCENE)[2]["compression_ratio"] == 48


def test_no_image_is_a_clear_error(client):
    with pytest.raises(AppError, match="No image given"):
        client.predict(image=None, vae=TINY, size=256, api_name="/vae_roundtrip")


def test_unavailable_vae_fails_politely(client):
    with pytest.raises(AppError, match="not available"):
        roundtrip(client, SCENE, vae="Missing hub model (test) · VAE")
    with pytest.raises(AppError, match="Unknown vae model"):
        roundtrip(client, SCENE, vae="../../etc")


def test_local_vaes_come_first_and_are_the_default(tiny_presets):
    from tabs.vae import vae_choices

    names = vae_choices()
    local = ["mini VAE (offline)", "tiny-SD (test) · VAE", "tiny-SDXL (test) · VAE", "tiny-VAE (test)"]
    assert names[:4] == local  # the shipped mini VAE, then the operator's (here the tests') local ones
    assert {"SD VAE ft-MSE", "SDXL VAE (fp16-fix)", "SDXL base 1.0 · VAE"} <= set(names[3:])


def test_without_an_offline_vae_the_tab_says_so(monkeypatch, tmp_path):
    """A copy of the app without the mini models' folders (only hub VAEs left) says so on the tab."""
    import gradio as gr

    from engine import presets
    from tabs import vae as tab

    monkeypatch.delenv("EXPLORER_MODELS", raising=False)
    shipped = json.loads(presets.SHIPPED_PRESETS.read_text())
    hub_only = tmp_path / "presets.json"
    hub_only.write_text(json.dumps([e for e in shipped if "path" not in e or e["kind"] not in ("sd", "sdxl", "vae")]))
    monkeypatch.setattr(presets, "SHIPPED_PRESETS", hub_only)
    with gr.Blocks() as demo:
        tab.build()
    notes = [b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown)]
    assert any("No offline VAE is installed" in n and "EXPLORER_MODELS" in n for n in notes)
    dropdown = next(b for b in demo.blocks.values() if isinstance(b, gr.Dropdown) and b.label == "VAE")
    assert dropdown.choices[0][0] == dropdown.value == "SD VAE ft-MSE"  # standalone hub VAEs before pipelines' parts


def _raw_call(app_url: str, image) -> str:
    """POST /gradio_api/call/vae_roundtrip and return the event stream's text."""
    url = app_url + "gradio_api/call/vae_roundtrip"
    body = json.dumps({"data": [image, TINY, 256, "crop", False, 0, 4]}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        event_id = json.load(urllib.request.urlopen(request, timeout=30))["event_id"]
    except urllib.error.HTTPError as e:  # refused before it joins the queue (the queue's validator checks files)
        return f"refused: HTTP {e.code} {e.read().decode(errors='replace')}"
    return urllib.request.urlopen(f"{url}/{event_id}", timeout=60).read().decode()


def _raw_upload(app_url: str, path: Path) -> str:
    boundary = "vae-test-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{path.name}"\r\n'
            "Content-Type: image/png\r\n\r\n").encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(app_url + "gradio_api/upload", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    return json.load(urllib.request.urlopen(request, timeout=30))[0]


def test_server_files_cannot_be_read_through_the_image_parameter(app_url):
    """The event skips gradio's preprocessing, but gradio still only accepts files uploaded to it: a server path
    is refused, when the call arrives or as an error event, and nothing of the file comes back.

    Raw HTTP, since gradio_client would upload a local path itself.
    """
    uploaded = _raw_upload(app_url, SCENE)
    ok = _raw_call(app_url, {"path": uploaded, "meta": {"_type": "gradio.FileData"}})
    assert ok.startswith("event: complete") and "latent_shape" in ok  # the same call, uploaded first
    for image in (str(SCENE), {"path": str(SCENE), "meta": {"_type": "gradio.FileData"}}):
        stream = _raw_call(app_url, image)
        assert stream.startswith(("event: error", "refused: HTTP 4")) and "latent_shape" not in stream


def test_the_mini_vae_round_trips_its_own_pictures(client):
    """Issue 6: the offline mini VAE, at the 64 px it was trained at, keeps a picture of its data well."""
    picture = REPO_ROOT / "assets" / "examples" / "colour_fashion_64.png"
    numbers = roundtrip(client, picture, vae="mini VAE (offline)", size=64)[2]
    assert numbers["latent_shape"] == [4, 8, 8] and numbers["compression_ratio"] == 48
    assert numbers["psnr"] > 25  # dB; the model card gives the test-split figure
