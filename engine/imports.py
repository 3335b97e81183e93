"""The engine's heavy imports (torch, diffusers, transformers), once, one thread at a time.

A cold start serves the page first: ``app.py`` builds the tabs from torch-free
modules (``engine.presets``, ``engine.errors``, ``engine.fashion.configs``,
``engine.txt2img.request``, ``engine.schedulers``, ``engine.unet.steps``,
``engine.vae_inputs``), launches, and only then calls ``import_engine()`` in its
main thread (about 4-5 s of imports on a 2-core CPU). The tabs reach every
other engine module through ``lazy()``, whose first attribute access calls
``import_engine()`` too, as every event handler does first
(``tabs.common.user_errors``): an event that arrives before the main thread is
done waits for those imports under the one lock instead of racing them.
transformers and diffusers resolve many names lazily on first import, and two
threads doing that at once have failed with import errors, so every import of
theirs goes through ``lock``.

Nothing here imports torch.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType

#: Held by whoever imports model code (see the module docstring). Re-entrant: the engine's own imports call
#: ``engine.loader.import_model_code``, which takes it again.
lock = threading.RLock()

#: The engine modules the event handlers use (with them: torch, diffusers, transformers).
ENGINE_MODULES = (
    "engine.device",
    "engine.loader",
    "engine.fashion.sampling",
    "engine.fashion.judge",
    "engine.txt2img.pipeline",
    "engine.vae",
    "engine.unet.anatomy",
    "engine.unet.attention",
    "engine.unet.timestep",
)

_done = threading.Event()


def import_engine() -> None:
    """Import torch, diffusers, transformers, the engine's modules and the model classes, and set up the CPU in
    the importing thread. Returns at once when that is done."""
    if _done.is_set():
        return
    with lock:
        if _done.is_set():
            return
        for name in ENGINE_MODULES:
            importlib.import_module(name)
        importlib.import_module("engine.loader").import_model_code()
        importlib.import_module("engine.device").setup_cpu()  # this thread's; the torch thread sets its own
        _done.set()


class lazy(ModuleType):
    """An engine module, imported (with the whole engine, see ``import_engine``) on first attribute access.

    ``sampling = lazy("engine.fashion.sampling")`` at a tab's top, then ``sampling.sample_to_end(...)`` in its
    handlers: the tab module imports without torch, and its layout code must not touch ``sampling``."""

    def __init__(self, name: str):
        super().__init__(name)
        self.__dict__["_module"] = None

    def __getattr__(self, attr: str):
        module = self.__dict__["_module"]
        if module is None:
            import_engine()
            module = importlib.import_module(self.__name__)
            self.__dict__["_module"] = module
        return getattr(module, attr)
