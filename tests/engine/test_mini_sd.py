"""The mini SD / SDXL parts: sizes, the diffusers folder layout, encoding as the pipelines do, the mini CLIP.

Everything here is built at the ``smoke`` size (the shipped architecture at toy
width), randomly initialised and seeded, so it runs in seconds without the
trained weights.
"""

from __future__ import annotations

import filecmp
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from engine import mini_sd as ms

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """Smoke-size mini SD and mini SDXL, saved by our own code as the training script ships them."""
    root = tmp_path_factory.mktemp("mini")
    torch.manual_seed(0)
    te, te_2, vae = ms.make_text_encoder("smoke"), ms.make_text_encoder_2("smoke"), ms.make_vae("smoke", 0.5)
    sd = ms.build_sd_pipeline(ms.make_unet("smoke"), vae, te)
    sdxl = ms.build_sdxl_pipeline(ms.make_unet("smoke", sdxl=True), vae, te, te_2)
    return {"sd": ms.save_pipeline(sd, root / "mini-sd"), "sdxl": ms.save_pipeline(sdxl, root / "mini-sdxl")}


def test_full_size_weights_fit_in_60_mb_as_fp16():
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        parts = [ms.make_text_encoder("full"), ms.make_text_encoder("full"), ms.make_text_encoder_2("full"),
                 ms.make_vae("full"), ms.make_vae("full"), ms.make_unet("full"), ms.make_unet("full", sdxl=True)]
    total_bytes = 2 * sum(ms.count_parameters(p) for p in parts)  # the VAE and first encoder are in both folders
    assert total_bytes <= 60e6, total_bytes / 1e6


def test_vae_maps_64x64x3_to_8x8x4_and_back():
    vae = ms.make_vae("smoke").eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode()
        assert z.shape == (2, 4, 8, 8)
        assert vae.decode(z).sample.shape == (2, 3, 64, 64)
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8


def test_sdxl_unet_takes_pooled_text_and_six_time_ids():
    cfg = ms.unet_config("smoke", sdxl=True)
    s = ms.SIZES["smoke"]
    assert cfg["addition_embed_type"] == "text_time"
    assert cfg["cross_attention_dim"] == s["text"]["hidden_size"] + s["text_2"]["hidden_size"]
    unet = ms.make_unet("smoke", sdxl=True)
    time_ids = ms.add_time_ids(torch.tensor([[16, 16], [64, 64]]), torch.tensor([[0, 0], [16, 8]]))
    assert time_ids.tolist() == [[16, 16, 0, 0, 64, 64], [64, 64, 16, 8, 64, 64]]
    with torch.no_grad():
        out = unet(torch.randn(2, 4, 8, 8), torch.tensor([10, 500]),
                   encoder_hidden_states=torch.randn(2, 77, cfg["cross_attention_dim"]),
                   added_cond_kwargs={"text_embeds": torch.randn(2, s["text_2"]["projection_dim"]),
                                      "time_ids": time_ids}).sample
    assert out.shape == (2, 4, 8, 8)


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_saved_pipeline_loads_with_the_plain_diffusers_class_and_makes_64px_images(saved, kind):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(str(saved[kind]))  # no dtype: every part must come out in one dtype (fp32)
    pipe.set_progress_bar_config(disable=True)
    assert {m.dtype for m in pipe.components.values() if isinstance(m, torch.nn.Module)} == {torch.float32}
    common = dict(num_inference_steps=2, guidance_scale=5.0, height=64, width=64, num_images_per_prompt=2)
    images = pipe("a blue sneaker", generator=torch.Generator().manual_seed(0), output_type="np", **common).images
    assert images.shape == (2, 64, 64, 3)
    latents = pipe("a blue sneaker", generator=torch.Generator().manual_seed(0), output_type="latent",
                   **common).images
    assert latents.shape == (2, 4, 8, 8)


def test_saved_weights_are_fp16_and_tokenizers_are_the_projects_files(saved):
    for path in saved.values():
        for weights in path.rglob("*.safetensors"):
            with safe_open(str(weights), "pt") as f:
                assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}, weights
    for name, source in ms.TOKENIZER_DIRS.items():
        folder = saved["sdxl"] / name
        names = sorted(p.name for p in source.iterdir())
        assert sorted(p.name for p in folder.iterdir()) == names
        assert not filecmp.cmpfiles(source, folder, names, shallow=False)[1]
    index = json.loads((saved["sdxl"] / "model_index.json").read_text())
    assert index["force_zeros_for_empty_prompt"] is True
    assert ms.load_pipeline(saved["sd"]).scheduler.__class__.__name__ == "PNDMScheduler"


def test_our_encoding_is_the_pipelines_encode_prompt(saved):
    prompts = ["a red ankle boot", "sneakers in yellow"]
    sd = ms.load_pipeline(saved["sd"])
    theirs, _ = sd.encode_prompt(prompts, "cpu", 1, False)
    ours = ms.encode_sd(sd.tokenizer, sd.text_encoder, prompts)
    assert torch.equal(ours, theirs)

    xl = ms.load_pipeline(saved["sdxl"])
    theirs, _, pooled, _ = xl.encode_prompt(prompts, device="cpu", num_images_per_prompt=1,
                                            do_classifier_free_guidance=False)
    ours, ours_pooled = ms.encode_sdxl({"tokenizer": xl.tokenizer, "tokenizer_2": xl.tokenizer_2}, xl.text_encoder,
                                       xl.text_encoder_2, prompts)
    assert torch.equal(ours, theirs) and torch.equal(ours_pooled, pooled)


def test_short_clip_windows_give_the_same_states_as_77_tokens():
    """CLIP's causal mask: training the text tower on 16 tokens is training it on the first 16 of 77."""
    te = ms.make_text_encoder("smoke").eval()
    tok = ms.load_tokenizers()["tokenizer"]
    with torch.no_grad():
        short = te(ms.tokenize(tok, ["a photo of a red ankle boot"], 16))
        full = te(ms.tokenize(tok, ["a photo of a red ankle boot"]))
    assert torch.allclose(short.last_hidden_state, full.last_hidden_state[:, :16], atol=1e-5)
    assert torch.allclose(short.pooler_output, full.pooler_output, atol=1e-5)


def test_contrastive_loss_rewards_matching_pairs():
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    keys = torch.arange(8)
    scale = torch.tensor(2.0)
    matched = ms.contrastive_loss(emb, emb, scale, keys)
    shuffled = ms.contrastive_loss(emb, emb[torch.randperm(8)], scale, keys)
    assert matched < shuffled
    # two items with the same key count as positives of each other
    twins = ms.contrastive_loss(emb, emb, scale, torch.tensor([0, 0, 1, 2, 3, 4, 5, 6]))
    assert torch.isfinite(twins)


def test_mini_clip_learns_a_fixed_batch():
    torch.manual_seed(0)
    model = ms.MiniCLIP("smoke")
    tok = ms.load_tokenizers()
    captions = ["a red bag", "a blue bag", "a red sneaker", "a blue sneaker"]
    ids, ids_2 = ms.tokenize(tok["tokenizer"], captions, 16), ms.tokenize(tok["tokenizer_2"], captions, 16)
    pictures = torch.rand(4, 3, 64, 64) * 2 - 1
    keys = torch.arange(4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model(pictures, ids, ids_2, keys)["loss"].item()
    for _ in range(25):
        loss = model(pictures, ids, ids_2, keys)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    assert min(model.retrieval_accuracy(pictures, ids, ids_2, keys)) >= 0.75


def test_training_cli_smoke_run_ships_loadable_pipelines_and_resumes(tmp_path):
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    import train_mini_sd

    args = ["all", "--smoke", "--out", str(tmp_path / "run"), "--num-items", "64", "--threads", "1"]
    train_mini_sd.main(args)
    for name in ("mini-sd", "mini-sdxl"):
        folder = tmp_path / "run" / "assets" / name
        assert (folder / "README.md").exists() and (folder / "samples.png").exists()
        assert ms.load_pipeline(folder).unet.config.sample_size == 8
    record = json.loads((tmp_path / "run" / "assets" / "mini-sd" / "training.json").read_text())
    assert set(record) >= {"clip", "vae", "unet-sd"} and record["size"] == "smoke"
    assert record["vae"]["scaling_factor"] == pytest.approx(1 / record["vae"]["latent_std"], rel=1e-3)
    assert ms.load_pipeline(tmp_path / "run" / "assets" / "mini-sd").vae.config.scaling_factor == pytest.approx(
        record["vae"]["scaling_factor"])
    before = (tmp_path / "run" / "unet-sd" / "checkpoint.pt").stat().st_mtime
    train_mini_sd.main(args)  # everything is done: nothing runs again
    assert (tmp_path / "run" / "unet-sd" / "checkpoint.pt").stat().st_mtime == before
