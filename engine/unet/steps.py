"""Which of the loop's steps the cross-attention maps average over: named ranges, an index, or (start, stop).

Apart from ``engine.unet.attention`` because the UNet tab lays out its step
choices before torch is imported (``engine.imports``): nothing here imports torch.
"""

from __future__ import annotations

import numpy as np

from engine.errors import UserError

#: Named step ranges, as fractions [start, stop) of the loop.
STEP_RANGES = {
    "all": (0.0, 1.0),
    "first third": (0.0, 1 / 3),
    "middle third": (1 / 3, 2 / 3),
    "last third": (2 / 3, 1.0),
    "first half": (0.0, 0.5),
    "last half": (0.5, 1.0),
}


def select_steps(steps, num_steps: int | None) -> range:
    """The UNet calls (0-based step indices) to aggregate.

    ``steps``: None or "all"; a name of ``STEP_RANGES`` ("first third", "last
    third"...: needs ``num_steps``); one index i; or (start, stop), Python-style
    (stop excluded). ``num_steps``: the number of UNet calls the loop will make
    (PNDM makes one more than ``num_inference_steps``), or None if unknown.
    Raises ``UserError`` (a ValueError) naming the bad value.
    """
    top = num_steps if num_steps is not None else 2**62
    if steps is None:
        steps = "all"
    if isinstance(steps, str):
        key = steps.strip().lower()
        if key not in STEP_RANGES:
            raise UserError(f"Unknown steps {steps!r}: use one of {', '.join(map(repr, STEP_RANGES))}, "
                             "a step index, or (start, stop).")
        if key == "all":
            return range(top)
        if num_steps is None:
            raise UserError(f"steps={steps!r} needs the number of steps (num_steps).")
        a, b = STEP_RANGES[key]
        start = round(a * num_steps)
        return range(start, max(start + 1, round(b * num_steps)))
    if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
        steps = (int(steps), int(steps) + 1)
    if (not isinstance(steps, (tuple, list)) or len(steps) != 2
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in steps)):
        raise UserError(f"steps must be 'all', a named range, an index or (start, stop), got {steps!r}.")
    start, stop = int(steps[0]), int(steps[1])
    if not 0 <= start < stop <= top:
        raise UserError(f"steps {steps!r}: need 0 <= start < stop <= {top} (the number of steps).")
    return range(start, stop)
