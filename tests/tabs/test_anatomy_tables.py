"""The UNet tab's anatomy tables (``tabs.anatomy_tables``): the engine's plain dict as Markdown."""

import pytest

from engine.unet import anatomy as A
from tabs.anatomy_tables import anatomy_table


@pytest.fixture(scope="module")
def sd15():
    return A.unet_anatomy(A.shipped_config("sd15", "unet"), 512, 512)


def test_anatomy_table_shows_the_figures(sd15):
    table = anatomy_table(sd15)
    assert "859,520,964 parameters" in table and "803.3 GFLOP per call" in table
    assert "| down_blocks.0 | CrossAttnDownBlock2D | 10,524,480 |" in table
    assert "| one attention matrix (float16, batch 1) | 256 MiB | 1 TiB | 4,096× |" in table


def test_blocks_without_attention_show_a_dash():
    block = {"name": "down_blocks.3", "type": "DownBlock2D", "parameters": 1, "flops": 2_000_000,
             "resolution": None, "out_resolution": None, "channels": None, "resnets": 2, "transformer_layers": 0,
             "cross_attention": False, "context_width": None, "attention_tokens": None, "attention_heads": None}
    row = anatomy_table({**_tiny(), "blocks": [block]}).splitlines()[4]
    assert row == "| down_blocks.3 | DownBlock2D | 1 | 2 MFLOP | - | - | 2 | 0 | no | - | - |"


def _tiny() -> dict:
    space = {"input_shape": [1, 4, 8, 8], "total_parameters": 10, "flops_per_call": 5, "self_attention_score_flops": 1,
             "attention_tokens": 64, "attention_heads": 1, "attention_matrix_bytes": 512}
    ratios = dict.fromkeys(("flops_per_call", "self_attention_score_flops", "attention_tokens",
                            "attention_matrix_bytes"), None)
    return {**space, "width": 64, "height": 64, "attention_dtype": "float16", "pixel_space": space,
            "pixel_over_latent": ratios}
