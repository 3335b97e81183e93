"""Preloading for Spaces (EXPLORER_PRELOAD) and the ZeroGPU duration function."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import loader
from engine.presets import get_preset
from engine.txt2img import gpu_seconds

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_preload_loads_a_valid_name_and_explains_an_unknown_one(tiny_presets):
    loader.clear()
    notes = loader.preload("tiny-VAE (test), No such model ,")
    assert len(notes) == 2
    assert "loaded 'tiny-VAE (test)'" in notes[0]
    assert "unknown preset 'No such model'" in notes[1]
    assert [row["name"] for row in loader.loaded_models()] == ["tiny-VAE (test)"]
    assert loader.load(get_preset("tiny-VAE (test)", "vae")) is not None and sum(loader.load_count.values()) == 1


def test_preload_of_an_unavailable_model_is_a_note_not_a_crash(tiny_presets):
    notes = loader.preload("Missing hub model (test)")
    assert len(notes) == 1 and "not available" in notes[0]


@pytest.mark.slow
def test_the_app_serves_with_a_bad_preload_name():
    code = "import app; print('DEMO', type(app.demo).__name__)"
    env = dict(os.environ, EXPLORER_PRELOAD="Not a model", GRADIO_ANALYTICS_ENABLED="False")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "unknown preset 'Not a model'" in done.stdout and "DEMO Blocks" in done.stdout


def test_gpu_duration_is_monotone_in_steps_and_pixels():
    class SDXL:
        kind = "sdxl"

    steps = [gpu_seconds(None, SDXL, num_inference_steps=n, width=1024, height=1024) for n in (1, 10, 30, 50, 100)]
    pixels = [gpu_seconds(None, SDXL, num_inference_steps=30, width=s, height=s) for s in (512, 768, 1024, 1536)]
    assert steps == sorted(steps) and steps[0] < steps[-1]
    assert pixels == sorted(pixels) and pixels[0] < pixels[-1]
    assert max(steps + pixels) <= 300 and min(steps) >= 15
