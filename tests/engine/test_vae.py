"""The VAE engine with the tiny seeded AutoencoderKL, and the upload checks it relies on.

The tiny VAE is untrained, so its reconstructions are poor; these tests check
shapes, scaling, determinism and the maths, not image quality.
"""

from __future__ import annotations

import io
import math
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from engine import figures, metrics
from engine import vae as engine
from engine.errors import UserError
from engine.presets import default_size
from engine.images import open_image, pil_to_tensor
from tests.tiny_models import tiny_vae


@pytest.fixture(scope="module")
def vae():
    return tiny_vae().eval()


def gradient_image(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    rgb = np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                          np.full((height, width, 1), 128.0)], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


# ---------------------------------------------------------------------------
# Shapes, scaling, compression


@pytest.mark.parametrize("width, height", [(256, 256), (320, 256)])
def test_latent_shape_and_compression_ratio(vae, width, height):
    x = pil_to_tensor(gradient_image(width, height))
    latent = engine.encode(x, vae)
    assert latent.shape == (1, 4, height // 8, width // 8)
    numbers = engine.compression_numbers(x, latent, vae)
    assert numbers["latent_shape"] == [4, height // 8, width // 8]
    assert numbers["input_values"] == 3 * height * width
    assert numbers["latent_values"] == 4 * (height // 8) * (width // 8)
    assert numbers["compression_ratio"] == 48


def test_book_example_numbers(vae):
    """The book's 512 x 512 example: 786,432 values -> 16,384, 48x."""
    result = engine.roundtrip(gradient_image(512, 512), vae, size=512)
    n = result.numbers
    assert (n["input_values"], n["latent_values"], n["compression_ratio"]) == (786_432, 16_384, 48)
    assert result.reconstruction.size == result.image.size == (512, 512)


def test_latent_is_scaled_by_scaling_factor(vae):
    x = pil_to_tensor(gradient_image(64, 64))
    z = vae.encode(x).latent_dist.mean.detach()
    latent = engine.encode(x, vae)
    torch.testing.assert_close(latent, z * vae.config.scaling_factor)
    torch.testing.assert_close(engine.unscale_latent(latent, vae), z)
    n = engine.compression_numbers(x, latent, vae)
    assert n["latent_std_after_scaling"] == pytest.approx(n["latent_std_before_scaling"] * 0.18215, rel=1e-3)


def test_encode_decode_deterministic_for_a_seed(vae):
    x = pil_to_tensor(gradient_image(64, 64))
    a = engine.decode(engine.encode(x, vae, sample=True, seed=3), vae)
    b = engine.decode(engine.encode(x, vae, sample=True, seed=3), vae)
    c = engine.encode(x, vae, sample=True, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(engine.encode(x, vae, sample=True, seed=3), c)
    assert torch.equal(engine.encode(x, vae), engine.encode(x, vae))  # the mean needs no seed
    assert a.shape == (1, 3, 64, 64)


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, "x", None])
def test_bad_seeds_are_refused(seed):
    with pytest.raises(ValueError, match="seed"):
        engine.cpu_generator(seed)


def test_tiled_decode_is_the_vae_tiling(vae):
    """Tiles of the VAE's sample_size (64 px, latent 8 for the tiny one), 25% overlap, blended at the seams.

    The first tile's unblended part equals a plain decode of that tile alone. (The rest differs
    from a plain decode of the whole latent by more than the seams: GroupNorm and the mid-block
    attention see one tile at a time.)
    """
    latent = engine.encode(pil_to_tensor(gradient_image(128, 128)), vae)  # 16x16 latent
    tiled = engine.decode(latent, vae, tiled=True)
    first_tile = engine.decode(latent[..., :8, :8], vae, tiled=False)
    keep = 64 - int(64 * vae.tile_overlap_factor)  # 48 px not blended with a neighbour
    assert tiled.shape == (1, 3, 128, 128)
    torch.testing.assert_close(tiled[..., :keep, :keep], first_tile[..., :keep, :keep])
    assert engine.decode(latent, vae).shape == (1, 3, 128, 128)  # 16 <= 64: plain decode by default


def test_a_decoder_overflow_is_a_clear_error(vae):
    with pytest.raises(ValueError, match="overflowed"):
        engine.decode(torch.full((1, 4, 8, 8), float("nan")), vae)


def test_encode_rejects_sizes_not_multiple_of_8(vae):
    with pytest.raises(ValueError, match="multiples of 8"):
        engine.encode(torch.zeros(1, 3, 60, 64), vae)


# ---------------------------------------------------------------------------
# Preprocessing


@pytest.mark.parametrize("size", engine.SIZES)
def test_crop_gives_short_side_size_and_multiples_of_8(size):
    out, _ = engine.preprocess(gradient_image(333, 250), size, "crop")
    assert min(out.size) == size
    assert out.width % 8 == 0 and out.height % 8 == 0
    assert out.width == round(333 * size / 250) // 8 * 8


def test_pad_keeps_everything_and_pads_white():
    out, notes = engine.preprocess(gradient_image(333, 250), 256, "pad")
    assert out.size == (344, 256)  # 333 * 256/250 = 341 -> padded to 344
    arr = np.asarray(out)
    assert (arr[:, 0] == 255).all() and (arr[:, -1] == 255).all()  # 1-2 px white columns each side
    assert notes and "Padded" in notes[0]


def test_crop_vs_pad_on_a_very_long_image():
    long_image = gradient_image(1000, 100)
    cropped, _ = engine.preprocess(long_image, 256, "crop")
    padded, _ = engine.preprocess(long_image, 256, "pad")
    assert cropped.size == (512, 256)  # at most 2:1, centre of the 2560 x 256 resize
    assert padded.size == (512, 256)  # shrunk to 512 x 51, then padded
    assert (np.asarray(padded)[0] == 255).all()


def test_a_thin_image_is_cropped_before_it_is_resized(monkeypatch):
    """20000 x 8 at short side 1024 would be 2,560,000 x 1024 pixels if resized first."""
    sizes = []
    resize = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda self, s, *a, **k: sizes.append(s) or resize(self, s, *a, **k))
    out, notes = engine.preprocess(Image.new("RGB", (20000, 8), "gray"), 1024, "crop")
    assert out.size == (2048, 1024) and max(w * h for w, h in sizes) == 2048 * 1024
    assert "Centre-cropped" in notes[0]


@pytest.mark.parametrize("bad", [{"size": 500}, {"size": "big"}, {"fit": "stretch"}])
def test_preprocess_rejects_bad_choices(bad):
    with pytest.raises(ValueError):
        engine.preprocess(gradient_image(64, 64), **{"size": 256, "fit": "crop", **bad})


# ---------------------------------------------------------------------------
# PSNR and SSIM


def numpy_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(float) - b.astype(float)) ** 2).sum() / a.size
    return 20 * math.log10(255) - 10 * math.log10(mse)


def test_engine_psnr_matches_numpy_on_the_round_trip(vae):
    result = engine.roundtrip(gradient_image(300, 260), vae, size=256)
    a, b = np.asarray(result.image), np.asarray(result.reconstruction)
    assert a.dtype == b.dtype == np.uint8 and a.shape == b.shape
    assert result.numbers["psnr"] == pytest.approx(numpy_psnr(a, b), abs=1e-3)


def test_psnr_values():
    a = np.zeros((16, 16, 3), np.uint8)
    assert metrics.psnr(a, a) == math.inf
    assert metrics.psnr(a, a + 255) == pytest.approx(0.0)
    assert metrics.psnr(a, a + 1) == pytest.approx(20 * math.log10(255))


def test_ssim_sanity():
    img = np.asarray(gradient_image(64, 48))
    rng = np.random.default_rng(0)
    noisy = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
    noisier = np.clip(img + rng.normal(0, 60, img.shape), 0, 255).astype(np.uint8)
    assert metrics.ssim(img, img) == pytest.approx(1.0)
    assert 0 < metrics.ssim(img, noisier) < metrics.ssim(img, noisy) < 1
    assert metrics.ssim(img, noisy) == pytest.approx(metrics.ssim(noisy, img))  # symmetric


def test_ssim_matches_a_direct_window_by_window_computation():
    """Wang et al. 2004, eq. 13 with the weighted statistics of eqs. 14-16, window by window."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (15, 14), dtype=np.uint8)
    b = np.clip(a + rng.normal(0, 30, a.shape), 0, 255).astype(np.uint8)
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    scores = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            x, y = a[i:i + 11, j:j + 11].astype(float), b[i:i + 11, j:j + 11].astype(float)
            mx, my = (w * x).sum(), (w * y).sum()
            vx, vy, cov = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum(), (w * (x - mx) * (y - my)).sum()
            scores.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    assert metrics.ssim(a, b) == pytest.approx(np.mean(scores), rel=1e-9)


def test_ssim_of_a_constant_shift_is_the_luminance_term():
    """For a constant image pair the contrast/structure terms are 1: SSIM = (2ab + C1) / (a^2 + b^2 + C1)."""
    a, b = np.full((20, 20), 100, np.uint8), np.full((20, 20), 140, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert metrics.ssim(a, b) == pytest.approx((2 * 100 * 140 + c1) / (100**2 + 140**2 + c1))


# ---------------------------------------------------------------------------
# Pictures and the noise view


def test_channel_images_share_one_scale(vae):
    latent = engine.encode(pil_to_tensor(gradient_image(64, 64)), vae)
    images = engine.channel_images(latent)
    assert len(images) == 4 and all(img.size == (256, 256) for img, _ in images)  # 8x8 latent, 32x up
    assert [caption.split(":")[0] for _, caption in images] == [f"Channel {c}" for c in range(4)]
    m = figures.latent_range(latent)
    c, y, x = np.unravel_index(latent[0].abs().argmax().item(), latent[0].shape)
    extreme = np.asarray(images[c][0])[y * 32, x * 32]  # the largest |value| gets an end of the map
    assert tuple(extreme) in {tuple(figures.DIVERGING[0][1]), tuple(figures.DIVERGING[-1][1])}
    assert m > 0 and figures.colorbar(m).size == (512, 48)
    hist = figures.histogram(latent, bins=10)
    assert hist["counts"].shape == (4, 10) and hist["counts"].sum() == latent.numel()
    assert figures.histogram_image(latent).mode == "RGB"


def test_difference_heatmap():
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[0, 0] = 10
    heat = np.asarray(figures.difference_heatmap(a, b, gain=4))
    assert tuple(heat[1, 1]) == figures.SEQUENTIAL[0][1]  # identical: black
    assert heat[0, 0].sum() > heat[1, 1].sum()
    with pytest.raises(UserError, match="gain"):  # a message for the user, not the generic one (issue 20)
        figures.difference_heatmap(a, b, gain=-3)


@pytest.mark.parametrize("inputs, message", [
    (dict(gain=-3), r"The difference amplification \(gain\) must be between 1 and 32, got -3"),
    (dict(gain=float("nan")), "gain"),
    (dict(size=100), "size must be one of 64, 128, 256, 512, 768, 1024 pixels, got 100"),
    (dict(size=512.5), "size must be one of"),
    (dict(fit="stretch"), "fit must be one of 'crop', 'pad', got 'stretch'"),
    (dict(seed=2**40), "seed must be between 0 and 4294967295"),
])
def test_the_round_trip_settings_are_checked_before_a_model_loads(inputs, message):
    settings = {"size": 512, "fit": "crop", "seed": 0, "gain": 4, **inputs}
    with pytest.raises(UserError, match=message):
        engine.check_inputs(**settings)
    assert engine.check_inputs(512.0, "pad", "7", 2.5) == (512, "pad", 7, 2.5)


def test_add_noise_follows_the_sd_schedule():
    x = torch.ones(1, 4, 8, 8)
    noisy0, info0 = engine.add_noise(x, 0)
    noisy999, info999 = engine.add_noise(x, 999)
    assert info0["alpha_bar"] == pytest.approx(1 - 0.00085, abs=1e-6)
    assert info999["alpha_bar"] < 0.01
    assert info0["signal_weight"] ** 2 + info0["noise_weight"] ** 2 == pytest.approx(1, abs=1e-4)
    assert (noisy0 - x).abs().mean() < 0.05 < (noisy999 - x).abs().mean()
    assert torch.equal(engine.add_noise(x, 500, seed=1)[0], engine.add_noise(x, 500, seed=1)[0])
    with pytest.raises(ValueError, match="timestep"):
        engine.add_noise(x, 1000)


def test_unet_view(vae):
    result = engine.roundtrip(gradient_image(64, 64), vae, size=256)
    decoded, pixels, info = engine.unet_view(result.latent, result.image, vae, timestep=500)
    assert decoded.size == pixels.size == result.image.size
    assert info["timestep"] == 500 and info["psnr_pixel_noise"] is not None


# ---------------------------------------------------------------------------
# Uploads (engine.images.open_image): the bad inputs the tab must survive


def png_bytes(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kwargs.pop("format", "PNG"), **kwargs)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with a tiny IDAT: a few bytes on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width, height", [(8000, 8000), (20000, 20000)])
def test_bomb_guard_rejects_without_decoding(monkeypatch, width, height):
    """8000x8000 trips our 40 MP limit; 20000x20000 trips PIL's own bomb check in Image.open."""
    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ValueError, match="megapixels"):
        open_image(png_header_only(width, height))


def test_exif_rotation_is_applied():
    img = gradient_image(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    opened, notes = open_image(png_bytes(img, format="JPEG", exif=exif, quality=95))
    assert opened.size == (20, 40)
    assert any("EXIF" in n for n in notes)


def test_rgba_is_composited_over_white():
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 8, 16))
    opened, _ = open_image(png_bytes(rgba))
    arr = np.asarray(opened)
    assert opened.mode == "RGB"
    assert tuple(arr[0, 12]) == (255, 255, 255)  # transparent -> white, not red or black
    assert tuple(arr[0, 2]) == (0, 0, 255)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK"])
def test_other_modes_become_rgb(mode):
    opened, _ = open_image(png_bytes(gradient_image(16, 16).convert(mode), format="TIFF" if mode == "CMYK" else "PNG"))
    assert opened.mode == "RGB" and opened.size == (16, 16)


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (16, 16), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    opened, notes = open_image(buf.getvalue())
    assert tuple(np.asarray(opened)[8, 8]) == (255, 0, 0)
    assert any("first of its 3 frames" in n for n in notes)


@pytest.mark.parametrize("data, message", [
    (None, "No image"),
    (b"this is not an image", "not an image"),
    (png_bytes(Image.effect_noise((64, 64), 64).convert("RGB"))[:3000], "damaged or truncated"),
    (png_bytes(Image.new("RGB", (1, 1))), "at least 8 pixels"),
], ids=["none", "not-an-image", "truncated-png", "1x1"])
def test_bad_uploads_get_clear_messages(data, message):
    with pytest.raises(ValueError, match=message):
        open_image(data)


def test_a_vae_preset_suggests_its_training_size():
    from engine.presets import Preset, get_preset

    assert default_size(get_preset("mini VAE (offline)", "vae"), engine.SIZES) == 64  # trained on 64 px pictures
    assert default_size(Preset(name="x", kind="vae", path="/x"), engine.SIZES) == 512
    assert default_size(Preset(name="x", kind="vae", path="/x", options={"default_size": 100}), engine.SIZES) == 512
