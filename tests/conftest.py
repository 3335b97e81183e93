"""Shared fixtures for the three test layers.

* ``tiny_presets``: tiny seeded SD, SDXL and VAE models saved with
  ``save_pretrained`` in a temp dir, registered through ``EXPLORER_MODELS``
  (in this process, and in the app the API and browser tests launch).
* ``app_url``: ``python app.py`` launched as a subprocess on 127.0.0.1 at a free
  port, as a user would start it; its log goes to ``artifacts/app.log``.
* ``client``: a ``gradio_client.Client`` on that app.
* ``page``: a Playwright page in Debian's chromium, opened at the app.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "artifacts"
CHROMIUM = os.environ.get("EXPLORER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]

sys.path.insert(0, str(REPO_ROOT))


SLOW_FOLDERS = ("api", "browser")  # every test there starts the app


def pytest_collection_modifyitems(items):
    """Tests in tests/api and tests/browser are ``slow`` as a whole; elsewhere a test says so itself."""
    for item in items:
        if item.path.parent.name in SLOW_FOLDERS and item.path.parent.parent == REPO_ROOT / "tests":
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def tiny_presets(tmp_path_factory) -> Path:
    from tests.tiny_models import write_test_presets

    path = write_test_presets(tmp_path_factory.mktemp("tiny-models"))
    old = os.environ.get("EXPLORER_MODELS")
    os.environ["EXPLORER_MODELS"] = str(path)
    yield path
    if old is None:
        os.environ.pop("EXPLORER_MODELS", None)
    else:
        os.environ["EXPLORER_MODELS"] = old


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with code {proc.returncode}; see artifacts/app.log")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - start
        except OSError:
            time.sleep(0.25)
    raise RuntimeError(f"app.py did not serve {url} within {timeout:.0f} s; see artifacts/app.log")


@contextlib.contextmanager
def running_app(env: dict[str, str], log_path: Path):
    """``python app.py`` on a free loopback port with ``env`` added; yields its URL, stops it on exit."""
    port = _free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1", HF_HUB_DISABLE_TELEMETRY="1", **env)
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        seconds = _wait_for(url, proc, timeout=180)
        print(f"\napp served {url} after {seconds:.1f} s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def app_url(tiny_presets, artifacts) -> str:
    with running_app({"EXPLORER_MODELS": str(tiny_presets)}, artifacts / "app.log") as url:
        yield url


@pytest.fixture(scope="session")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


@pytest.fixture(scope="session")
def browser():
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        message = f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(app_url)
    pg.wait_for_selector("button[role=tab]")
    yield pg
    context.close()


def open_tab(page, name: str) -> None:
    """Click the tab button whose label is ``name``."""
    page.get_by_role("tab", name=name).click()
