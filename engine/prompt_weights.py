"""Prompt weights: A1111's ``(word:1.5)`` in a prompt, turned into text embeddings by compel.

The book: prompts can be combined with weights, to "strengthen or weaken parts
of a prompt". We read AUTOMATIC1111's syntax, ``(text:weight)``, and hand the
fragments and their weights to compel (``compel.EmbeddingsProvider``, MIT), whose
parser reads another syntax (``(text)1.5``), so its parser is skipped:

* a weight above 1 scales the fragment's output vectors away from the empty
  prompt's: e + w · (z − e) at the fragment's token positions;
* a weight below 1 blends the embeddings towards those of the prompt *without*
  the fragment (blend weight tan((1 − w) · π/2), so w = 0 removes it). We use
  compel's ``DownweightMode.MASK``: the "without" prompt is encoded with the
  fragment's tokens masked out of the attention, so no later token can read
  it. CLIP's text encoder is causal: every token after "red" has read it
  ("sneaker", the end token, the padding). Scaling only the word's own
  vectors (A1111's way) leaves all of that in place; masking removes the word
  from every later token, and keeps every other token at its position
  (compel's other mode, REMOVE, shifts them).

A prompt whose weights are all 1 is encoded by the plain path
(``engine.text_encoding``), so "a (red:1.0) sneaker" gives exactly the
embeddings, and the image, of "a red sneaker". SDXL's pooled embedding is the
plain prompt's (compel does not weight pooled outputs).

Not read: nested brackets, ``(word)`` for ×1.1 and ``[word]`` for ÷1.1; they
stay as text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.errors import UserError, number_in_range

#: The weights a fragment may take.
MIN_WEIGHT, MAX_WEIGHT = 0.0, 3.0
# (text:weight), text without brackets or colons, weight a plain decimal number
_WEIGHTED = re.compile(r"\(([^():]+):\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\)")


@dataclass(frozen=True)
class WeightedPrompt:
    """A prompt split into fragments ``(text, weight)``; ``text`` is the prompt without the syntax."""

    fragments: tuple[tuple[str, float], ...]

    @property
    def text(self) -> str:
        return "".join(fragment for fragment, _ in self.fragments)

    @property
    def weighted(self) -> bool:
        """Whether any fragment has a weight other than 1."""
        return any(weight != 1.0 for _, weight in self.fragments)


def parse(prompt: str, name: str = "prompt") -> WeightedPrompt:
    """Split ``prompt`` at its ``(text:weight)`` groups; ``UserError`` naming ``name``, the fragment, the
    range and the value when a weight is outside [0, 3]."""
    if not isinstance(prompt, str):
        raise UserError(f"{name} must be text, got {type(prompt).__name__}.")
    fragments, position = [], 0
    for match in _WEIGHTED.finditer(prompt):
        if match.start() > position:
            fragments.append((prompt[position:match.start()], 1.0))
        text = match.group(1)
        weight = number_in_range(match.group(2), f"The weight of '{text.strip()}' in the {name}", MIN_WEIGHT,
                                 MAX_WEIGHT)
        fragments.append((text, weight))
        position = match.end()
    if position < len(prompt) or not fragments:
        fragments.append((prompt[position:], 1.0))
    return WeightedPrompt(tuple(fragments))


def with_weight(prompt: str, word: str, weight: float) -> str:
    """``prompt`` with the first ``word`` (a whole word, any case) written as ``(word:weight)``; ``UserError``
    when the prompt does not contain it."""
    match = re.search(rf"(?<![\w(]){re.escape(word.strip())}(?![\w:])", prompt, flags=re.IGNORECASE)
    if not word.strip() or match is None:
        raise UserError(f"The word to weigh, {word!r}, is not in the prompt {prompt!r}.")
    return f"{prompt[:match.start()]}({match.group(0)}:{weight:g}){prompt[match.end():]}"


#: At most this many pictures in one sweep: the weights here, and the guidance scales of Text to image
#: (engine.txt2img.request, which reads it from here).
MAX_SWEEP = 8


def sweep_prompts(prompt: str, word: str, weights) -> list[str]:
    """``prompt`` once per weight in ``weights`` (comma-separated text or numbers) with ``word`` written as
    ``(word:w)``: "a red sneaker", "red", "0, 1" -> ["a (red:0) sneaker", "a (red:1) sneaker"]. ``UserError``
    naming the bad value otherwise."""
    items = weights.split(",") if isinstance(weights, str) else list(weights or [])
    items = [item.strip() if isinstance(item, str) else item for item in items if str(item).strip()]
    if not 1 <= len(items) <= MAX_SWEEP:
        raise UserError(f"weights must be 1 to {MAX_SWEEP} comma-separated numbers, got {weights!r}.")
    values = [number_in_range(item, "Each weight", MIN_WEIGHT, MAX_WEIGHT) for item in items]
    if not isinstance(prompt, str) or not isinstance(word, str):
        raise UserError("prompt and word must be text.")
    return [with_weight(prompt, word, value) for value in values]


def _providers(pipe, kind: str) -> list:
    """One compel ``EmbeddingsProvider`` per text encoder, set up as the pipeline encodes: SD's last hidden
    state; SDXL's penultimate hidden states, not normalised (as ``StableDiffusionXLPipeline``)."""
    from compel import DownweightMode, EmbeddingsProvider, ReturnedEmbeddingsType

    penultimate = ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
    if kind == "sdxl-refiner":  # the refiner reads the second encoder only
        pairs = [(pipe.tokenizer_2, pipe.text_encoder_2, penultimate)]
    elif kind != "sdxl":
        pairs = [(pipe.tokenizer, pipe.text_encoder, ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED)]
    else:
        pairs = [(pipe.tokenizer, pipe.text_encoder, penultimate), (pipe.tokenizer_2, pipe.text_encoder_2, penultimate)]
    return [EmbeddingsProvider(tokenizer, encoder, truncate=True, downweight_mode=DownweightMode.MASK,
                               returned_embeddings_type=returned, device=encoder.device)
            for tokenizer, encoder, returned in pairs]


def encode_weighted(pipe, kind: str, prompt: WeightedPrompt):
    """The weighted prompt's hidden states ``[1, 77, D]`` (SDXL: both encoders' concatenated, D = D1 + D2),
    through compel. Fragments of only spaces are left out (CLIP's tokenizer splits words at spaces anyway)."""
    import torch

    fragments = [(text, weight) for text, weight in prompt.fragments if text.strip()]
    texts, weights = [[t for t, _ in fragments]], [[w for _, w in fragments]]
    with torch.no_grad():
        hidden = [provider.get_embeddings_for_weighted_prompt_fragments(texts, weights, device=provider.device)
                  for provider in _providers(pipe, kind)]
    return torch.cat(hidden, dim=-1)
