"""What every tab shares: the compute queue, engine errors as gr.Error, and the seed and upload boxes."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import random
import time
from pathlib import Path

import gradio as gr

from engine import device
from engine.device import trim_memory
from engine.errors import MAX_SEED, UserError
from engine.imports import import_engine

log = logging.getLogger("explorer")

# Files written per request (gradio's cached outputs and uploads, our PNG copies) live at most this long, so
# a Space that runs for weeks does not fill its disk. gr.Blocks(delete_cache=...) applies it to gradio's cache.
CACHE_SECONDS = int(os.environ.get("EXPLORER_CACHE_SECONDS", "3600"))
DELETE_CACHE = (max(1, CACHE_SECONDS // 4), CACHE_SECONDS)  # (every how many seconds, older than how many)

# At most this many model jobs wait in the compute queue; the next one is refused at once with a message.
# Cheap events (the tokenizer, the loaded-models panel) are not bounded by it: they never take those places.
MAX_WAITING = int(os.environ.get("EXPLORER_QUEUE_SIZE", "32"))
BUSY = "The server is busy: {n} image jobs are already waiting. Try again in a moment."


def waiting_compute_jobs() -> int:
    """Jobs waiting in the compute queue (not the one running), read from gradio's own queue of the app
    whose event is being processed. These are gradio internals (pinned version); 0 if they move."""
    try:
        from gradio.context import LocalContext

        queue = LocalContext.blocks.get()._queue
        return len(queue.event_queue_per_concurrency_id["compute"].queue)
    except (AttributeError, KeyError, LookupError):
        return 0


def compute_has_room(*inputs):
    """gradio validator of every model event: runs when the request arrives, before it takes a place in the
    queue, and refuses it with ``BUSY`` while ``MAX_WAITING`` jobs wait. Checks no input (the handlers do).
    Every compute event has inputs, so the message always has one to stand next to."""
    waiting = waiting_compute_jobs()
    busy = waiting >= MAX_WAITING
    # gradio shows a failed validation on the page next to the first input, and gradio_client raises it
    return [gr.validate(not (busy and i == 0), BUSY.format(n=waiting) if busy and i == 0 else "")
            for i in range(len(inputs))]


# Every event that runs a model joins this one queue, so model work never
# overlaps on the device and other users' jobs wait their turn in order.
# preprocess=False: the engine checks every value itself, with messages that say what to change (gradio's own
# checks would run in the validator's call, where a bad value becomes a bare "400 Bad Request" for API users),
# and an upload is opened by our size guard before anything decodes it.
COMPUTE = {"concurrency_id": "compute", "concurrency_limit": 1, "validator": compute_has_room, "preprocess": False}


def shows_live_pictures(request) -> bool:
    """Whether the caller of an event draws its streamed pictures (live previews, the growing trajectory).

    The page does. gradio_client marks its requests ``x-gradio-user: api`` (gradio's MCP server: ``mcp``): its
    ``predict`` returns the last output only, yet downloads every file of every streamed output on the way,
    so for those callers a live picture is a PNG, a cache file and a download spent on nothing (issue 11).
    They get the progress messages and the result. Direct calls (``request`` None) get the pictures."""
    headers = getattr(request, "headers", None) or {}
    return headers.get("x-gradio-user") not in ("api", "mcp")


def _to_gr_error(e: Exception) -> gr.Error:
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, UserError):  # the engine's messages for users, shown as they are
        return gr.Error(str(e))
    log.exception("unexpected error in an event")
    return gr.Error(f"Something went wrong ({type(e).__name__}). Try again, or with smaller settings.")


def user_errors(fn, *, torch_thread: bool = False):
    """Decorate an event handler (plain or generator): ``UserError`` -> gr.Error with its message.

    Any other exception, a library's own ``ValueError`` included, is logged on
    the server and reaches the page as a short generic message, never as a traceback.
    An event that comes before the engine is imported (the first seconds after a cold start) waits for it.
    ``torch_thread``: the handler's work runs on the one torch thread (``engine.device.on_torch_thread``: with
    requests spread over the server's threads, torch's OpenMP workers ran the loop 2x slower).
    After each call the freed heap goes back to the system, so memory stays flat over many requests.
    """
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                import_engine()
                steps = fn(*args, **kwargs)
                yield from device.iterate_on_torch_thread(steps) if torch_thread else steps
            except Exception as e:  # noqa: BLE001
                raise _to_gr_error(e) from e
            finally:
                trim_memory()
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            import_engine()
            return device.on_torch_thread(fn, *args, **kwargs) if torch_thread else fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise _to_gr_error(e) from e
        finally:
            trim_memory()
    return wrapper


def model_job(fn):
    """Decorate a model event handler (one that joins ``COMPUTE``): ``user_errors``, its work on the torch thread."""
    return user_errors(fn, torch_thread=True)


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


def prune_folder(folder: Path, pattern: str = "*.png", max_age: float = CACHE_SECONDS, max_files: int = 64) -> None:
    """Delete files in ``folder`` older than ``max_age`` seconds, then all but the newest ``max_files``.

    Our own per-request files are only read once, when gradio copies them into its cache, so both bounds
    can be small. Files another request removes first are skipped."""
    files = []
    for path in folder.glob(pattern):
        try:
            files.append((path.stat().st_mtime, path))
        except OSError:
            continue
    files.sort(reverse=True)
    now = time.time()
    for rank, (mtime, path) in enumerate(files):
        if rank >= max_files or now - mtime > max_age:
            path.unlink(missing_ok=True)


def last_output(outputs):
    """A handler's result: a generator handler's last yield, else its return value."""
    if not inspect.isgenerator(outputs):
        return outputs
    result = None
    for result in outputs:
        pass
    return result


def show_on_arrival(handler, settings: dict, outputs: list, when=None) -> None:
    """Results on arrival: when a visitor opens the page, show ``handler``'s result for ``settings`` (the
    controls' starting values, so pressing the button reproduces it) in ``outputs``.

    The result is computed by the first visit, in the compute queue, and kept for the life of the server
    process (a function of the shipped weights and fixed settings, like the weights themselves): every later
    visitor gets it at once. If it cannot be computed (no model installed), the outputs stay empty.
    ``when``: the events that show it instead of the page's load, e.g. ``[tab.select]`` for a costly example
    that would otherwise hold the queue on a fresh server; then it is shown once per page, so a visitor's own
    result is never replaced by the example.
    """
    @functools.cache
    def result():
        return last_output(handler(**settings))

    def arrive():
        try:
            return result()
        except Exception:  # noqa: BLE001 - an empty panel, never an error toast, on page load
            log.exception("the example result of %s failed", getattr(handler, "__name__", handler))
            return [gr.skip()] * len(outputs)

    queue = dict(concurrency_id=COMPUTE["concurrency_id"], concurrency_limit=COMPUTE["concurrency_limit"])
    if when is None:
        gr.on(None, arrive, None, outputs, api_visibility="private", show_progress="minimal", **queue)
        return
    shown = gr.State(False)

    def arrive_once(already: bool):
        return [gr.skip()] * len(outputs) + [True] if already else list(arrive()) + [True]

    gr.on(when, arrive_once, shown, outputs + [shown], api_visibility="private", show_progress="minimal", **queue)
