"""The app needs nothing from Debian at run time (issue 20).

``python app.py`` is started with the Fashion-MNIST data root (``EXPLORER_FASHION_ROOT``) pointed at an empty
folder, as on a laptop, a Mac or a Space without ``dataset-fashion-mnist``: the page is served, and the
Fashion tab's job, its forward process and the timestep experiment answer from the files in ``assets/``.
"""

from __future__ import annotations

import pytest
from gradio_client import Client
from PIL import Image

from tests.conftest import running_app


@pytest.fixture(scope="module")
def no_dataset_client(tmp_path_factory, artifacts):
    empty = tmp_path_factory.mktemp("no-fashion-mnist")
    log = artifacts / "app-no-dataset.log"
    with running_app({"EXPLORER_FASHION_ROOT": str(empty)}, log) as url:
        yield Client(url, verbose=False)
    text = log.read_text()
    assert "DatasetMissing" not in text and "idx3-ubyte" not in text  # nothing tried to read the data set


def test_a_fashion_job_runs_without_the_data_set(no_dataset_client):
    samples, trajectory, info = no_dataset_client.predict(
        label="Bag", count=2, sampler="DPM-Solver++", num_inference_steps=5, guidance_scale=2.0, seed=3,
        api_name="/sample_fashion")
    assert info["count"] == 2 and info["class"] == "Bag" and info["steps"] == 5
    with Image.open(samples if isinstance(samples, str) else samples["path"]) as img:
        assert img.size == (2 * 128 + 4, 128)


def test_the_forward_process_shows_a_shipped_test_image(no_dataset_client):
    gallery, caption = no_dataset_client.predict(source="Test image", example=19, seed=0,
                                                 api_name="/forward_fashion")
    assert len(gallery) == 8 and "test image 19 (Ankle boot)" in caption


def test_the_timestep_experiment_runs_without_the_data_set(no_dataset_client):
    gallery, plot, info = no_dataset_client.predict(example=4, true_t=200, seed=0, api_name="/timestep_experiment")
    assert info["class"] == "Pullover" and info["true_t"] == 200
    assert abs(info["best_told_t"] - 200) <= 50  # the error curve bottoms out at (or next to) the true t
    mse = dict(zip(info["told_t"], info["mse"]))
    assert mse[0] > mse[200] and mse[975] > mse[200] and len(gallery) >= 4
