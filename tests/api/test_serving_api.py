"""Serving under load, through gradio_client against a fresh app with a small queue and a short file life.

* A queue full of slow image jobs refuses the next one with gradio's "queue full" message, while the
  tokenizer (no model, no queue) keeps answering correctly.
* A cancelled job frees the compute queue: a small job sent after the cancellations finishes.
* The files written per request stay bounded in count (gradio's ``delete_cache`` and our own pruning).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from tests.conftest import REPO_ROOT, running_app

FASHION_UNET = "Fashion-MNIST UNet · CPU (2.7 M)"
TOKENIZER = "CLIP ViT-L/14 (offline)"
PUPPY_IDS = [49406, 320, 8853, 539, 320, 6829, 49407]  # "A photograph of a puppy"
# DDPM's 1000 steps on 16 images: minutes on a CPU, so these jobs are still running or waiting throughout.
SLOW = dict(label="Sandal", count=16, sampler="DDPM", num_inference_steps=1000, guidance_scale=2.0, seed=1,
            randomize_seed=False, model=FASHION_UNET)
SMALL = dict(SLOW, count=2, sampler="DPM-Solver++", num_inference_steps=4)
QUEUE_SIZE = 2
CACHE_SECONDS = 4


@pytest.fixture(scope="module")
def busy_app(tmp_path_factory, artifacts):
    temp = tmp_path_factory.mktemp("gradio-temp")
    env = {"EXPLORER_QUEUE_SIZE": str(QUEUE_SIZE), "EXPLORER_CACHE_SECONDS": str(CACHE_SECONDS),
           "GRADIO_TEMP_DIR": str(temp)}
    with running_app(env, artifacts / "app-serving.log") as url:
        yield url, temp


def _outcome(job) -> str:
    """'running or waiting', 'refused: ...' or 'finished'."""
    if not job.done():
        return "running or waiting"
    try:
        job.result()
        return "finished"
    except Exception as e:  # noqa: BLE001 - the message is what the test checks
        return f"refused: {e}"


def test_tokenize_answers_while_the_compute_queue_is_full_and_cancelling_frees_it(busy_app):
    url, _ = busy_app
    client = Client(url, verbose=False)
    # one job runs, QUEUE_SIZE wait, and the rest are refused
    jobs = []
    for _ in range(QUEUE_SIZE + 3):
        jobs.append(client.submit(**SLOW, api_name="/sample_fashion"))
        time.sleep(0.5)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(j.done() for j in jobs) < 2:
        time.sleep(0.5)
    outcomes = [_outcome(j) for j in jobs]
    refused = [o for o in outcomes if o.startswith("refused")]
    assert len(refused) >= 2, outcomes
    assert all("server is busy" in o and "try again in a moment" in o.lower() for o in refused), refused

    for k in range(5):  # the tokenizer still answers, correctly, while the image jobs are still going
        chips, summary, shapes, decoded, view = client.predict("A photograph of a puppy", TOKENIZER,
                                                               api_name="/tokenize")
        assert view["ids"] == PUPPY_IDS and decoded == "a photograph of a puppy"
    assert sum(o == "running or waiting" for o in (_outcome(j) for j in jobs)) >= 2

    for job in jobs:
        job.cancel()
    small = client.submit(**SMALL, api_name="/sample_fashion")
    samples, trajectory, info = small.result(timeout=240)  # 1000-step jobs ahead of it would take far longer
    assert info["count"] == 2 and info["steps"] == 4


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_files_written_per_request_stay_bounded(busy_app):
    url, temp = busy_app
    client = Client(url, verbose=False)
    image = handle_file(str(REPO_ROOT / "assets" / "examples" / "colour_fashion_64.png"))
    counts, seen = [], set()
    for k in range(80):
        if k % 2:
            client.predict(image=image, vae="mini VAE (offline)", size=64, fit="crop", sample=True, seed=k,
                           api_name="/vae_roundtrip")
        else:
            client.predict(prompt="a red bag", negative_prompt="", model="mini-SD (offline)", guidance_scale=2.0,
                           num_inference_steps=2, scheduler="default", seed=k, randomize_seed=False, width=64,
                           height=64, num_images=1, api_name="/generate")
        files = _files(temp)
        seen.update(files)
        counts.append(len(files))
    time.sleep(2 * CACHE_SECONDS)
    client.predict("a cat", TOKENIZER, api_name="/tokenize")  # any request; deletion runs on its own schedule
    final = len(_files(temp))
    # every request wrote new files (new seeds), far more than are left at any moment
    assert len(seen) >= 300, len(seen)
    assert max(counts[40:]) < len(seen) / 3, (max(counts[40:]), len(seen))
    assert final < len(seen) / 5, (final, len(seen))
