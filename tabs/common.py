"""What every tab shares: the compute queue, and turning engine errors into gr.Error."""

from __future__ import annotations

import functools
import inspect
import logging

import gradio as gr

log = logging.getLogger("explorer")

# Every event that runs a model joins this one queue, so model work never
# overlaps on the device and other users' jobs wait their turn in order.
COMPUTE = {"concurrency_id": "compute", "concurrency_limit": 1}


def _to_gr_error(e: Exception) -> gr.Error:
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, ValueError):  # the engine's messages are written for users
        return gr.Error(str(e))
    log.exception("unexpected error in an event")
    return gr.Error(f"Something went wrong ({type(e).__name__}). Try again, or with smaller settings.")


def user_errors(fn):
    """Decorate an event handler (plain or generator): ValueError -> gr.Error with its message.

    Any other exception is logged on the server and reaches the page as a short
    generic message, never as a traceback.
    """
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001
                raise _to_gr_error(e) from e
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise _to_gr_error(e) from e
    return wrapper


def not_built_yet(what: str) -> None:
    """Say plainly that a tab's engine part does not exist yet (no fake results)."""
    gr.Markdown(f"**Not built yet.** {what}")
