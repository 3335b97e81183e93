"""Engine tests for the class-conditional Fashion-MNIST sampler, on a tiny randomly initialised UNet."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel

from engine.fashion import sampling as fashion
from engine.fashion.judge import FashionJudge, judge_images, load_classifier
from engine.noise_schedule import predict_x0
from engine.errors import check_seed
from engine.fashion.configs import SCHEDULER_CONFIG
from engine.metrics import frechet_distance
from engine.fashion import data
from engine.fashion.data import CLASS_NAMES, NULL_CLASS, read_idx, to_model_space, to_unit_range
from tests.tiny_models import TINY_CLASS_UNET as TINY_UNET


@pytest.fixture(scope="module")
def unet() -> UNet2DModel:
    torch.manual_seed(0)
    model = UNet2DModel(**TINY_UNET).eval()
    # A random init barely uses the class embedding; make it matter so classes give different outputs.
    with torch.no_grad():
        model.class_embedding.weight.normal_(0, 3.0)
    return model


def run(unet, **kw):
    kw.setdefault("label", "Sandal")
    kw.setdefault("count", 2)
    kw.setdefault("sampler", "DPM-Solver++")
    kw.setdefault("num_inference_steps", 4)
    kw.setdefault("guidance_scale", 2.0)
    kw.setdefault("seed", 0)
    kw.setdefault("cpu_bf16", False)
    return fashion.sample_to_end(unet, **kw)


# ---------------------------------------------------------------------------------------------
# Sampling


@pytest.mark.parametrize("sampler,steps", [("DDPM", 10), ("DDIM", 3), ("DPM-Solver++", 3)])
def test_shapes_and_range(unet, sampler, steps):
    result = run(unet, count=3, sampler=sampler, num_inference_steps=steps)
    assert result.images.shape == (3, 1, 32, 32)
    assert result.images.dtype == torch.float32
    assert result.images.min() >= 0 and result.images.max() <= 1
    assert result.images.std() > 0  # not a constant image
    assert result.info["steps"] == steps and result.info["sampler"] == sampler and result.info["count"] == 3


def test_steps_are_streamed(unet):
    states = list(fashion.sample(unet, "Bag", 2, "DDIM", 5, 1.0, 3, cpu_bf16=False))
    steps, final = states[:-1], states[-1]
    assert [s.index for s in steps] == list(range(5))
    assert isinstance(final, fashion.SampleResult)
    assert all(s.latents.shape == (2, 1, 32, 32) and s.pred_original.shape == (2, 1, 32, 32) for s in steps)
    timesteps = [s.timestep for s in steps]
    assert timesteps == sorted(timesteps, reverse=True) and all(0 <= t < 1000 for t in timesteps)
    # the final images are the last x_t mapped to [0, 1]
    assert torch.allclose(final.images, to_unit_range(steps[-1].latents))


@pytest.mark.parametrize("sampler", fashion.SAMPLERS)
def test_same_seed_same_images(unet, sampler):
    steps = 10 if sampler == "DDPM" else 3
    a = run(unet, sampler=sampler, num_inference_steps=steps, seed=123)
    b = run(unet, sampler=sampler, num_inference_steps=steps, seed=123)
    c = run(unet, sampler=sampler, num_inference_steps=steps, seed=124)
    assert torch.equal(a.images, b.images)
    assert not torch.allclose(a.images, c.images)


def test_different_classes_differ(unet):
    a = run(unet, label="Sandal", seed=5)
    b = run(unet, label="Trouser", seed=5)
    assert (a.images - b.images).abs().mean() > 1e-3


def test_seed_out_of_range_is_refused_as_in_every_tab(unet):
    """One seed rule for the whole app (engine.errors.check_seed): 0 .. 2**32 - 1, nothing wrapped."""
    a = run(unet, seed=2**32 - 1)
    assert a.request.seed == 2**32 - 1 and a.info["seed"] == 2**32 - 1
    for bad in (2**32 + 7, -1):
        with pytest.raises(ValueError, match="seed must be between 0 and 4294967295"):
            run(unet, seed=bad)


def test_guidance_one_skips_the_unconditional_pass(unet):
    calls = []
    handle = unet.register_forward_hook(lambda m, args, kwargs_out: calls.append(args[0].shape[0]))
    try:
        run(unet, count=3, num_inference_steps=2, guidance_scale=1.0)
        no_cfg = list(calls)
        calls.clear()
        run(unet, count=3, num_inference_steps=2, guidance_scale=3.0)
    finally:
        handle.remove()
    assert no_cfg == [3, 3]
    assert calls == [6, 6]


def test_predict_noise_is_classifier_free_guidance(unet):
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(500)
    labels = torch.tensor([5, 5])
    with torch.no_grad():
        cond = unet(x, t, class_labels=labels).sample
        uncond = unet(x, t, class_labels=torch.full_like(labels, NULL_CLASS)).sample
        guided = fashion.predict_noise(unet, x, t, labels, 3.0)
    assert torch.allclose(guided, uncond + 3.0 * (cond - uncond), atol=1e-5)


def _reference(unet, scheduler, label: int, count: int, steps: int, guidance: float, seed: int) -> torch.Tensor:
    """The plain diffusers loop that ``fashion.sample`` is built on."""
    generator = torch.Generator("cpu").manual_seed(seed)
    scheduler.set_timesteps(steps)
    x = torch.randn((count, 1, 32, 32), generator=generator) * scheduler.init_noise_sigma
    labels = torch.full((count,), label)
    with torch.no_grad():
        for t in scheduler.timesteps:
            cond = unet(x, t, class_labels=labels).sample
            uncond = unet(x, t, class_labels=torch.full_like(labels, 10)).sample
            eps = uncond + guidance * (cond - uncond)
            extra = {"use_clipped_model_output": True} if isinstance(scheduler, DDIMScheduler) else {}
            x = scheduler.step(eps, t, x, generator=generator, **extra).prev_sample
    return (x / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("sampler,steps", [("DDPM", 12), ("DDIM", 6), ("DPM-Solver++", 6)])
def test_matches_stepping_the_diffusers_scheduler(unet, sampler, steps):
    config = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02)
    scheduler = {
        "DDPM": DDPMScheduler(**config),
        "DDIM": DDIMScheduler(**config),
        "DPM-Solver++": DPMSolverMultistepScheduler(**config, algorithm_type="dpmsolver++", thresholding=True,
                                                    sample_max_value=1.0),
    }[sampler]
    expected = _reference(unet, scheduler, label=8, count=2, steps=steps, guidance=2.5, seed=11)
    got = run(unet, label="Bag", count=2, sampler=sampler, num_inference_steps=steps, guidance_scale=2.5, seed=11)
    assert torch.allclose(got.images, expected, atol=1e-4), (got.images - expected).abs().max()


def test_predicted_x0_matches_ddpm_scheduler(unet):
    """Our x̂_0 = (x_t − √(1−ᾱ) ε̂)/√ᾱ equals the DDPM scheduler's own (before its clipping)."""
    states = list(fashion.sample(unet, 0, 1, "DDIM", 4, 1.0, 0, cpu_bf16=False))
    step = states[1]
    assert step.pred_original.abs().max() > 0
    scheduler = fashion.scheduler_for("DDPM")
    abar = scheduler.alphas_cumprod[step.timestep]
    eps = torch.randn(1, 1, 32, 32)
    x = torch.randn(1, 1, 32, 32)
    assert torch.allclose(predict_x0(x, eps, abar), (x - (1 - abar).sqrt() * eps) / abar.sqrt())


def test_schedulers_share_one_config():
    cfg = dict(SCHEDULER_CONFIG, beta_end=0.03)
    for name, cls in (("DDPM", DDPMScheduler), ("DDIM", DDIMScheduler), ("DPM-Solver++", DPMSolverMultistepScheduler)):
        s = fashion.scheduler_for(name, cfg)
        assert isinstance(s, cls)
        assert s.config.beta_end == 0.03 and s.config.num_train_timesteps == 1000
    dpm = fashion.scheduler_for("DPM-Solver++")
    assert dpm.config.algorithm_type == "dpmsolver++"
    assert dpm.config.thresholding and dpm.config.sample_max_value == 1.0  # clips x0 like DDPM/DDIM do
    assert not fashion.scheduler_for("DPM-Solver++", dict(cfg, clip_sample=False)).config.thresholding


# ---------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize("kwargs,message", [
    (dict(count=0), "between 1 and 64"),
    (dict(count=65), "between 1 and 64"),
    (dict(count=2.5), "count\\) must be a whole number between 1 and 64, got 2.5"),
    (dict(sampler="Euler"), "sampler must be one of 'DDPM', 'DDIM', 'DPM-Solver\\+\\+', got 'Euler'"),
    (dict(sampler="DDPM", num_inference_steps=5), "num_inference_steps must be between 10 and 1000 for DDPM, got 5"),
    (dict(sampler="DPM-Solver++", num_inference_steps=101), "between 2 and 100"),
    (dict(sampler="DDIM", num_inference_steps=1), "between 2 and 500"),
    (dict(label="Hat"), "Unknown class: label must be a name .* got 'Hat'"),
    (dict(label=10), "label must be .* an index from 0 to 9, got 10"),
    (dict(label=-1), "label must be .* an index from 0 to 9, got -1"),
    (dict(seed=1.5), "seed must be a whole number"),
    (dict(seed="abc"), "seed must be a whole number"),
    (dict(seed=None), "seed must be a whole number"),
    (dict(guidance_scale=11), "guidance_scale must be between 0 and 10"),
    (dict(guidance_scale=float("nan")), "guidance_scale must be between 0 and 10 .*got nan"),
])
def test_validation_messages(unet, kwargs, message):
    with pytest.raises(ValueError, match=message):
        run(unet, **kwargs)


def test_labels_by_name_or_index():
    assert fashion.class_index("Ankle boot") == 9
    assert fashion.class_index("ankle BOOT ") == 9
    assert fashion.class_index(3) == 3
    assert fashion.class_index("5") == 5
    assert [fashion.class_index(n) for n in CLASS_NAMES] == list(range(10))


def test_seed_check():
    assert check_seed(42.0) == 42 and check_seed(" 17 ") == 17 and check_seed(2**32 - 1) == 2**32 - 1
    for bad in (True, -2, 2**40 + 3, 1.5, "x", None):
        with pytest.raises(ValueError):
            check_seed(bad)


# ---------------------------------------------------------------------------------------------
# Forward process, schedule, pictures, data, judge


def test_alpha_bar_schedule():
    s = fashion.alpha_bar_schedule()
    assert len(s["t"]) == 1000
    assert np.all(np.diff(s["alpha_bar"]) < 0)
    assert s["alpha_bar"][0] == pytest.approx(1 - 1e-4)
    assert s["signal"][999] < 0.01 and s["noise"][999] > 0.99
    assert np.allclose(s["signal"] ** 2 + s["noise"] ** 2, 1)


def test_forward_process_fades_the_image():
    x0 = torch.ones(1, 1, 32, 32) * 0.8
    noisy = fashion.forward_process(x0, seed=3)
    assert noisy.shape == (len(fashion.FORWARD_TIMESTEPS), 1, 32, 32)
    means = noisy.mean(dim=(1, 2, 3))
    assert means[0] == pytest.approx(0.8, abs=0.02)  # t=0: nearly the image
    assert abs(float(means[-1])) < 0.2  # t=999: nearly pure noise
    assert torch.equal(noisy, fashion.forward_process(x0, seed=3))
    with pytest.raises(ValueError, match="0 to 999"):
        fashion.forward_process(x0, (0, 1000))


def test_to_pil_upscales_by_an_integer_factor():
    images = torch.rand(3, 1, 32, 32)
    pils = fashion.to_pil(images, scale=4)
    assert len(pils) == 3 and pils[0].size == (128, 128) and pils[0].mode == "L"
    small = np.asarray(fashion.to_pil(images, scale=1)[0])
    assert np.array_equal(np.asarray(pils[0])[::4, ::4], small)


def test_trajectory_indices():
    assert fashion.trajectory_indices(1000) == [0, 143, 285, 428, 571, 714, 856, 999]
    assert fashion.trajectory_indices(3) == [0, 1, 2]
    assert fashion.trajectory_indices(20)[-1] == 19


def test_read_idx_and_model_space(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint32).reshape(2, 28, 28) % 256
    header = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    path = tmp_path / "x-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(header + images.astype(np.uint8).tobytes())
    read = read_idx(path)
    assert read.shape == (2, 28, 28) and np.array_equal(read, images.astype(np.uint8))
    x = to_model_space(read)
    assert x.shape == (2, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert torch.all(x[:, :, :2, :] == -1) and torch.all(x[:, :, :, -2:] == -1)  # 2 px black border
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an idx"):
        read_idx(bad)


def test_the_data_root_is_a_setting_and_a_missing_data_set_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ROOT_VARIABLE, str(tmp_path))
    assert data.data_dir() == tmp_path
    with pytest.raises(data.DatasetMissing, match="apt-get install dataset-fashion-mnist"):
        data.load_split("test")
    with pytest.raises(SystemExit) as e:  # what the scripts call first: one line, no traceback
        data.require_dataset()
    assert str(e.value).count("\n") == 0 and "apt-get install dataset-fashion-mnist" in str(e.value)
    assert data.ROOT_VARIABLE in str(e.value)


def test_the_app_shows_the_shipped_test_images(tmp_path, monkeypatch):
    """Two per class, from assets/, with no data set installed (the forward process, the timestep experiment)."""
    monkeypatch.setenv(data.ROOT_VARIABLE, str(tmp_path))
    assert data.EXAMPLES_FILE.is_file() and data.EXAMPLES_FILE.parent.parent.name == "assets"
    images, labels = data.example_images()
    assert images.shape == (20, 28, 28) and labels.tolist() == [c for c in range(10) for _ in range(2)]
    x0, label = data.example_image(3)
    assert x0.shape == (1, 1, 32, 32) and label == 1
    for bad in (20, -1, 2.5, 1e12):
        with pytest.raises(ValueError, match="example\\) must be .*between 0 and 19"):
            data.example_image(bad)


def test_judge_shapes_and_frechet_distance():
    judge = FashionJudge().eval()
    preds, feats = judge_images(judge, torch.rand(5, 1, 32, 32))
    assert preds.shape == (5,) and feats.shape == (5, 128)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 4))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    shifted = frechet_distance(a, a + 2.0)
    assert shifted == pytest.approx(16.0, rel=1e-6)  # only the means differ: ||2 * 1||^2 = 4 * 4


def test_loaders_round_trip(tmp_path, unet):
    from engine.presets import Preset
    from safetensors.torch import save_file

    unet.save_pretrained(tmp_path / "unet")
    loaded = fashion.load_class_unet(Preset("t", "class-unet", path=str(tmp_path / "unet")), "cpu", torch.float32, True)
    assert isinstance(loaded, UNet2DModel) and not loaded.training
    assert torch.equal(run(loaded).images, run(unet).images)

    judge = FashionJudge()
    (tmp_path / "judge").mkdir()
    save_file(judge.state_dict(), str(tmp_path / "judge" / "model.safetensors"))
    (tmp_path / "judge" / "config.json").write_text(json.dumps(judge.config))
    again = load_classifier(Preset("j", "classifier", path=str(tmp_path / "judge")), "cpu", torch.float32, True)
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(again(x), judge.eval()(x))


def test_default_preset_suits_the_device():
    options = [("book", {"device": "cuda"}), ("cpu model", {"device": "cpu"})]
    assert fashion.default_unet_preset("cpu", options) == "cpu model"
    assert fashion.default_unet_preset("cuda", options) == "book"
    assert fashion.default_unet_preset("mps", [("only", {})]) == "only"
    assert fashion.default_unet_preset("cpu", []) is None
