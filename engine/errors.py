"""User-facing errors and the checks every tab shares.

``UserError`` is the one exception whose message is written for the person at
the keyboard: the tabs show its text as it is (``tabs.common``). Any other
exception, a library's own ``ValueError`` included, is a bug or an outage: the
page gets a short generic message and the server log gets the traceback.

The number, whole-number, choice and seed checks live here once. Each message
names the input (as the API names it), what it allows and the value received,
and a seed box behaves the same in every tab: a whole number from 0 to
2**32 - 1 (the range of ``torch.Generator.manual_seed`` that every seed goes
through), else a message that says so. Compute events skip gradio's own
preprocessing (``tabs.common.COMPUTE``), so these checks are the only bounds an
API caller meets.
"""

from __future__ import annotations

import math
import numbers

MAX_SEED = 2**32 - 1


class UserError(ValueError):
    """A bad input or an unavailable model, with a message that says what to change."""


def whole_number(value, name: str, allowed: str = "") -> int:
    """``value`` as an int: ints, integral floats ("3.0") and digit strings are fine; anything else is a
    ``UserError`` naming ``name`` (and ``allowed``, e.g. " between 1 and 64"). Booleans and None are refused
    (a checkbox is not a count)."""
    message = f"{name} must be a whole number{allowed}, got {value!r}."
    if isinstance(value, bool) or value is None:
        raise UserError(message)
    if isinstance(value, numbers.Integral):
        return int(value)
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise UserError(message) from None
    if not math.isfinite(number) or number != int(number):
        raise UserError(message)
    return int(number)


def number_in_range(value, name: str, low: float, high: float, hint: str = "") -> float:
    """``value`` as a finite float in [low, high]; a ``UserError`` naming ``name`` otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, got {value!r}.") from None
    if not (math.isfinite(number) and low <= number <= high):
        raise UserError(f"{name} must be between {low:g} and {high:g}{hint}, got {value!r}.")
    return number


def whole_number_in_range(value, name: str, low: int, high: int, where: str = "") -> int:
    """``whole_number`` within [low, high]; the message names ``name``, the range (and ``where``, e.g.
    " for 'SD 1.5'") and the value received."""
    number = whole_number(value, name, f" between {low} and {high}{where}")
    if not low <= number <= high:
        raise UserError(f"{name} must be between {low} and {high}{where}, got {number}.")
    return number


def one_of(value, name: str, choices) -> object:
    """``value`` if it is one of ``choices`` (a radio's or dropdown's values); a ``UserError`` listing them
    otherwise."""
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}.")
    return value


def check_seed(seed) -> int:
    """A seed as an int in 0 .. 2**32 - 1; a ``UserError`` for anything else (no silent wrapping)."""
    return whole_number_in_range(seed, "seed", 0, MAX_SEED)
