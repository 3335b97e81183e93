"""The shipped Fashion-MNIST UNet, judged by the shipped classifier: a loose bound that catches a broken model.

At least 85% of 64 samples at 20 DPM-Solver++ steps (guidance 2, the tab's default) must be classified as
the class asked for, for sandal, trouser and bag. Not a timed test.
"""

from __future__ import annotations

import pytest
import torch

from engine import loader
from engine.fashion import sampling as fashion
from engine.fashion.judge import judge_images
from engine.presets import presets_for

UNETS = [p for p in presets_for("class-unet") if not p.is_hub]
JUDGES = [p for p in presets_for("classifier") if not p.is_hub]


@pytest.fixture(scope="module")
def models():
    if not UNETS or not JUDGES:
        pytest.fail("assets/presets.json must ship a local class-unet and a classifier preset")
    unet = loader.load(UNETS[0], device="cpu", dtype=torch.float32)
    judge = loader.load(JUDGES[0], device="cpu", dtype=torch.float32)
    return unet, judge, fashion.scheduler_config_of(UNETS[0].source)


@pytest.mark.slow
@pytest.mark.parametrize("label", ["Sandal", "Trouser", "Bag"])
def test_shipped_model_makes_the_class_asked_for(models, label):
    unet, judge, schedule = models
    result = fashion.sample_to_end(unet, label, 64, "DPM-Solver++", 20, 2.0, seed=2024, scheduler_config=schedule)
    preds, _ = judge_images(judge, result.images)
    share = (preds == fashion.class_index(label)).float().mean().item()
    assert share >= 0.85, f"{label}: only {share:.0%} of 64 samples judged as {label}"


def test_judge_knows_real_test_images(models):
    from engine.fashion.data import example_images, to_model_space, to_unit_range

    _, judge, _ = models
    images, labels = example_images()
    preds, _ = judge_images(judge, to_unit_range(to_model_space(images)))
    assert (preds.numpy() == labels).mean() >= 0.8
