"""Which device and dtype the engine runs on, the one thread that runs torch, and the process's memory settings.

torch is imported inside the functions that need it: the app lays out its page
(``layout_device``) and caps malloc arenas before torch is imported, so the page
is served first (``engine.imports``).
"""

from __future__ import annotations

import contextvars
import functools
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch


def best_device() -> str:
    """Return "cuda", then "mps", then "cpu", whichever is available first.

    The environment variable ``EXPLORER_DEVICE`` overrides the choice (for
    example ``EXPLORER_DEVICE=cpu`` on a machine with a GPU).
    """
    forced = os.environ.get("EXPLORER_DEVICE")
    if forced:
        return forced
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def layout_device() -> str:
    """The device to lay the page out for (the default model of the Fashion tab), before torch is imported.

    ``best_device()`` once torch is imported (``EXPLORER_PRELOAD`` imports it before the page is built),
    ``EXPLORER_DEVICE`` if set; else "cuda" where an NVIDIA driver is loaded, "cpu" otherwise. The models
    themselves always run on ``best_device()``."""
    if "torch" in sys.modules or os.environ.get("EXPLORER_DEVICE"):
        return best_device()
    return "cuda" if os.path.exists("/proc/driver/nvidia/version") else "cpu"


def default_dtype(device: str) -> torch.dtype:
    """fp16 on CUDA, fp32 everywhere else (fp16 matmuls are slow or missing on CPU)."""
    import torch

    return torch.float16 if str(device).startswith("cuda") else torch.float32


# a preset's "dtype" -> the torch dtype's name
DTYPES = {
    "float16": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float32": "float32",
    "fp32": "float32",
}


def parse_dtype(name: str | torch.dtype | None, device: str) -> torch.dtype:
    """Turn a preset's "dtype" string into a torch dtype; ``None`` means the device default.

    A preset may ask for fp16, but on CPU we still use fp32: fp16 kernels are
    missing or slow there, and the numbers would differ from a GPU run anyway.
    """
    import torch

    if name is None:
        return default_dtype(device)
    if isinstance(name, torch.dtype):
        dtype = name
    else:
        try:
            dtype = getattr(torch, DTYPES[str(name).lower()])
        except KeyError:
            raise ValueError(f"Unknown dtype {name!r}; use one of {sorted(DTYPES)}.") from None
    if dtype == torch.float16 and not str(device).startswith("cuda"):
        return torch.float32
    return dtype


def setup_cpu() -> None:
    """Speed settings for CPU inference.

    Denormal floats make CPU convolutions 10-20x slower on some weights;
    flushing them to zero changes no visible output.
    """
    import torch

    torch.set_flush_denormal(True)


def describe_machine() -> str:
    """One line for benchmark tables: CPU model, the vector flags that matter for fp32/bf16 matmuls,
    torch's version, intra-op threads and CPU kernels. Figures from different machines are not comparable."""
    import contextlib
    import platform
    from pathlib import Path

    import torch

    model, flags = platform.processor() or "unknown CPU", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    have = ", ".join(f for f in wanted if f in flags) or "none of avx2/avx512"
    return (f"{model} ({os.cpu_count()} logical CPUs), flags: {have}; torch {torch.__version__} on "
            f"{torch.get_num_threads()} intra-op thread(s), {torch.backends.cpu.get_cpu_capability()} kernels")


@functools.cache
def _glibc():
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas (M_ARENA_MAX) before a server starts its worker threads.

    glibc gives each new thread that allocates its own arena, and a server that runs each request on
    whichever worker thread is free spreads freed tensors over dozens of arenas that are never given back,
    so its resident memory creeps up request after request. No-op off glibc.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(-8, int(arenas))  # M_ARENA_MAX


def trim_memory() -> None:
    """Give freed heap memory back to the system (glibc ``malloc_trim``) after a job; no-op off glibc."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


# ----------------------------------------------------------------------------
# The torch thread
#
# torch's CPU kernels split work with OpenMP, and GNU libgomp keeps a team of worker threads for every OS thread
# that has started a parallel region. Once the process has more such workers than cores, libgomp throttles their
# spin-waiting (its "throttled spin count", 100 spins instead of about 3 ms), so between two of the thousands of
# small parallel regions of a denoising step the workers fall asleep and must be woken again. A server runs each
# request, and each step of a generator, on whichever of its threads is free: after a few requests several threads
# own a team. On 2 cores, mini-SD's loop (4 x 64 px, 25 steps) then took 1.4-1.6 s instead of 0.75-0.85 s, alike
# with or without denormal flushing, and as fast again when every call ran on one thread (issue 11). So every
# model event runs its torch work on this one thread. It is not a queue: the caller waits for the result, and
# gradio's queue still decides which job runs when.

_torch_pool: ThreadPoolExecutor | None = None
_torch_pool_guard = threading.Lock()
_torch_thread_ident: int | None = None


def _start_torch_thread() -> None:
    global _torch_thread_ident
    _torch_thread_ident = threading.get_ident()
    setup_cpu()  # denormal flushing is per thread


def _torch_executor() -> ThreadPoolExecutor:
    global _torch_pool
    with _torch_pool_guard:
        if _torch_pool is None:
            _torch_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch",
                                             initializer=_start_torch_thread)
        return _torch_pool


def on_torch_thread(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` run on the torch thread (see above), with the caller's context variables; returns its
    result or raises its exception. Called from the torch thread itself, it runs in place."""
    if threading.get_ident() == _torch_thread_ident:
        return fn(*args, **kwargs)
    context = contextvars.copy_context()
    return _torch_executor().submit(context.run, fn, *args, **kwargs).result()


_END = object()


def iterate_on_torch_thread(generator):
    """Yield what ``generator`` yields, advancing it one step at a time on the torch thread; closing this
    generator (gradio does, when a job is cancelled) closes ``generator`` there too."""
    if threading.get_ident() == _torch_thread_ident:
        yield from generator
        return
    try:
        while True:
            item = on_torch_thread(next, generator, _END)
            if item is _END:
                return
            yield item
    finally:
        # Not waited for: gradio closes a cancelled job's generator from its event loop, which must not block
        # (waiting there left the page's Stop unanswered now and then). The close runs before the next job's work.
        if hasattr(generator, "close"):
            _torch_executor().submit(contextvars.copy_context().run, generator.close)
