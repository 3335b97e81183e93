"""The scheduler choices of the text-to-image tab.

Every choice is built from the preset's own scheduler config (its beta
schedule, ``steps_offset``, ``timestep_spacing``, prediction type...), exactly
as the diffusers docs swap schedulers::

    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)

Schedulers keep per-run state (the step index, DPM-Solver's past model
outputs), so each generation gets a fresh one and the cached pipeline's own
scheduler is never touched.

This module imports diffusers only inside its functions: the tabs read the
names at start-up, before the page is served (``engine.imports``).
"""

from __future__ import annotations

import importlib

from engine.errors import UserError

DEFAULT = "default"
# name -> (diffusers class name, overrides of the preset's config); "default" keeps the preset's own class
SCHEDULERS: dict[str, tuple[str | None, dict]] = {
    DEFAULT: (None, {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "DPM-Solver++ 2M (Karras)": ("DPMSolverMultistepScheduler",
                                 {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
}
SCHEDULER_NAMES = list(SCHEDULERS)


def make_scheduler(preset_scheduler, name: str = DEFAULT):
    """A fresh scheduler called ``name``, made from ``preset_scheduler``'s config.

    ``"default"`` is the preset's own class, unchanged (SD 1.5 ships PNDM, SDXL
    Euler). ``UserError`` names the choices for an unknown name.
    """
    if name not in SCHEDULERS:
        raise UserError(f"Unknown scheduler {name!r}. Choose one of: {', '.join(SCHEDULER_NAMES)}.")
    class_name, overrides = SCHEDULERS[name]
    cls = type(preset_scheduler) if class_name is None else getattr(importlib.import_module("diffusers"), class_name)
    return cls.from_config(preset_scheduler.config, **overrides)


def sampler_label(scheduler) -> str:
    """The class name with its notable options, for the PNG metadata and the JSON panel."""
    label = type(scheduler).__name__
    if getattr(scheduler.config, "use_karras_sigmas", False):
        label += " (Karras)"
    return label

