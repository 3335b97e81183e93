"""Model presets: the only models a user can pick.

Presets come from ``assets/presets.json``, plus the entries of the JSON file
named by the environment variable ``EXPLORER_MODELS`` (appended after the
shipped ones). Each file is a JSON list of objects::

    {"name": "SD 1.5", "kind": "sd", "repo": "stable-diffusion-v1-5/stable-diffusion-v1-5",
     "variant": "fp16", "dtype": "float16"}
    {"name": "CLIP ViT-L/14 (offline)", "kind": "tokenizer", "path": "assets/tokenizers/clip-vit-l-14"}

Required keys: ``name``, ``kind`` and exactly one of ``repo`` (a hub repo id)
or ``path`` (a folder, relative to the repository root or absolute). Optional:
``subfolder``, ``variant``, ``dtype``; any other key (``min_size``,
``max_size``, ``vae``, ``description``...) is kept in ``options`` for the
engine part that uses that kind. An ``sdxl-refiner`` preset (SDXL's second
stage, ``engine.txt2img.refiner``) names the ``sdxl`` preset it pairs with in
``base``: it shares that model's ``text_encoder_2`` and VAE.

A pipeline preset (``sd``, ``sdxl``) also counts as a ``vae`` preset (its
``vae`` subfolder) and as a ``tokenizer`` preset (``tokenizer``, and for SDXL
``tokenizer_2``), so every tab that can use a part of it lists it, unless it
says ``"parts": false`` because those parts are presets of their own already
(the mini models ship the project's CLIP tokenizers and one VAE, listed once).

Users choose presets by name only: no user input ever becomes a repo id or a path.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from engine.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_PRESETS = REPO_ROOT / "assets" / "presets.json"
# The project's CLIP tokenizers, built by scripts/build_clip_tokenizer.py: SD's and SDXL's first
# tokenizer (ViT-L/14) and SDXL's second (OpenCLIP bigG/14), used by the mini and full-size models.
TOKENIZER_DIRS = {
    "tokenizer": REPO_ROOT / "assets" / "tokenizers" / "clip-vit-l-14",
    "tokenizer_2": REPO_ROOT / "assets" / "tokenizers" / "clip-vit-bigg-14",
}
ENV_VAR = "EXPLORER_MODELS"

KINDS = ("sd", "sdxl", "sdxl-refiner", "vae", "tokenizer", "class-unet", "classifier", "noisy-classifier")
PIPELINE_KINDS = ("sd", "sdxl")
_KNOWN_KEYS = {"name", "kind", "repo", "path", "subfolder", "variant", "dtype"}


@dataclass(frozen=True)
class Preset:
    """One loadable model, as the user sees it (by ``name``) and as the loader sees it."""

    name: str
    kind: str
    repo: str | None = None
    path: str | None = None
    subfolder: str | None = None
    variant: str | None = None
    dtype: str | None = None
    options: dict = field(default_factory=dict, compare=False, hash=False)
    parent: str | None = None  # name of the pipeline preset this part comes from

    @property
    def source(self) -> str:
        """The repo id or the absolute folder that ``from_pretrained`` gets."""
        return self.repo if self.repo is not None else str(self.path)

    @property
    def is_hub(self) -> bool:
        return self.repo is not None

    def describe(self) -> str:
        """Short human description: "hub repo X" or "local folder Y"."""
        where = f"hub repo '{self.repo}'" if self.is_hub else f"local folder '{self.path}'"
        if self.subfolder:
            where += f" (subfolder '{self.subfolder}')"
        return where


def _resolve_path(path: str, base: Path) -> str:
    p = Path(os.path.expanduser(path))
    if not p.is_absolute():
        p = base / p
    return str(p.resolve())


def parse_presets(entries: object, base: Path, origin: str) -> list[Preset]:
    """Validate a decoded JSON list and turn it into presets.

    ``base`` is the folder that relative paths are resolved against (the repo
    root for the shipped file and for ``EXPLORER_MODELS``). Raises ValueError
    naming ``origin`` and the bad entry.
    """
    if not isinstance(entries, list):
        raise ValueError(f"{origin}: expected a JSON list of preset objects, got {type(entries).__name__}.")
    presets = []
    for i, entry in enumerate(entries):
        where = f"{origin}, entry {i}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object, got {type(entry).__name__}.")
        name, kind = entry.get("name"), entry.get("kind")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}: 'name' must be a non-empty string.")
        if kind not in KINDS:
            raise ValueError(f"{where} ({name}): 'kind' must be one of {', '.join(KINDS)}, got {kind!r}.")
        repo, path = entry.get("repo"), entry.get("path")
        if (repo is None) == (path is None):
            raise ValueError(f"{where} ({name}): give exactly one of 'repo' or 'path'.")
        for key in ("repo", "path", "subfolder", "variant", "dtype"):
            if entry.get(key) is not None and not isinstance(entry[key], str):
                raise ValueError(f"{where} ({name}): '{key}' must be a string.")
        if kind == "sdxl-refiner" and not isinstance(entry.get("base"), str):
            raise ValueError(f"{where} ({name}): a refiner needs 'base', the name of the SDXL preset it refines.")
        presets.append(
            Preset(
                name=name.strip(),
                kind=kind,
                repo=repo,
                path=_resolve_path(path, base) if path is not None else None,
                subfolder=entry.get("subfolder"),
                variant=entry.get("variant"),
                dtype=entry.get("dtype"),
                options={k: v for k, v in entry.items() if k not in _KNOWN_KEYS},
            )
        )
    return presets


def _read(path: Path, origin: str) -> list[Preset]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{origin}: file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{origin}: not valid JSON ({e.msg} at line {e.lineno}).") from None
    return parse_presets(entries, REPO_ROOT, origin)


def all_presets() -> list[Preset]:
    """Shipped presets, then the operator's (``EXPLORER_MODELS``), in file order.

    Read afresh on each call (the files are tiny), so tests and operators can
    change ``EXPLORER_MODELS`` without restarting. A later preset with the same
    name as an earlier one replaces it in place.
    """
    presets = _read(SHIPPED_PRESETS, "assets/presets.json")
    extra = os.environ.get(ENV_VAR)
    if extra:
        presets += _read(Path(extra), f"{ENV_VAR} ({extra})")
    by_name: dict[str, Preset] = {}
    for p in presets:
        by_name[p.name] = p
    return list(by_name.values())


def _parts_of(p: Preset, kind: str) -> list[Preset]:
    """The ``vae`` or ``tokenizer`` presets that a pipeline preset contains."""
    if p.options.get("parts", True) is False:
        return []
    if kind == "vae":
        subs = ["vae"]
    elif kind == "tokenizer":
        subs = ["tokenizer", "tokenizer_2"] if p.kind == "sdxl" else ["tokenizer"]
    else:
        return []
    parts = []
    for sub in subs:
        label = "VAE" if sub == "vae" else sub
        options = {"from_pipeline": p.kind}
        if sub == "vae" and "vae" in p.options:
            # The preset swaps in another VAE (e.g. SDXL's fp16-fix): that one is what it uses.
            vae = p.options["vae"]
            parts.append(Preset(name=f"{p.name} · VAE", kind="vae", repo=vae, dtype=p.dtype,
                                options=options, parent=p.name))
            continue
        parts.append(replace(p, name=f"{p.name} · {label}", kind=kind, subfolder=sub,
                             variant=p.variant if sub == "vae" else None,
                             options=options, parent=p.name))
    return parts


def presets_for(kind: str) -> list[Preset]:
    """Every preset a tab of this kind can use, including parts of pipeline presets."""
    if kind not in KINDS:
        raise ValueError(f"Unknown preset kind {kind!r}; use one of {', '.join(KINDS)}.")
    out = []
    for p in all_presets():
        if p.kind == kind:
            out.append(p)
        elif p.kind in PIPELINE_KINDS:
            out.extend(_parts_of(p, kind))
    return out


def preset_names(kind: str) -> list[str]:
    return [p.name for p in presets_for(kind)]


def get_preset(name: str, kind: str) -> Preset:
    """The preset called ``name`` among those of ``kind``; ``UserError`` listing the choices otherwise."""
    for p in presets_for(kind):
        if p.name == name:
            return p
    choices = ", ".join(repr(n) for n in preset_names(kind)) or "none"
    raise UserError(f"Unknown {kind} model {name!r}. Choose one of: {choices}.")


def default_size(preset, allowed=None) -> int:
    """The side in pixels a preset suggests: its ``default_size`` option, else 1024 for SDXL and 512 for
    the rest; with ``allowed`` (the sizes a tab offers), a value outside them falls back to 512."""
    size = int(preset.options.get("default_size", 1024 if preset.kind == "sdxl" else 512))
    return 512 if allowed is not None and size not in allowed else size
