"""Classifier guidance (Dhariwal & Nichol 2021, §4) on a tiny UNet and a tiny noise-aware classifier."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DModel

from engine.errors import UserError
from engine.fashion import sampling as fashion
from engine.fashion.classifier import NoisyClassifier, guide_noise, load_noisy_classifier, log_prob_gradient
from engine.presets import Preset
from tests.tiny_models import TINY_CLASS_UNET as TINY_UNET


@pytest.fixture(scope="module")
def unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(**TINY_UNET).eval()


@pytest.fixture(scope="module")
def classifier() -> NoisyClassifier:
    torch.manual_seed(1)
    return NoisyClassifier(widths=(4, 8), temb_dim=16).eval()


def run(unet, classifier, **kw):
    kw = dict(dict(label="Bag", count=2, sampler="DDIM", num_inference_steps=3, guidance_scale=1.0, seed=7,
                   cpu_bf16=False), **kw)
    return list(fashion.sample(unet, classifier=classifier, **kw))


def test_guided_step_equals_the_hand_computed_one(unet, classifier):
    """Step 1 of the sampler with s = 4, against Algorithm 2 written out by hand: one backward pass per image."""
    s, label = 4.0, 8
    first = run(unet, classifier, classifier_scale=s, guidance_scale=2.0)[0]

    scheduler = fashion.scheduler_for("DDIM")
    scheduler.set_timesteps(3)
    t = scheduler.timesteps[0]
    generator = torch.Generator("cpu").manual_seed(7)
    x = torch.randn((2, 1, 32, 32), generator=generator)
    labels = torch.full((2,), label)
    with torch.no_grad():
        cond = unet(x, t, class_labels=labels).sample
        uncond = unet(x, t, class_labels=torch.full_like(labels, 10)).sample
    eps = uncond + 2.0 * (cond - uncond)
    grads = []
    for i in range(2):  # ∇_x log softmax(f(x, t))_y, image by image
        xi = x[i:i + 1].clone().requires_grad_(True)
        log_p = torch.log_softmax(classifier(xi, t), dim=-1)[0, label]
        grads.append(torch.autograd.grad(log_p, xi)[0])
    abar = scheduler.alphas_cumprod[int(t)]
    guided = eps - s * (1 - abar).sqrt() * torch.cat(grads)
    expected = scheduler.step(guided, t, x, eta=0.0, use_clipped_model_output=True).prev_sample

    assert first.timestep == int(t)
    assert torch.allclose(first.latents, expected, atol=1e-5), (first.latents - expected).abs().max()
    unguided = run(unet, classifier, classifier_scale=0.0, guidance_scale=2.0)[0]
    assert (unguided.latents - first.latents).abs().max() > 1e-4  # guidance did something


def test_gradient_matches_finite_differences(classifier):
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(3)).double()
    model = NoisyClassifier(widths=(4, 8), temb_dim=16).double().eval()
    model.load_state_dict(classifier.state_dict())
    grad = log_prob_gradient(model, x, 300, torch.tensor([2])).double()
    pixel, h = (0, 0, 15, 16), 1e-6
    up, down = x.clone(), x.clone()
    up[pixel] += h
    down[pixel] -= h
    log_p = [torch.log_softmax(model(v, 300), -1)[0, 2].item() for v in (up, down)]
    assert grad[pixel].item() == pytest.approx((log_p[0] - log_p[1]) / (2 * h), rel=1e-4)


def test_guide_noise_formula():
    eps, grad = torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 2.0)
    out = guide_noise(eps, grad, 0.64, 3.0)  # σ = √(1 − 0.64) = 0.6
    assert torch.allclose(out, torch.full_like(eps, 1 - 3.0 * 0.6 * 2.0))


def test_scale_zero_is_the_plain_sampler(unet, classifier):
    plain = run(unet, None)[-1]
    off = run(unet, classifier, classifier_scale=0)[-1]
    assert torch.equal(plain.images, off.images)
    assert off.info["classifier_scale"] == 0.0


@pytest.mark.parametrize("bad,message", [
    (-1, "classifier_scale must be between 0 and 50 \\(0 means off\\), got -1"),
    (51, "classifier_scale must be between 0 and 50 \\(0 means off\\), got 51"),
    (float("nan"), "classifier_scale must be between 0 and 50 .*got nan"),
    ("strong", "classifier_scale must be a number, got 'strong'"),
])
def test_bad_scales_are_refused(unet, classifier, bad, message):
    with pytest.raises(UserError, match=message):
        run(unet, classifier, classifier_scale=bad)


def test_a_scale_without_a_classifier_is_refused(unet):
    with pytest.raises(UserError, match="noise-aware classifier"):
        run(unet, None, classifier_scale=2.0)


def test_loader_round_trip(tmp_path, classifier):
    from safetensors.torch import save_file

    save_file(classifier.state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(classifier.config))
    again = load_noisy_classifier(Preset("c", "noisy-classifier", path=str(tmp_path)), "cpu", torch.float32, True)
    x = torch.randn(3, 1, 32, 32)
    assert not again.training
    assert torch.equal(again(x, torch.tensor([0, 500, 999])), classifier(x, torch.tensor([0, 500, 999])))


def test_compare_runs_the_four_panels_from_the_same_noise(unet, classifier):
    from engine.fashion.guidance import MODES, Panel, compare
    from engine.fashion.judge import FashionJudge

    judge = FashionJudge().eval()
    runs = list(compare(unet, classifier, judge, "Bag", 2, "DDIM", 3, 2.0, 4.0, seed=7, cpu_bf16=False))
    panels = [r for r in runs if isinstance(r, Panel)]
    assert [p.mode for p in panels] == list(MODES) and len(runs) == 4 * 3 + 4
    assert [(p.guidance_scale, p.classifier_scale) for p in panels] == [(1, 0), (2, 0), (1, 4), (2, 4)]
    plain = run(unet, None, guidance_scale=1.0)[-1]
    assert torch.equal(panels[0].result.images, plain.images)  # "none" is the plain sampler, same seed
    both = run(unet, classifier, guidance_scale=2.0, classifier_scale=4.0)[-1]
    assert torch.equal(panels[3].result.images, both.images)
    summary = panels[2].summary()
    assert 0 <= summary["judged_as_asked"] <= 2 and summary["seconds_per_image"] > 0
    assert summary["class_fidelity"] == summary["judged_as_asked"] / 2


def test_compare_checks_its_values_first(unet, classifier):
    from engine.fashion.guidance import compare

    with pytest.raises(UserError, match="classifier_scale must be between 0 and 50"):
        next(compare(unet, classifier, None, "Bag", 2, "DDIM", 3, 2.0, 99, seed=7))
    with pytest.raises(UserError, match="mode must be one of"):
        next(compare(unet, classifier, None, "Bag", 2, "DDIM", 3, 2.0, 1, seed=7, modes=("none", "clip")))
