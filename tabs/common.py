"""What every tab shares: the compute queue, engine errors as gr.Error, and the seed and upload boxes."""

from __future__ import annotations

import functools
import inspect
import logging
import random

import gradio as gr

from engine.errors import MAX_SEED, UserError

log = logging.getLogger("explorer")

# Every event that runs a model joins this one queue, so model work never
# overlaps on the device and other users' jobs wait their turn in order.
COMPUTE = {"concurrency_id": "compute", "concurrency_limit": 1}


def _to_gr_error(e: Exception) -> gr.Error:
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, UserError):  # the engine's messages for users, shown as they are
        return gr.Error(str(e))
    log.exception("unexpected error in an event")
    return gr.Error(f"Something went wrong ({type(e).__name__}). Try again, or with smaller settings.")


def user_errors(fn):
    """Decorate an event handler (plain or generator): ``UserError`` -> gr.Error with its message.

    Any other exception, a library's own ``ValueError`` included, is logged on
    the server and reaches the page as a short generic message, never as a traceback.
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


def seed_from_box(seed, randomize: bool = False):
    """The seed to use: a random one when ``randomize``, 0 for an empty box, else the box's value as
    gradio sends it (4.0 for 4); ``engine.errors.check_seed`` then checks it in the engine."""
    if randomize:
        return random.randint(0, MAX_SEED)
    if seed is None or seed == "":
        return 0
    return int(seed) if isinstance(seed, float) and seed.is_integer() else seed


def show_used_seed(info):
    """After a run, put the seed actually used (randomized or not) into the seed box."""
    if isinstance(info, dict) and "seed" in info:
        return info["seed"]
    return gr.skip()


def upload_path(image) -> str | None:
    """The uploaded file's path. Upload events run with ``preprocess=False``, so gradio hands us its file
    payload unopened and ``engine.images.open_image`` checks size and pixel count before decoding anything."""
    if image is None or isinstance(image, str):
        return image or None
    if isinstance(image, dict):
        return image.get("path")
    return getattr(image, "path", None)
