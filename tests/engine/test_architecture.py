"""The layering the project relies on: engine/ never imports gradio, and nothing loads at import."""

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_engine_modules_import_neither_gradio_nor_torchvision():
    modules = sorted(f"engine.{p.stem}" for p in (REPO_ROOT / "engine").glob("*.py") if p.stem != "__init__")
    assert "engine.loader" in modules and "engine.tokenizer" in modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = [m for m in ('gradio', 'torchvision', 'open_clip', 'timm') if m in sys.modules]\n"
        "from engine import loader\n"
        "assert not loader.loaded_models(), loader.loaded_models()\n"
        "sys.exit(', '.join(bad) or 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:] or done.stdout


def test_tabs_do_no_model_maths():
    """tabs/ lays out and wires; it reaches models only through the engine."""
    for path in (REPO_ROOT / "tabs").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        for banned in ("from_pretrained(", "import diffusers", "from diffusers", "import transformers"):
            assert banned not in text, f"{path.name} uses {banned!r}: move that into engine/"
