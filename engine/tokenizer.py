"""The tokenizer inspector: what a CLIP text encoder actually receives for a prompt.

CLIP's tokenizer (Radford et al. 2021, §2.5; the book's chapter on Stable
Diffusion, "Text conditioning") lower-cases the text, splits it into words, and
breaks each word into byte-pair-encoding pieces from a 49,408-entry
vocabulary. Every sequence starts with ``<|startoftext|>`` (49406) and ends
with ``<|endoftext|>`` (49407), and the text encoder's window is 77 tokens: SD
pads shorter prompts to 77 and silently cuts longer ones. SD 1.x and SDXL's
first encoder pad with ``<|endoftext|>``; SDXL's second (OpenCLIP ViT-bigG/14)
pads with ``!`` (id 0).
"""

from __future__ import annotations

import re
import unicodedata

from engine import prompt_weights
from engine.errors import UserError
from engine.imports import lazy
from engine.presets import get_preset, preset_names

loader = lazy("engine.loader")  # torch and transformers load on first use: the tab lists names before that

WINDOW = 77  # CLIP's context length: <|startoftext|> + 75 tokens + <|endoftext|>
MAX_PROMPT_CHARS = 50_000

# What each text encoder makes of one prompt (batch 1): the tensors the UNet's
# cross-attention reads. SDXL concatenates the penultimate hidden states of its
# two encoders (768 + 1280 = 2048 channels) and also uses the pooled output of
# the second one (Podell et al. 2023, §2.1).
ENCODER_SHAPES = {
    "SD 1.x · CLIP ViT-L/14": {"prompt_embeds": [1, WINDOW, 768]},
    "SD 2.x · OpenCLIP ViT-H/14": {"prompt_embeds": [1, WINDOW, 1024]},
    "SDXL · CLIP ViT-L/14 + OpenCLIP ViT-bigG/14": {
        "prompt_embeds": [1, WINDOW, 768 + 1280],
        "pooled_prompt_embeds": [1, 1280],
    },
}

_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_prompt(prompt: str | None) -> tuple[str, list[str]]:
    """Make any user string safe to tokenize, and say what was changed.

    * ``None`` -> "" (an empty prompt is valid: the unconditional input).
    * Lone UTF-16 surrogates (not valid Unicode text) -> U+FFFD.
    * Control characters -> removed; tabs and newlines -> spaces. OpenAI's CLIP
      cleans text with ftfy, which also drops control characters.
    """
    if prompt is None:
        return "", []
    if not isinstance(prompt, str):
        raise UserError(f"The prompt must be text, got {type(prompt).__name__}.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise UserError(f"The prompt has {len(prompt):,} characters; the inspector takes up to "
                         f"{MAX_PROMPT_CHARS:,}. Only the first ~75 tokens reach the model anyway.")
    notes = []
    text, n = _SURROGATE.subn("\ufffd", prompt)
    if n:
        notes.append(f"Replaced {n} invalid character(s) (lone surrogates) with �.")
    text = text.replace("\t", " ").replace("\r", " ").replace("\n", " ")
    kept = "".join(ch for ch in text if unicodedata.category(ch) != "Cc")
    if len(kept) != len(text):
        notes.append(f"Removed {len(text) - len(kept)} control character(s).")
    return kept, notes


def tokenizer_names() -> list[str]:
    return preset_names("tokenizer")


def token_view(prompt: str | None, tokenizer: str) -> dict:
    """Tokenize ``prompt`` with the tokenizer preset named ``tokenizer``.

    Returns a dict (all plain JSON values):

    * ``ids``: what the encoder sees before padding: ``<|startoftext|>``, up to
      75 tokens, ``<|endoftext|>``. "A photograph of a puppy" gives
      [49406, 320, 8853, 539, 320, 6829, 49407].
    * ``tokens``: the vocabulary entry of each id (``</w>`` marks a word end;
      bytes outside ASCII appear in GPT-2's byte-to-unicode alphabet).
    * ``pieces``: each id decoded on its own, as readable text (a character
      split over several byte tokens shows as � in each piece).
    * ``count``: tokens the prompt needs, special ones included, before cutting.
    * ``window``: 77. ``truncated_ids`` / ``truncated_tokens``: the tokens past
      the window, which the model never sees. ``truncated_text``: them, decoded.
    * ``padded_ids``: the 77 ids the encoder gets; ``pad_token``, ``pad_token_id``.
    * ``decoded``: the ids the model sees, decoded back to text (lower case,
      normalised spacing: the round trip is lossy by design).
    * ``shapes``: the tensor shapes each text encoder produces for this input.
    * ``notes``: what was cleaned, and a warning if tokens were cut.
    """
    text, notes = clean_prompt(prompt)
    tok = loader.load(get_preset(tokenizer, "tokenizer"))
    full = tok(text, add_special_tokens=True, truncation=False).input_ids
    bos, eos = full[0], full[-1]
    content = full[1:-1]
    kept, cut = content[: WINDOW - 2], content[WINDOW - 2 :]
    ids = [bos, *kept, eos]
    padded = ids + [tok.pad_token_id] * (WINDOW - len(ids))
    if cut:
        notes.append(f"The prompt needs {len(full)} tokens but the window is {WINDOW}: the last {len(cut)} "
                     f"token(s) are cut, and the model never sees them.")
    return {
        "tokenizer": tokenizer,
        "ids": ids,
        "tokens": tok.convert_ids_to_tokens(ids),
        "pieces": [tok.decode([i]) for i in ids],
        "count": len(full),
        "window": WINDOW,
        "truncated_ids": cut,
        "truncated_tokens": tok.convert_ids_to_tokens(cut),
        "truncated_text": tok.decode(cut) if cut else "",
        "padded_ids": padded,
        "pad_token": tok.pad_token,
        "pad_token_id": tok.pad_token_id,
        "special_tokens": {"bos": [tok.bos_token, tok.bos_token_id], "eos": [tok.eos_token, tok.eos_token_id],
                           "pad": [tok.pad_token, tok.pad_token_id]},
        "decoded": tok.decode(kept),
        "shapes": ENCODER_SHAPES,
        "notes": notes,
    }


def prompt_tokens(tokenizer, prompt: str) -> list[dict]:
    """The prompt's real token positions, as the text encoder sees them: start, words..., end (no padding).

    Each: {"position": 0-76, "id", "token": as ``convert_ids_to_tokens`` shows
    it ("red</w>": "</w>" ends a word), "text": the decoded piece ("red"),
    "special": True for the start and end tokens}. Cut at 77 like the encoder.
    SDXL's second tokenizer has the same BPE, so the same positions. Prompt weights, "(red:1.5)", are not
    text the encoder reads (``engine.prompt_weights``): the positions are the plain prompt's.
    """
    if not isinstance(prompt, str):
        raise UserError(f"prompt must be text, got {type(prompt).__name__}.")
    ids = tokenizer(prompt_weights.parse(prompt).text, truncation=True, max_length=tokenizer.model_max_length).input_ids
    special = set(tokenizer.all_special_ids)
    out = []
    for position, (token_id, token) in enumerate(zip(ids, tokenizer.convert_ids_to_tokens(ids))):
        text = tokenizer.decode([token_id]).strip()
        out.append({"position": position, "id": int(token_id), "token": token, "text": text,
                    "special": token_id in special})
    return out


def find_token_positions(tokenizer, prompt: str, phrase: str) -> list[int]:
    """The positions of ``phrase``'s tokens in ``prompt`` (its last occurrence): "ankle boot" in
    "a red ankle boot" -> [3, 4]. CLIP's BPE splits each word on its own, so the phrase's ids appear as a
    run. ValueError when the phrase is not there."""
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    want = tokenizer(phrase, add_special_tokens=False).input_ids
    for start in range(len(ids) - len(want), -1, -1):
        if want and ids[start:start + len(want)] == want:
            return list(range(start, start + len(want)))
    raise UserError(f"{phrase!r} is not among the tokens of {prompt!r}.")
