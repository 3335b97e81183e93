"""The layering the project relies on: engine/ never imports gradio, and nothing loads at import."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # imports every engine module in a fresh interpreter: about 12 s on 2 busy cores
def test_engine_modules_import_neither_gradio_nor_torchvision():
    modules = sorted(".".join(p.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for p in (REPO_ROOT / "engine").rglob("*.py"))
    assert "engine.loader" in modules and "engine.tokenizer" in modules
    assert {"engine.txt2img.pipeline", "engine.fashion.sampling", "engine.mini.models"} <= set(modules)
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


@pytest.mark.slow  # builds the whole page in a fresh interpreter: about 20 s on 2 busy cores
def test_the_page_is_laid_out_before_torch_loads():
    """Cold start (issue 11): importing app.py builds every tab without torch, diffusers, transformers or scipy,
    so the page is served first; engine.imports.import_engine then brings them, and every lazy name resolves."""
    code = (
        "import sys\n"
        "import app\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'scipy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "from engine import imports\n"
        "imports.import_engine()\n"
        "assert 'diffusers' in sys.modules\n"
        "from tabs import class_conditional, unet, vae\n"
        "assert callable(class_conditional.sampling.sample_to_end) and callable(unet.attention.attention_maps)\n"
        "assert vae.vae_engine.SIZES == vae.SIZES\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("EXPLORER_PRELOAD", "EXPLORER_DEVICE")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:] or done.stdout


def test_tabs_do_no_model_maths():
    """tabs/ lays out and wires; it reaches models only through the engine."""
    for path in (REPO_ROOT / "tabs").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for banned in ("from_pretrained(", "import diffusers", "from diffusers", "import transformers"):
            assert banned not in text, f"{path.name} uses {banned!r}: move that into engine/"


def test_the_loaders_named_in_loaders_import():
    """Every ``module:function`` that ``engine.loader.LOADERS`` names exists (the loader imports them lazily)."""
    import importlib

    from engine.loader import LOADERS

    for kind, target in LOADERS.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), (kind, target)


def test_engine_modules_and_functions_stay_small():
    """No engine module over 500 lines; no function in engine/ or tabs/ over 60 lines, nor a tab's build() over 80."""
    for path in sorted((REPO_ROOT / "engine").rglob("*.py")) + sorted((REPO_ROOT / "tabs").rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        if path.parts[-2] == "engine" or "engine" in path.relative_to(REPO_ROOT).parts[:1]:
            assert len(source.splitlines()) <= 500, f"{path} has {len(source.splitlines())} lines"
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                # a tab's build() may reach 80 when it reads as a plain list of components
                limit = 80 if node.name == "build" and path.parent.name == "tabs" else 60
                assert length <= limit, f"{path.relative_to(REPO_ROOT)}:{node.name} is {length} lines (over {limit})"


def test_scripts_import_only_the_engine():
    """scripts/ reaches the project through engine/ alone, never tabs/, app or tests/ (a bench loads the shipped
    models, not the tests' tiny ones). The one stated exception: bench_serving.py times the tab handlers
    themselves, so it imports tabs/."""
    exceptions = {"bench_serving.py": {"tabs"}}
    for path in sorted((REPO_ROOT / "scripts").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                tops = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                tops = {node.module.split(".")[0]}
            else:
                continue
            banned = tops & {"app", "tabs", "tests"} - exceptions.get(path.name, set())
            assert not banned, f"scripts/{path.name}:{node.lineno} imports {banned.pop()}: go through engine/"


def _public_names(tree) -> set[str]:
    """The public names a module defines at its top level: functions, classes and assigned names (imports are
    someone else's)."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name))
    return {name for name in names if not name.startswith("_")}


def test_no_public_name_is_defined_in_two_engine_modules():
    """One name, one meaning (issue 24): each public name has one home in engine/; others import it."""
    allowed: set[str] = set()  # none needed; a name listed here must say why in a comment
    homes: dict[str, list[str]] = {}
    for path in sorted((REPO_ROOT / "engine").rglob("*.py")):
        for name in _public_names(ast.parse(path.read_text(encoding="utf-8"))):
            homes.setdefault(name, []).append(str(path.relative_to(REPO_ROOT)))
    twice = {name: places for name, places in homes.items() if len(places) > 1 and name not in allowed}
    assert not twice, f"defined in more than one engine module: {twice}"
