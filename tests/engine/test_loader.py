"""The cached loader: once per process, once under concurrency, friendly failures, device choice."""

import subprocess
import sys
import threading
import time

import pytest
import torch

from engine import device, loader, presets

OFFLINE_TOKENIZER = "CLIP ViT-L/14 (offline)"


@pytest.fixture(autouse=True)
def fresh_cache():
    loader.clear()
    yield
    loader.clear()


def test_second_call_returns_the_same_object_and_loads_once():
    first = loader.load(OFFLINE_TOKENIZER, "tokenizer")
    second = loader.load(OFFLINE_TOKENIZER, "tokenizer")
    assert first is second
    assert list(loader.load_count.values()) == [1]


def test_concurrent_first_calls_load_once(monkeypatch):
    real = loader._load_tokenizer
    calls = []

    def slow_load(*args):
        calls.append(threading.get_ident())
        time.sleep(0.3)  # widen the window in which a second request could start its own load
        return real(*args)

    monkeypatch.setattr(loader, "_load_tokenizer", slow_load)
    barrier = threading.Barrier(6)
    results = []

    def request():
        barrier.wait()
        results.append(loader.load(OFFLINE_TOKENIZER, "tokenizer"))

    threads = [threading.Thread(target=request) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(results) == 6 and all(r is results[0] for r in results)


def test_different_models_get_different_entries():
    a = loader.load(OFFLINE_TOKENIZER, "tokenizer")
    b = loader.load("OpenCLIP ViT-bigG/14 · SDXL tokenizer_2 (offline)", "tokenizer")
    assert a is not b and a.pad_token_id != b.pad_token_id
    assert len(loader.load_count) == 2


def test_tiny_pipeline_loads_through_an_operator_preset(tiny_presets):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    sd = loader.load("tiny-SD (test)", "sd")
    xl = loader.load("tiny-SDXL (test)", "sdxl")
    assert isinstance(sd, StableDiffusionPipeline) and isinstance(xl, StableDiffusionXLPipeline)
    assert sd.unet.dtype == torch.float32 and sd.device.type == "cpu"
    # Its parts are presets of their own kinds, loaded by the same code path.
    vae = loader.load("tiny-SD (test) · VAE", "vae")
    assert vae.config.latent_channels == 4
    tok = loader.load("tiny-SD (test) · tokenizer", "tokenizer")
    assert tok("A photograph of a puppy").input_ids == [49406, 320, 8853, 539, 320, 6829, 49407]
    report = loader.memory_report()
    rows = {r["name"]: r for r in report["models"]}
    assert rows["tiny-SD (test)"]["memory_mb"] > 0.5
    assert rows["tiny-SD (test) · tokenizer"]["memory_mb"] == 0
    assert report["total_mb"] == pytest.approx(sum(r["memory_mb"] for r in report["models"]))


def test_missing_hub_repo_fails_fast_with_a_message_naming_model_and_reason(tiny_presets):
    start = time.monotonic()
    with pytest.raises(loader.ModelUnavailable) as e:
        loader.load("Missing hub model (test)", "sd")
    message = str(e.value)
    assert message.startswith("Model 'Missing hub model (test)' is not available:")
    assert "explorer-tests/this-repo-does-not-exist" in message
    assert "Traceback" not in message and len(message) < 300
    assert time.monotonic() - start < 20  # not the ~30 s of hub retries (a loose bound, not a benchmark)
    assert isinstance(e.value, ValueError)  # so tabs turn it into gr.Error
    # Nothing half-loaded stays in the cache, and other models still load.
    assert loader.loaded_models() == []
    assert loader.load(OFFLINE_TOKENIZER, "tokenizer") is not None


def test_missing_local_folder_is_reported(tmp_path, monkeypatch):
    import json

    f = tmp_path / "p.json"
    f.write_text(json.dumps([{"name": "Gone", "kind": "vae", "path": str(tmp_path / "nowhere")}]))
    monkeypatch.setenv("EXPLORER_MODELS", str(f))
    with pytest.raises(loader.ModelUnavailable, match="'Gone' is not available: its folder .* does not exist"):
        loader.load("Gone", "vae")


def test_device_order_and_dtypes(monkeypatch):
    monkeypatch.delenv("EXPLORER_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device.best_device() == "cuda" and device.default_dtype("cuda") == torch.float16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert device.best_device() == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert device.best_device() == "cpu" and device.default_dtype("cpu") == torch.float32
    assert device.parse_dtype("float16", "cpu") == torch.float32  # no fp16 on CPU
    assert device.parse_dtype("float16", "cuda") == torch.float16
    with pytest.raises(ValueError, match="Unknown dtype"):
        device.parse_dtype("float8", "cpu")


def test_cache_key_separates_device_and_dtype():
    p = presets.get_preset("SD 1.5", "sd")
    keys = {loader.cache_key(p, d, t) for d in ("cpu", "cuda") for t in (torch.float16, torch.float32)}
    assert len(keys) == 4


@pytest.mark.slow  # imports app.py (every tab): about 9 s on 2 busy cores
def test_importing_the_app_loads_no_model():
    code = ("import app; from engine import loader; import sys; "
            "sys.exit(1 if loader.loaded_models() else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=presets.REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_folder_without_tokenizer_files_is_refused_not_loaded_empty(tmp_path, monkeypatch):
    """transformers 5 would build an empty tokenizer here; the loader must say what is missing."""
    import json

    (tmp_path / "empty").mkdir()
    f = tmp_path / "p.json"
    f.write_text(json.dumps([{"name": "Empty tok", "kind": "tokenizer", "path": str(tmp_path / "empty")}]))
    monkeypatch.setenv("EXPLORER_MODELS", str(f))
    with pytest.raises(loader.ModelUnavailable, match="no tokenizer files"):
        loader.load("Empty tok", "tokenizer")

