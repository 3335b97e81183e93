"""The one cached loader that every model goes through.

* Each model loads once per process, keyed by what identifies it: its kind and
  source (repo id or folder, subfolder, variant), dtype and device.
* Two first requests for the same model at the same time load it once: the
  second waits on a per-key lock and then gets the first one's object.
* Nothing loads at import time; ``load()`` is the only entry point.
* A model that cannot be loaded (offline, gated, missing) raises
  ``ModelUnavailable``, a ``UserError`` whose message names the model and the
  reason in one short sentence, so the tab can show it as it is.

Weights are the only global state of the app, and they live here.
"""

from __future__ import annotations

import importlib
import os
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlparse

import torch

from engine import imports
from engine.device import best_device, on_torch_thread, parse_dtype
from engine.errors import UserError
from engine.presets import Preset, get_preset


class ModelUnavailable(UserError):
    """A preset that cannot be loaded here; the message is meant for the user."""


# kind -> "module:function" taking (preset, device, dtype, local_files_only) and returning the model.
# Engine modules for new kinds add their loader here.
LOADERS: dict[str, str] = {
    "tokenizer": "engine.loader:_load_tokenizer",
    "vae": "engine.loader:_load_vae",
    "sd": "engine.loader:_load_sd",
    "sdxl": "engine.loader:_load_sdxl",
    "sdxl-refiner": "engine.loader:_load_sdxl_refiner",
    "class-unet": "engine.fashion.sampling:load_class_unet",
    "classifier": "engine.fashion.judge:load_classifier",
    "noisy-classifier": "engine.fashion.classifier:load_noisy_classifier",
    "clip-image": "engine.clip_image:load_image_encoder",
}


@dataclass
class _Entry:
    model: object
    preset: Preset
    device: str
    dtype: torch.dtype
    seconds: float


_models: dict[tuple, _Entry] = {}
_key_locks: dict[tuple, threading.Lock] = {}
_guard = threading.Lock()
# transformers and diffusers resolve many names lazily on first import, and two request threads
# doing that at once can fail ("cannot import name 'CLIPImageProcessor'"): imports take turns under the one
# lock that the app's start-up imports hold too (engine.imports).
_import_lock = imports.lock
load_count: dict[tuple, int] = {}  # how many times each key was really loaded (tests count these)


def cache_key(preset: Preset, device: str, dtype: torch.dtype) -> tuple:
    return (preset.kind, preset.source, preset.subfolder, preset.variant, str(dtype), device)


def load(preset: Preset | str, kind: str | None = None, *, device: str | None = None,
         dtype: str | torch.dtype | None = None) -> object:
    """Return the model for ``preset``, loading it on first use.

    ``preset`` is a Preset or a preset name (then ``kind`` is required).
    ``device`` defaults to ``best_device()``; ``dtype`` to the preset's dtype,
    else fp16 on CUDA and fp32 elsewhere. Tokenizers have no device or dtype.
    """
    if isinstance(preset, str):
        if kind is None:
            raise ValueError("load(name) needs the preset kind too.")
        preset = get_preset(preset, kind)
    device = device or best_device()
    torch_dtype = parse_dtype(dtype if dtype is not None else preset.dtype, device)
    if preset.kind == "tokenizer":
        device, torch_dtype = "cpu", torch.float32
    key = cache_key(preset, device, torch_dtype)

    entry = _models.get(key)
    if entry is not None:
        return entry.model
    with _guard:
        lock = _key_locks.setdefault(key, threading.Lock())
    with lock:
        entry = _models.get(key)  # loaded by the request we waited on
        if entry is not None:
            return entry.model
        import_model_code()
        start = time.perf_counter()
        model = _load_uncached(preset, device, torch_dtype)
        _models[key] = _Entry(model, preset, device, torch_dtype, time.perf_counter() - start)
        load_count[key] = load_count.get(key, 0) + 1
        return model


def _load_uncached(preset: Preset, device: str, dtype: torch.dtype) -> object:
    module_name, func_name = LOADERS[preset.kind].split(":")
    loader = getattr(_import(module_name), func_name)
    local_only = False
    if preset.is_hub:
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
            local_only = True
        elif not hub_reachable():
            local_only = True  # try the local cache before giving up
    else:
        if not os.path.isdir(preset.path):
            raise ModelUnavailable(f"Model '{preset.name}' is not available: its folder {preset.path} does not exist.")
    try:
        return loader(preset, device, dtype, local_only)
    except ModelUnavailable:
        raise
    except torch.cuda.OutOfMemoryError:
        free_memory()
        raise ModelUnavailable(f"Model '{preset.name}' does not fit in GPU memory next to the models already loaded.") from None
    except Exception as e:  # noqa: BLE001 - every failure becomes a message for the user
        raise ModelUnavailable(f"Model '{preset.name}' is not available: {explain_load_error(e, preset, local_only)}") from e


def explain_load_error(error: BaseException, preset: Preset, local_only: bool) -> str:
    """One short sentence on why loading failed, from the exception chain."""
    chain, e = [], error
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    names = {type(x).__name__ for x in chain}
    text = " ".join(str(x) for x in chain)
    if "GatedRepoError" in names or "gated" in text.lower():
        return f"{preset.describe()} is gated: accept its licence on the hub and set HF_TOKEN."
    if local_only and preset.is_hub:
        return f"the model hub cannot be reached from here and {preset.describe()} is not in the local cache."
    if "RepositoryNotFoundError" in names or "401 Client Error" in text or "404 Client Error" in text:
        return f"{preset.describe()} was not found on the hub (or it is private)."
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"loading {preset.describe()} failed ({first[:200]})."


_hub_probe: dict[str, float | bool] = {"at": 0.0, "ok": False}


def hub_reachable(timeout: float = 2.0, ttl: float = 30.0) -> bool:
    """Can a TCP connection to the model hub be opened? Cached for ``ttl`` seconds.

    Without this, an offline ``from_pretrained`` spends ~30 s in retries
    before it fails; with it the user hears at once.
    """
    now = time.monotonic()
    if now - float(_hub_probe["at"]) < ttl:
        return bool(_hub_probe["ok"])
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            ok = True
    except OSError:
        ok = False
    _hub_probe.update(at=now, ok=ok)
    return ok


# ----------------------------------------------------------------------------
# Loaders for the built-in kinds. Each takes (preset, device, dtype, local_only).


def import_model_code() -> None:
    """Import diffusers' SD and SDXL pipelines and transformers' CLIP classes, resolving their lazy names, one
    thread at a time (``_import_lock``): about 3 s once, then nothing.

    ``engine.imports.import_engine`` calls it, in the app's main thread right after the page is served, so a
    cold start does not wait for it;
    every first ``load()`` calls it too, so a request that comes sooner waits for those imports instead of
    racing them.
    """
    with _import_lock:
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: F401
        from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401


def _import(module_name: str):
    """``importlib.import_module`` one thread at a time (see ``_import_lock``)."""
    with _import_lock:
        return importlib.import_module(module_name)


def _pretrained_kwargs(preset: Preset, local_only: bool) -> dict:
    kwargs = {"local_files_only": local_only}
    if preset.subfolder:
        kwargs["subfolder"] = preset.subfolder
    return kwargs


def _load_tokenizer(preset: Preset, device: str, dtype: torch.dtype, local_only: bool):
    CLIPTokenizer = _import("transformers").CLIPTokenizer
    tok = CLIPTokenizer.from_pretrained(preset.source, **_pretrained_kwargs(preset, local_only))
    # transformers 5 returns an empty tokenizer, without an error, when vocab.json and
    # merges.txt cannot be found: refuse it rather than tokenize everything to nothing.
    if len(tok.get_vocab()) < 1000:
        raise OSError("no tokenizer files (vocab.json, merges.txt) were found there")
    return tok


def _load_vae(preset: Preset, device: str, dtype: torch.dtype, local_only: bool):
    AutoencoderKL = _import("diffusers").AutoencoderKL
    kwargs = _pretrained_kwargs(preset, local_only)
    if preset.variant:
        kwargs["variant"] = preset.variant
    vae = AutoencoderKL.from_pretrained(preset.source, dtype=dtype, **kwargs)
    return vae.to(device).eval()


def _load_pipeline(cls, preset: Preset, device: str, dtype: torch.dtype, local_only: bool, **components):
    kwargs = {**_pretrained_kwargs(preset, local_only), **components}
    if preset.variant:
        kwargs["variant"] = preset.variant
    vae_repo = preset.options.get("vae")
    if vae_repo and "vae" not in components:
        AutoencoderKL = _import("diffusers").AutoencoderKL
        kwargs["vae"] = AutoencoderKL.from_pretrained(vae_repo, dtype=dtype, local_files_only=local_only)
    pipe = cls.from_pretrained(preset.source, dtype=dtype, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _load_sd(preset: Preset, device: str, dtype: torch.dtype, local_only: bool):
    return _load_pipeline(_import("diffusers").StableDiffusionPipeline, preset, device, dtype, local_only)


def _load_sdxl(preset: Preset, device: str, dtype: torch.dtype, local_only: bool):
    return _load_pipeline(_import("diffusers").StableDiffusionXLPipeline, preset, device, dtype, local_only)


def _load_sdxl_refiner(preset: Preset, device: str, dtype: torch.dtype, local_only: bool):
    """SDXL's refiner as a ``StableDiffusionXLImg2ImgPipeline`` that shares its paired base's ``text_encoder_2``,
    ``tokenizer_2`` and VAE (the base is loaded, or reused, through ``load``): the refiner works in the base's
    latent space (Podell et al. 2023, §2.5), and the shared parts are neither downloaded nor held twice."""
    base = load(get_preset(preset.options["base"], "sdxl"), device=device, dtype=dtype)
    shared = {"text_encoder_2": base.text_encoder_2, "tokenizer_2": base.tokenizer_2, "vae": base.vae}
    return _load_pipeline(_import("diffusers").StableDiffusionXLImg2ImgPipeline, preset, device, dtype, local_only,
                          **shared)


# ----------------------------------------------------------------------------
# Reporting


def _module_bytes(obj: object) -> int:
    """Bytes held by the parameters and buffers of every torch module in ``obj``."""
    modules = []
    if isinstance(obj, torch.nn.Module):
        modules = [obj]
    elif hasattr(obj, "components"):  # a diffusers pipeline
        modules = [m for m in obj.components.values() if isinstance(m, torch.nn.Module)]
    total = 0
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            total += t.numel() * t.element_size()
    return total


def loaded_models() -> list[dict]:
    """What is loaded: one dict per model with name, kind, source, device, dtype, MB and load time."""
    rows = []
    for entry in list(_models.values()):
        rows.append({
            "name": entry.preset.name,
            "kind": entry.preset.kind,
            "source": entry.preset.describe(),
            "device": entry.device,
            "dtype": str(entry.dtype).replace("torch.", ""),
            "memory_mb": round(_module_bytes(entry.model) / 2**20, 2),
            "load_seconds": round(entry.seconds, 3),
        })
    return rows


def memory_report() -> dict:
    """Loaded models plus totals, and CUDA allocator figures when on a GPU."""
    rows = loaded_models()
    report = {"models": rows, "total_mb": round(sum(r["memory_mb"] for r in rows), 2), "device": best_device()}
    if torch.cuda.is_available():
        report["cuda_allocated_mb"] = round(torch.cuda.memory_allocated() / 2**20, 1)
        report["cuda_reserved_mb"] = round(torch.cuda.memory_reserved() / 2**20, 1)
    return report


def free_memory() -> None:
    """Give cached GPU memory back after an out-of-memory error (loaded weights stay)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def clear() -> None:
    """Forget every loaded model (tests use this)."""
    with _guard:
        _models.clear()
        _key_locks.clear()
        load_count.clear()


def preload(names: str | None) -> list[str]:
    """Load the presets named in ``names`` (comma-separated, as ``EXPLORER_PRELOAD``) now, onto the best device.

    Spaces (ZeroGPU included) want weights loaded at start-up, in the main process,
    not inside a ``spaces.GPU`` call. The loads run on the torch thread
    (``engine.device.on_torch_thread``), as every model job does, so that loading
    in the main thread does not leave it a second OpenMP team. Returns one line per name
    for the log: loaded in how long, or why not (an unknown name, or a model that
    cannot load). Nothing raises, so the app serves either way.
    """
    from engine.presets import all_presets

    notes = []
    by_name = {p.name: p for p in all_presets()}
    for name in (n.strip() for n in (names or "").split(",")):
        if not name:
            continue
        preset = by_name.get(name)
        if preset is None:
            notes.append(f"EXPLORER_PRELOAD: unknown preset {name!r}, skipped. Known: {', '.join(sorted(by_name))}.")
            continue
        start = time.perf_counter()
        try:
            on_torch_thread(load, preset)
        except ModelUnavailable as e:
            notes.append(f"EXPLORER_PRELOAD: {e}")
            continue
        notes.append(f"EXPLORER_PRELOAD: loaded '{name}' on {best_device()} in {time.perf_counter() - start:.1f} s.")
    return notes
