"""The UNet's anatomy from the published configs, on the meta device: parameter and FLOP pins, blocks,
latent vs pixel space, the 2x side -> 16x attention table, presets and input checks."""

import json
import os

import pytest
import torch

from engine.unet import anatomy as A

SD15_UNET_PARAMETERS = 859_520_964
SDXL_UNET_PARAMETERS = 2_567_463_684
SD15_TFLOP_512 = 0.80  # one UNet call, one sample, 64x64 latent (measured 0.8033)
SDXL_TFLOP_1024 = 6.76  # one UNet call, one sample, 128x128 latent (measured 6.7612)


@pytest.fixture(scope="module")
def sd15():
    return A.unet_anatomy(A.shipped_config("sd15", "unet"), 512, 512)


@pytest.fixture(scope="module")
def sdxl():
    return A.unet_anatomy(A.shipped_config("sdxl-base", "unet"), 1024, 1024)


def _block(anatomy, name):
    return next(b for b in anatomy["blocks"] if b["name"] == name)


def test_published_parameter_counts_are_exact(sd15, sdxl):
    assert sd15["total_parameters"] == SD15_UNET_PARAMETERS
    assert sdxl["total_parameters"] == SDXL_UNET_PARAMETERS
    # every parameter sits in exactly one row of the block table
    assert sum(b["parameters"] for b in sd15["blocks"]) == SD15_UNET_PARAMETERS
    assert sum(b["parameters"] for b in sdxl["blocks"]) == SDXL_UNET_PARAMETERS


def test_flops_per_call_match_the_published_figures(sd15, sdxl):
    assert sd15["flops_per_call"] / 1e12 == pytest.approx(SD15_TFLOP_512, rel=0.02)
    assert sdxl["flops_per_call"] / 1e12 == pytest.approx(SDXL_TFLOP_1024, rel=0.02)
    for anatomy in (sd15, sdxl):
        assert sum(b["flops"] for b in anatomy["blocks"]) == anatomy["flops_per_call"]
        assert 0 < anatomy["self_attention_score_flops"] < anatomy["attention_flops"] < anatomy["flops_per_call"]
    # batch 1 is the convention: a batch of 2 (one guided step) is twice the FLOPs
    assert "batch 1" in sd15["convention"]


def test_blocks_go_down_then_up_with_cross_attention_where_the_config_puts_it(sd15, sdxl):
    names = [b["name"] for b in sd15["blocks"]]
    assert names == ["time_embedding", "conv_in", "down_blocks.0", "down_blocks.1", "down_blocks.2", "down_blocks.3",
                     "mid_block", "up_blocks.0", "up_blocks.1", "up_blocks.2", "up_blocks.3", "conv_out"]
    assert [_block(sd15, f"down_blocks.{i}")["resolution"] for i in range(4)] == [[64, 64], [32, 32], [16, 16], [8, 8]]
    assert [_block(sd15, f"up_blocks.{i}")["out_resolution"] for i in range(4)] == [[16, 16], [32, 32], [64, 64],
                                                                                     [64, 64]]
    assert [_block(sd15, f"down_blocks.{i}")["channels"] for i in range(4)] == [320, 640, 1280, 1280]
    for anatomy, width in ((sd15, 768), (sdxl, 2048)):
        for b in anatomy["blocks"]:
            assert b["cross_attention"] == ("CrossAttn" in b["type"]), b["name"]
            assert b["context_width"] == (width if b["cross_attention"] else None)
    # SDXL (Podell et al. 2023, Table 1): no attention at the highest level, then 2 and 10 layers per transformer
    assert [_block(sdxl, f"down_blocks.{i}")["transformer_layers"] for i in range(3)] == [0, 2 * 2, 2 * 10]
    assert _block(sdxl, "down_blocks.0")["cross_attention"] is False
    assert _block(sdxl, "mid_block")["transformer_layers"] == 10
    assert [_block(sdxl, f"down_blocks.{i}")["resolution"] for i in range(3)] == [[128, 128], [64, 64], [32, 32]]


def test_latent_space_saves_orders_of_magnitude_over_pixel_space(sd15, sdxl):
    # SD 1.5: the highest attention is at the latent's full 64x64 = 4096 tokens, 8 heads
    assert (sd15["attention_tokens"], sd15["attention_heads"]) == (4096, 8)
    assert sd15["attention_matrix_bytes"] == 4096**2 * 8 * 2 == 268_435_456
    # SDXL: it starts one level down, 64x64 = 4096 tokens, 640 / 64 = 10 heads
    assert (sdxl["attention_tokens"], sdxl["attention_heads"]) == (4096, 10)
    assert sdxl["attention_matrix_bytes"] == 335_544_320
    for anatomy in (sd15, sdxl):
        pixel = anatomy["pixel_space"]
        assert pixel["input_shape"][1] == 3 and pixel["input_shape"][2:] == [anatomy["height"], anatomy["width"]]
        assert pixel["flops_per_call"] > 100 * anatomy["flops_per_call"]
        # 8x the side: 64x the tokens, 64^2 = 4096x the attention matrix (not 16x: that is for 2x the side)
        assert pixel["attention_tokens"] == 64 * anatomy["attention_tokens"]
        assert pixel["attention_matrix_bytes"] == 4096 * anatomy["attention_matrix_bytes"]
        assert anatomy["pixel_over_latent"]["self_attention_score_flops"] == pytest.approx(4096)
    assert sd15["pixel_space"]["attention_matrix_bytes"] == 2**40  # 1 TiB for one matrix


def test_the_anatomy_is_plain_json_data(sd15):
    json.dumps(sd15)  # JSON-able: the tab's Markdown (tabs.anatomy_tables) and the API's JSON read the same dict


def test_presets_map_to_configs_without_downloads():
    sd15, sdxl = A.shipped_config("sd15", "unet"), A.shipped_config("sdxl-base", "unet")
    assert A.unet_config_for("SD 1.5") == sd15
    assert A.unet_config_for("SDXL base 1.0") == sdxl
    assert A.unet_config_for("SDXL Turbo (few steps)") == sdxl  # same architecture as SDXL base
    mini = json.loads((A.REPO_ROOT / "assets/mini-sd/unet/config.json").read_text())
    assert A.unet_config_for("mini-SD (offline)") == mini
    assert A.unet_config_for("mini-SDXL (offline)")["addition_embed_type"] == "text_time"
    assert A.vae_scale_factor_for("SD 1.5") == A.vae_scale_factor_for("mini-SD (offline)") == 8
    small = A.anatomy_for_preset("mini-SD (offline)", 64, 64)
    assert small["model"] == "mini-SD (offline)" and small["total_parameters"] == 5_835_012


@pytest.mark.parametrize("name", ["Stable Diffusion 9", "assets/mini-sd", "../assets/configs/sd15", ""])
def test_unknown_models_are_refused_with_the_choices(name):
    with pytest.raises(ValueError, match="Unknown model") as e:
        A.unet_config_for(name)
    assert "'SD 1.5'" in str(e.value) and "'mini-SD (offline)'" in str(e.value)


def test_a_hub_preset_without_shipped_configs_says_so(tmp_path, monkeypatch):
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps([{"name": "Someone's SD", "kind": "sd", "repo": "someone/some-sd"}]))
    monkeypatch.setenv("EXPLORER_MODELS", str(extra))
    with pytest.raises(ValueError, match="No shipped config for 'Someone's SD'"):
        A.unet_config_for("Someone's SD")
    with pytest.raises(ValueError, match="Choose one of: sd15, sdxl-base"):
        A.shipped_config("sd3", "unet")
    with pytest.raises(ValueError, match="Unknown model part"):
        A.shipped_config("sd15", "../presets")


@pytest.mark.parametrize("width, height, message", [
    (500, 512, "multiple of 8"), (512, 36, "multiple of 8"), (32, 512, "between 64 and 2048"),
    (512, 4096, "between 64 and 2048"), ("512.5", 512, "whole number"), (True, 512, "whole number"),
    (1e12, 512, "width must be between 64 and 2048"),
])
def test_bad_sizes_are_refused(width, height, message):
    with pytest.raises(ValueError, match=message):
        A.unet_anatomy(A.shipped_config("sd15", "unet"), width, height)


def test_other_configs_are_refused():
    with pytest.raises(ValueError, match="UNet2DConditionModel"):
        A.build_unet_on_meta(A.shipped_config("sd15", "vae"))
    with pytest.raises(ValueError, match="vae_scale_factor"):
        A.unet_anatomy(A.shipped_config("sd15", "unet"), 512, 512, vae_scale_factor=0)


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_meta_build_allocates_no_weights():
    before = _rss_bytes()
    unet = A.build_unet_on_meta(A.shipped_config("sdxl-base", "unet"))
    grown = _rss_bytes() - before
    assert all(p.is_meta for p in unet.parameters()) and all(b.is_meta for b in unet.buffers())
    assert A.count_parameters(unet) == SDXL_UNET_PARAMETERS
    weights_gib = 4 * SDXL_UNET_PARAMETERS / 2**30
    assert grown < 300 * 2**20, f"RSS grew {grown / 2**20:.0f} MiB; fp32 weights would be {weights_gib:.1f} GiB"
    assert torch.empty(0, device="meta").is_meta
